"""The project's exception types.

Every error a user can cause is an :class:`AlignlabError` whose message names the file, line,
field or key at fault, what was wrong, and what to do. The CLI prints such errors as one line
and exits with status 2; any other exception is a bug in alignlab.
"""

from __future__ import annotations


class AlignlabError(Exception):
    """Base class: an error the user can act on (bad input, bad config, missing model...)."""


class ConfigError(AlignlabError):
    """An unknown or ill-typed configuration key, or an invalid value."""


class DataError(AlignlabError):
    """A record that cannot be used. ``where`` is ``"file:line"`` (or ``"file:row N"``)."""

    def __init__(self, where: str, message: str, field: str | None = None):
        self.where = where
        self.field = field
        self.reason = message
        prefix = f"{where}: " if where else ""
        field_part = f"field '{field}': " if field else ""
        super().__init__(f"{prefix}{field_part}{message}")


class ModelLoadError(AlignlabError):
    """A model or tokenizer that cannot be found or loaded."""


class UnsafeFileError(AlignlabError):
    """A file alignlab refuses to load because loading it could execute code."""


class CheckpointError(AlignlabError):
    """A checkpoint that cannot be written, found or resumed."""


class NumericalError(AlignlabError):
    """Training produced non-finite values too many times in a row, or a reduction had no tokens."""


def did_you_mean(name: object, choices, *, cutoff: float = 0.5) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``name``, or ``""``.

    The one place that builds suggestions for unknown names (config keys, loss names, stages,
    reward sources, profiles), so every such error reads the same way.
    """
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f"; did you mean '{close[0]}'?" if close else ""


class StageError(AlignlabError):
    """A stage of ``alignlab run`` failed: names the stage, the cause and the command that continues."""
