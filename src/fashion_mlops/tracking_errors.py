"""Tracking failures the CLI reports as one line (no MLflow import, so the training process can raise them)."""

from __future__ import annotations


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer."""


class TrackingFailed(RuntimeError):
    """The tracker process could not write to the store, or died."""
