"""The errors a user can cause or fix: the CLI prints these as one line instead of a traceback."""

from __future__ import annotations

from fashion_mlops.datasets import DataError
from fashion_mlops.download import DownloadError
from fashion_mlops.idx import IdxFormatError
from fashion_mlops.manifest import ManifestError
from fashion_mlops.sweep import NoFinishedRuns
from fashion_mlops.tracking_errors import TrackingFailed, TrackingUnavailable

USER_ERRORS: tuple[type[Exception], ...] = (
    DataError,
    DownloadError,
    IdxFormatError,
    ManifestError,
    NoFinishedRuns,
    TrackingFailed,
    TrackingUnavailable,
    FileNotFoundError,
)
