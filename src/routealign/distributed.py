"""Work that one process does for all of them under ``accelerate launch``, without leaving the others
waiting: the main process runs it, and its result, or its failure, reaches every process.

A failure on the main process alone would otherwise leave the other processes blocked at their next
collective (a barrier, a broadcast) until the launcher kills them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _error_types() -> dict[str, type[BaseException]]:
    """The user-error types the command line reports in one line, re-raised as themselves elsewhere."""
    from .errors import USER_ERRORS

    return {cls.__name__: cls for cls in USER_ERRORS}


def on_main(state, fn: Callable[[], T]) -> T:
    """``fn()`` on the main process; its value on every process (it must be picklable).

    ``state`` is accelerate's ``Accelerator`` or ``PartialState``. If ``fn`` raises, the main process
    re-raises it and every other process raises the same type, if it is a user error (``errors.USER_ERRORS``),
    else a RuntimeError, with the same message.
    """
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as e:
            if state.num_processes == 1:
                raise
            error = e
    if state.num_processes == 1:
        return result
    from accelerate.utils import broadcast_object_list

    box = [(result, None if error is None else (type(error).__name__, str(error)))]
    broadcast_object_list(box, from_process=0)
    result, failure = box[0]
    if error is not None:
        raise error
    if failure is not None:
        name, message = failure
        known = _error_types()
        raise known[name](message) if name in known else RuntimeError(f"main process: {name}: {message}")
    return result


def map_shards(state, items: Sequence[T], fn: Callable[[list[T]], list]) -> list:
    """``fn`` over ``items`` shared out between the processes (process k takes items k, k + n, ...),
    every process getting all the results in the order of ``items``. ``state`` is accelerate's
    ``Accelerator`` or ``PartialState`` (or None: one process). A failure on any process is raised on
    every process, as :func:`on_main` does, instead of leaving the others waiting in the gather."""
    if state is None or state.num_processes == 1:
        return list(fn(list(items)))
    from accelerate.utils import gather_object

    rank, world = state.process_index, state.num_processes
    mine = list(range(rank, len(items), world))
    error, out = None, []
    try:
        out = list(fn([items[i] for i in mine]))
        if len(out) != len(mine):
            raise ValueError(f"map_shards: {len(out)} results for {len(mine)} items")
    except Exception as e:
        error = e
    failure = None if error is None else (type(error).__name__, str(error))
    parts = gather_object([(mine, out, failure)])
    if error is not None:
        raise error
    for _, _, failed in parts:
        if failed is not None:
            name, message = failed
            known = _error_types()
            raise (
                known[name](message) if name in known else RuntimeError(f"another process: {name}: {message}")
            )
    results: list = [None] * len(items)
    for indices, values, _ in parts:
        for i, value in zip(indices, values, strict=True):
            results[i] = value
    return results


@contextmanager
def claimed(folder: str | Path, what: str, state, check: Callable[[], T] = lambda: None,
            ours: Callable[[Path], bool] | None = None) -> Iterator[T]:  # fmt: skip
    """Hold ``folder`` for this run on the main process (:func:`routealign.io.folder_lock`, which refuses
    a folder that no earlier ``what`` made and ``ours`` does not recognise) for the block, then run
    ``check()`` there, under the lock; every process gets its value, or its error (a busy folder
    included) raised on every process."""
    from .io import folder_lock

    with ExitStack() as stack:

        def claim() -> T:
            stack.enter_context(folder_lock(folder, what, ours))
            return check()

        yield on_main(state, claim)
