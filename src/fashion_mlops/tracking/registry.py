"""The model registry: register a candidate, read the alias holder, move the alias to a better model, load a
logged model safely."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


@contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every torch.load inside the block is weights_only, even where a library asks otherwise.

    torch.export.load retries a failed restricted load of the archive's sample inputs with a full
    unpickle; forcing weights_only turns that retry into an error instead of code execution.
    """
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous


def load_logged_model(model_uri: str) -> Any:
    """A logged model (pt2 format) loaded by MLflow's loader, with no arbitrary unpickling."""
    with weights_only_loading():
        return mlflow.pytorch.load_model(model_uri)


@dataclass(frozen=True)
class Champion:
    version: ModelVersion
    uri: str


def current_champion(name: str, alias: str) -> Champion | None:
    """The version holding `alias`, or None if the model or the alias does not exist yet."""
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return Champion(version, f"models:/{name}@{alias}")


def register(model_uri: str, name: str, run_id: str, tags: dict[str, str]) -> ModelVersion:
    """A version of `name` for this model; an existing version of the same model is reused, not duplicated."""
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name, description="Best Fashion-MNIST CNN of each sweep")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for existing in client.search_model_versions(f"name = '{name}'"):
        if existing.tags.get("model_uri") == model_uri:
            return existing
    version = mlflow.register_model(model_uri, name, tags=tags | {"model_uri": model_uri, "run_id": run_id})
    return client.get_model_version(name, version.version)


def promote_if_better(
    name: str,
    alias: str,
    candidate: ModelVersion,
    candidate_score: float,
    champion: Champion | None,
    champion_score: float | None,
) -> bool:
    """Move `alias` to `candidate` if there is no champion or the candidate scores strictly higher."""
    if champion is not None and champion.version.version == candidate.version:
        return False
    if champion is not None and champion_score is not None and candidate_score <= champion_score:
        return False
    mlflow.MlflowClient().set_registered_model_alias(name, alias, candidate.version)
    return True
