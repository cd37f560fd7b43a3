"""The model registry: register a candidate, read the alias holder, move the alias to a better model.
(Loading a logged model you did not make: model_files.py.)"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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


PROMOTION_TRIES = 5  # compare-and-move rounds before giving up on hosts that keep moving the alias
SETTLE_S = 1.0  # the pause between moving the alias and reading it back (see promote_if_better)

Score = Callable[[Champion], float | None]  # a holder's score; None when it cannot be measured (any candidate wins)


@dataclass(frozen=True)
class Promotion:
    """How a promotion ended: whether the candidate took the alias and still holds it, who holds it now (as last
    read), the holder the candidate was last compared with, and whether it settled within PROMOTION_TRIES."""

    promoted: bool
    holder: Champion | None
    rival: Champion | None
    settled: bool = True


def promote_if_better(
    name: str,
    alias: str,
    candidate: ModelVersion,
    candidate_score: float,
    score: Score,
    holder: Champion | None,
    tries: int = PROMOTION_TRIES,
    settle_s: float = SETTLE_S,
) -> Promotion:
    """Move `alias` to `candidate` if there is no holder or the candidate scores strictly higher than it.

    `holder` is the alias holder as the caller last read it. MLflow has no compare-and-set for aliases, and other
    hosts sharing the tracking server move this alias too (a file lock guards one host only). So the holder is read
    again right before the move: if it changed while this one was compared, the candidate is compared with the new
    holder. After the move, and a pause of `settle_s`, the alias is read back: a host that moved it in between
    keeps it if its version scores at least as high, and loses it to the candidate otherwise.

    The window that remains: a host that read the holder before this move and writes after this read-back (its
    read and write more than `settle_s` apart) overwrites the alias unseen here, and if its version is worse nobody
    moves the alias back until the next promotion. A host whose read-back comes before a better host's correction
    reports a promotion it has lost. Each host's report says what it read last; the registry is the truth.
    """
    rival = holder
    moved = False
    for _ in range(tries):
        if holder is not None and is_version(holder, candidate.version):
            return Promotion(moved, holder, rival)
        rival = holder
        rival_score = score(holder) if holder is not None else None
        if holder is not None and rival_score is not None and candidate_score <= rival_score:
            return Promotion(False, holder, rival)
        now = current_champion(name, alias)
        if not same_holder(now, holder):
            holder = now  # moved while this one was compared: compare with the new holder
            continue
        try:
            move_alias(name, alias, str(candidate.version))
        except MlflowException:
            now = current_champion(name, alias)
            if same_holder(now, holder):
                raise
            holder = now  # another host's write of the alias won over this one: compare with what it wrote
            continue
        moved = True
        time.sleep(settle_s)
        holder = current_champion(name, alias)
    if holder is not None and is_version(holder, candidate.version):
        return Promotion(moved, holder, rival)  # the last read-back found the candidate holding it
    where = f"v{holder.version.version}" if holder else "no version"
    print(
        f"note: @{alias} of {name} did not settle after {tries} tries (other hosts kept moving it; it is on {where}): "
        f"evaluate again to compare v{candidate.version} with its holder",
        file=sys.stderr,
    )
    return Promotion(False, holder, rival, settled=False)


def move_alias(name: str, alias: str, version: str) -> None:
    """Point `alias` at `version`: the one write of a promotion (MLflow overwrites whatever the alias held)."""
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def is_version(holder: Champion, version: str | int) -> bool:
    return str(holder.version.version) == str(version)


def same_holder(a: Champion | None, b: Champion | None) -> bool:
    """Whether two reads of the alias found the same version (or both found none)."""
    return (a is None and b is None) or (a is not None and b is not None and is_version(a, b.version.version))


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
    return holder is not None and is_version(holder, version)
