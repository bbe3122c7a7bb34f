"""Teacher-forced response loss and routing-by-domain on a tiny mixture."""

from __future__ import annotations

import pytest
import torch

from routealign.config import GateConfig
from routealign.data.collate import encode_sft, sft_collator
from routealign.data.records import SFTExample
from routealign.models.mixture import attach_mixture, read_peft_expert
from routealign.models.tiny import tiny_llama
from routealign.scoring import response_nll, routing_by_domain

EXAMPLES = [
    SFTExample("acid?", "neutralise it", domain="chem"),
    SFTExample("a longer prompt on ports", "close them", domain="cyber"),
    SFTExample("base?", "salt and water", domain="chem"),
]


def test_response_nll_equals_the_models_own_token_mean_loss(tokenizer):
    model = tiny_llama()
    batch = sft_collator(tokenizer)([encode_sft(e, tokenizer, 128) for e in EXAMPLES])
    with torch.no_grad():
        expected = model(**batch).loss.item()  # transformers: mean over all non-ignored label tokens
    assert response_nll(model, tokenizer, EXAMPLES, batch_size=2) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_routing_by_domain_is_a_distribution_per_domain(tokenizer, expert_dirs, kind):
    model = tiny_llama()
    mix = attach_mixture(model, [read_peft_expert(p) for p in expert_dirs], GateConfig(kind=kind, layer=0))
    for gate in mix.gate_modules().values():
        torch.nn.init.normal_(gate.net[-1].weight, std=1.0)
    table = routing_by_domain(model, tokenizer, EXAMPLES, batch_size=2)
    assert list(table) == ["chem", "cyber"]
    for row in table.values():
        assert list(row) == ["expert0", "expert1", "expert2", "base"]
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-5)
    assert table["chem"] != table["cyber"]
