"""User-facing errors: the CLI prints these as one line and exits non-zero, never with a traceback."""


class PretrainkitError(Exception):
    """A mistake in the user's input (path, config, name, data). Message says what is wrong and what is allowed."""


class ConfigError(PretrainkitError):
    """A malformed config or an unknown / badly typed key."""


class DataError(PretrainkitError):
    """Missing, malformed or inconsistent data."""


class CheckpointError(PretrainkitError):
    """A checkpoint that is truncated, corrupted or incompatible."""


class NonFiniteLossError(PretrainkitError):
    """Training produced a NaN or infinite loss; the run stops and keeps its last good checkpoint."""
