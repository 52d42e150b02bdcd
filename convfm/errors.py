"""Errors that are part of convfm's interface: each names what is wrong and where."""


class ConvFMError(Exception):
    """Base class: the CLI prints these as one line (full traceback only with --debug)."""


class ConfigError(ConvFMError, ValueError):
    """A configuration value or key is invalid; the message names the field and the allowed range."""


class DataValidationError(ConvFMError, ValueError):
    """An input file is malformed; the message names file, column and first bad row."""


class ArtifactError(ConvFMError):
    """A saved model/extractor/registry entry is missing, truncated, tampered or of another version."""
