"""The model registry: register a candidate, read the alias holder, move the alias to a better model.
(Loading a logged model you did not make: model_files.py.)"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException


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


DESCRIPTION = "Best Fashion-MNIST CNN of each sweep"


def register(
    model_uri: str, name: str, run_id: str, tags: dict[str, str], description: str = DESCRIPTION
) -> ModelVersion:
    """A version of `name` for this model; an existing version of the same model is reused, not duplicated."""
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name, description=description)
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


def find_version(name: str, tags: dict[str, str]) -> ModelVersion | None:
    """A version of `name` carrying all of `tags`, or None (also when `name` is not registered)."""
    try:
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise
    return next((v for v in versions if all(v.tags.get(k) == value for k, value in tags.items())), None)


def holds_alias(name: str, alias: str, version: str) -> bool:
    """Whether `alias` of `name` is on `version` right now (read afresh: another host may have moved it)."""
    holder = current_champion(name, alias)
    return holder is not None and str(holder.version.version) == str(version)
