"""Errors raised for bad input. Their message is one line that names the culprit."""


class SpectralEditError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class ConfigError(SpectralEditError, ValueError):
    """The configuration names something that does not exist or is out of range."""


class CheckpointMismatchError(SpectralEditError, ValueError):
    """Base and fine-tuned checkpoints do not have the same matrices."""


class DataError(SpectralEditError, ValueError):
    """A dataset file or its columns do not match what the config says."""


class ExportError(SpectralEditError, ValueError):
    """A cell cannot be exported in the form asked for (e.g. an adapter PEFT cannot hold exactly)."""


class DamagedFileError(SpectralEditError, OSError):
    """An output of an earlier job cannot be read (truncated or overwritten on disk)."""
