"""Errors that are part of convfm's interface: each names what is wrong and where."""
from __future__ import annotations


class ConvFMError(Exception):
    """Base class: the CLI prints these as one line (full traceback only with --debug)."""


class ConfigError(ConvFMError, ValueError):
    """A configuration value or key is invalid; the message names the field and the allowed range.

    ``field`` is the offending key when one is known (lets YAML loaders add the key's line number)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DataValidationError(ConvFMError, ValueError):
    """An input file is malformed; the message names file, column and first bad row."""


class ArtifactError(ConvFMError):
    """A saved model/extractor/registry entry is missing, truncated, tampered or of another version."""


class StorageError(ConvFMError):
    """A storage URI cannot be used: unsupported scheme, missing bucket, bad credentials, unreachable store."""
