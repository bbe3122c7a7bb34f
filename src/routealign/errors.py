"""The errors that mean "the input is wrong", not "routealign is broken".

They live here, below every other module, so that the command line (one line, exit 2) and the
distributed helpers (which re-raise the main process's error as itself on every process) can name them
without importing the modules that raise them. Each is also importable from the module where it is
raised (``routealign.config.ConfigError``, ``routealign.data.DataError``, ...).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the dotted key."""


class DataError(ValueError):
    """Bad input data; the message names the file, the row (1-based) and the field when there is one."""


class FolderBusyError(RuntimeError):
    """The output folder cannot be had: another process holds its lock (another run is writing it),
    or the path is a file."""


class APIJudgeError(RuntimeError):
    """The endpoint could not give an answer (bad request, auth, retries exhausted) or no key was set."""


class PullError(RuntimeError):
    """A wheel could not be fetched, or its bytes are not the ones the table names."""


class MixtureError(ValueError):
    """An expert that cannot join the mixture; the message names the adapter folder."""


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite: the stage stops before the optimiser step it would corrupt."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, MixtureError, FolderBusyError, APIJudgeError, NonFiniteLossError, PullError,
    FileNotFoundError,
)  # fmt: skip
"""Reported by the command line in one line with exit status 2: routealign's own types, raised where the
input is read or checked (a config key, a data row, an artifact, a busy folder, a model that does not
load, an API that refuses), plus FileNotFoundError for a path that is not there. Anything else is a bug
and keeps its traceback."""
