"""Exceptions raised by reges. Every message says what went wrong, the value, and the fix."""

from __future__ import annotations


class RegesError(Exception):
    """Base class: a user-facing error. The CLI prints it and exits with status 2."""


class ConfigError(RegesError):
    """A config key is unknown, has the wrong type, or an invalid value."""


class DataError(RegesError):
    """An input data file is missing or malformed (the message names file and line)."""


class CatalogError(RegesError):
    """An item is unknown, duplicated, or has no text."""


class StageNotReadyError(RegesError):
    """A stage's input stage has not finished (its directory has no manifest.json)."""


class StageCompleteError(RegesError):
    """A stage is already complete and overwrite was not asked for."""


class ModelError(RegesError):
    """A model cannot be resolved, loaded or reached."""


class UndeclaredSectionError(RegesError):
    """A stage read a config section it does not declare in `reges.pipeline.PIPELINE`: a bug in reges, not in the
    config (the section would not make the stage stale when it changes)."""
