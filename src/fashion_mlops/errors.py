"""Every error a user can cause or fix. The CLI prints these as one line (and an exit code) instead of a traceback.

Errors for developers stay ordinary exceptions; anything here subclasses `UserError`.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message is one line that names the culprit and what is allowed."""


class ConfigError(UserError):
    """params.yaml (or a value in it) is not valid."""


class ManifestError(UserError, ValueError):
    """The dataset manifest is missing or malformed."""


class IdxFormatError(UserError, ValueError):
    """The bytes are not a valid unsigned-byte IDX file."""


class DataError(UserError):
    """The data on disk does not fit what the run asks of it."""


class DownloadError(UserError):
    """No source could provide a file; the message says what was tried and how to get the data."""


class NoFinishedRuns(UserError):
    """Every grid cell failed, so there is no model to choose."""


class TrackingUnavailable(UserError):
    """The tracking server does not answer."""


class TrackingFailed(UserError):
    """A write to the tracking store failed mid-sweep, or the model export process died."""


class NotReproducible(UserError):
    """Two runs of the same pipeline gave different numbers."""
