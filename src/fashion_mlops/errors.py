"""Every error a user can cause or fix. The CLI prints these as one line (and an exit code) instead of a traceback.

Errors for developers stay ordinary exceptions; anything here subclasses `UserError`. Each class says which exit code
the CLI gives it (the README's table): 2 for what is wrong before anything runs (params, manifest, where tracking
points), 1 for what goes wrong while a stage runs.
"""

from __future__ import annotations

from collections.abc import Iterable


def quote_some(items: Iterable[object], limit: int = 3) -> str:
    """A few of `items`, quoted and escaped on one line (a file or entry name may hold a newline), for messages."""
    shown = [ascii(str(item))[:120] for item in items]
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


class UserError(Exception):
    """A problem the user can fix; its message is one line that names the culprit and what is allowed."""

    exit_code = 1


class ConfigError(UserError):
    """params.yaml (or a value in it) is not valid."""

    exit_code = 2


class ManifestError(UserError, ValueError):
    """The dataset manifest is missing or malformed."""

    exit_code = 2


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

    exit_code = 2


class TrackingFailed(UserError):
    """A write to the tracking store failed mid-sweep, or the model export process died."""


class NotReproducible(UserError):
    """Two runs of the same pipeline gave different numbers."""


class NotInStore(UserError):
    """A report names a run, model or registry version that the tracking store does not hold (any more)."""


class ChampionOnOtherData(UserError):
    """The alias holder was measured on other test data than the candidate, so their scores do not compare."""
