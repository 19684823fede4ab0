"""Exception types for user mistakes.

Every error raised for bad input derives from :class:`PapernotesError`. The CLI
prints such errors as one line and exits with code 2; ``--debug`` shows the
traceback. Messages name the file or argument and say what was expected.
"""


class PapernotesError(Exception):
    """Base class: a problem with the user's input, not a bug in papernotes."""


class ConfigError(PapernotesError, ValueError):
    """An invalid configuration value or argument (unknown preset, backend, field...)."""


class CheckpointError(PapernotesError):
    """A checkpoint or model directory is missing, incomplete or corrupt."""


class ShapeMismatchError(CheckpointError):
    """A tensor in a checkpoint does not have the shape the config implies."""


class DataError(PapernotesError):
    """Input data (corpus, prompt, batch) is missing or does not fit the model."""


class TrainingError(PapernotesError):
    """Training cannot continue (for example, a non-finite loss)."""
