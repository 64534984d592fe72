"""Errors a user can fix, as distinct from bugs in minires.

Every command prints a ``UserError`` as one line, ``minires <command>:
error: <message>``, and exits with status 2, as argparse does for a bad
flag; ``--debug`` (or ``MINIRES_DEBUG=1``) shows the traceback instead.  Any
other exception is a bug and keeps its traceback.

Each class also derives from the built-in error it replaces, so code that
catches ``FileNotFoundError`` or ``ValueError`` keeps working.
"""


class UserError(Exception):
    """Something the user can fix: a flag, a file, a missing extra."""


class CommandError(UserError):
    """A bad flag or combination of flags."""


class ConfigError(UserError, ValueError):
    """A training setting out of range (``TrainConfig.validate``)."""


class UnknownModelError(ConfigError):
    """A model name that is not in ``minires.models.MODEL_NAMES``."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or implied) does not exist."""


class CorruptFileError(UserError, ValueError):
    """A file exists but cannot be used: truncated, altered, not ours, unsafe."""


class DiskFullError(UserError, OSError):
    """A write failed for lack of space (or a file-size limit); the previous
    version of the file is intact."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


class ExportError(UserError, ValueError):
    """A model (or one of its layers) that an export format cannot express yet;
    the message names the layer and where it sits in the model."""


class WeightsMismatchError(UserError, KeyError):
    """A weights file whose keys or shapes do not fit the model; the message
    names every such key (and both shapes).  A ``KeyError`` too, as
    ``Module.load_state_dict`` raises, so existing handlers keep working."""

    def __str__(self):  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


def one_line(message):
    """A message folded onto one line."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())
