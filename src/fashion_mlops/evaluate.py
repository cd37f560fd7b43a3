"""The evaluate stage: test metrics of the sweep's best model, champion comparison, registry promotion."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from filelock import FileLock
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, precision_recall_fscore_support

from fashion_mlops.config import Params
from fashion_mlops.data.manifest import Manifest, content_digest
from fashion_mlops.data.splits import Split, load_split
from fashion_mlops.errors import ChampionOnOtherData, ConfigError, NotInStore
from fashion_mlops.reports import Reports, write_atomic, write_json, write_text
from fashion_mlops.tracking import inventory, registry, tags
from fashion_mlops.tracking.model_files import load_logged_model
from fashion_mlops.tracking.store import connect, lock_path, metric_batch, tracking_uri
from fashion_mlops.train import loss_and_accuracy, predict_logits

REGISTRY_LOCK_TIMEOUT_S = 900


def measure(model_uri: str, test: Split, batch_size: int, tta_flip: bool) -> tuple[dict[str, float], np.ndarray]:
    """(accuracy and loss, predicted labels) of a logged model on the test split."""
    model = load_logged_model(model_uri)
    log_probs = predict_logits(model, test.images, batch_size, tta_flip=tta_flip)
    loss, accuracy = loss_and_accuracy(log_probs, test.labels)
    return {"test_accuracy": accuracy, "test_loss": loss}, log_probs.argmax(1).numpy()


def per_class_report(labels: np.ndarray, predictions: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=list(range(len(classes))), zero_division=0
    )
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    }


def confusion_png(labels: np.ndarray, predictions: np.ndarray, classes: tuple[str, ...], path: Path) -> None:
    matrix = confusion_matrix(labels, predictions, labels=list(range(len(classes))))
    figure = Figure(figsize=(9, 8))
    axes = figure.add_subplot()
    ConfusionMatrixDisplay(matrix, display_labels=list(classes)).plot(ax=axes, xticks_rotation=45, colorbar=False)
    axes.set_title("Confusion matrix (test set)")
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    write_atomic(path, tmp.read_bytes())
    tmp.unlink()


def test_data_digest(manifest: Manifest) -> str:
    """The content digest of the test images and labels: `load_split` verified the bytes it read against exactly
    these checksums, so they are the measured ones."""
    return content_digest(manifest.file(role).sha256 for role in ("test_images", "test_labels"))


def read_best_run(reports: Reports, uri: str) -> dict[str, Any]:
    """train_sweep's choice, checked against the store: its run and its logged model must still be there."""
    try:
        best = json.loads(reports.best_run.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotInStore(f"{reports.best_run} not found: run `dvc repro` (the train_sweep stage writes it)") from None
    except ValueError:
        raise NotInStore(f"{reports.best_run} is not valid JSON: run `dvc repro` to write it again") from None
    if not isinstance(best, dict) or not best.get("model_uri"):
        raise ConfigError(
            f"{reports.best_run} names no logged model (tracking.log_models is false); nothing to evaluate"
        )
    problem = inventory.run_problem(best.get("run_id")) or inventory.model_problem(best["model_uri"])
    if problem:
        raise NotInStore(
            f"{reports.best_run} names run {best.get('run_name')}, but in {uri} {problem}: "
            "run `dvc repro` (its check_store stage sees this and trains the sweep again)"
        )
    return best


def champion_test_digest(champion: registry.Champion, manifest: Manifest) -> str | None:
    """The test-data digest the alias holder was measured on. A version registered before digests were recorded
    has none: then its training run's dataset input (the digest of all four files) tells whether it is this data."""
    held = champion.version.tags.get(tags.TEST_DATA_DIGEST)
    if held or not champion.version.run_id:
        return held
    try:
        run = mlflow.MlflowClient().get_run(champion.version.run_id)
    except MlflowException:
        return None
    trained_on = {entry.dataset.digest for entry in run.inputs.dataset_inputs}
    return test_data_digest(manifest) if manifest.digest() in trained_on else None


def check_same_test_data(champion: registry.Champion | None, manifest: Manifest) -> None:
    """The alias only moves between versions measured on the same test data: scores on other data do not compare."""
    if champion is None:
        return
    held = champion_test_digest(champion, manifest)
    digest, dataset = test_data_digest(manifest), manifest.name
    if held == digest:
        return
    where = (
        f"test data {champion.version.tags.get(tags.TEST_DATA_NAME, '?')} (digest {held})"
        if held
        else "unrecorded test data (registered before test-data digests, from a run on other data)"
    )
    raise ChampionOnOtherData(
        f"{champion.uri} is v{champion.version.version}, measured on {where}; this candidate was measured on "
        f"{dataset} (digest {digest}): nothing was registered and the alias stays. Give this dataset a "
        "registry.model_name of its own"
    )


def measure_champion(
    champion: registry.Champion | None, test: Split, batch_size: int, tta_flip: bool
) -> dict[str, float] | None:
    """The alias holder's test metrics; None (and a note) when its files are gone, so any candidate replaces it:
    a registry version is a pointer to a logged model's files, and a deleted `mlruns/` takes them."""
    if champion is None:
        return None
    problem = inventory.model_problem(champion.uri)
    if problem:
        print(f"note: {champion.uri} (v{champion.version.version}) cannot be measured: {problem}", file=sys.stderr)
        return None
    return measure(champion.uri, test, batch_size, tta_flip)[0]


class HolderScores:
    """The test accuracy of each alias holder a promotion compares with (registry.Score), each measured once: a
    host sharing the tracking server may move the alias to another version while this one compares."""

    def __init__(self, test: Split, batch_size: int, tta_flip: bool, manifest: Manifest) -> None:
        self.test, self.batch_size, self.tta_flip, self.manifest = test, batch_size, tta_flip, manifest
        self._measured: dict[str, dict[str, float] | None] = {}

    def metrics(self, holder: registry.Champion) -> dict[str, float] | None:
        key = str(holder.version.version)
        if key not in self._measured:
            check_same_test_data(holder, self.manifest)
            self._measured[key] = measure_champion(holder, self.test, self.batch_size, self.tta_flip)
        return self._measured[key]

    def __call__(self, holder: registry.Champion | None) -> float | None:
        measured = self.metrics(holder) if holder is not None else None
        return measured["test_accuracy"] if measured else None


def champion_record(holder: registry.Champion | None, alias: str) -> dict[str, Any]:
    """What export needs to know of the alias holder, and nothing that changes while it stays the holder: the file
    stays byte-identical, so DVC reruns export only for a new champion."""
    if holder is None:
        return {"alias": alias, "model_name": None, "version": None, "model_uri": None, "run_id": None}
    version = holder.version
    return {
        "alias": alias,
        "model_name": version.name,
        "version": int(version.version),
        "model_uri": version.tags.get("model_uri"),
        "run_id": version.run_id,
    }


def run_evaluate(params: Params, manifest: Manifest, reports: Reports) -> dict[str, Any]:
    """Measure the sweep's best model on the test set, register it, and move the alias if it is better."""
    test = load_split(manifest, Path(params.data.dir), "test")
    connect(params)
    best = read_best_run(reports, tracking_uri(params))
    digest = test_data_digest(manifest)
    settings = params.evaluate
    name, alias = params.registry.model_name, params.registry.alias
    check_same_test_data(registry.current_champion(name, alias), manifest)  # fail before measuring
    metrics, predictions = measure(best["model_uri"], test, settings.batch_size, settings.tta_flip)
    # Read the champion, compare and move the alias as one step, so racing evaluations on this host cannot demote a
    # better model; promote_if_better re-reads the alias for hosts that share the tracking server but not the lock.
    with FileLock(lock_path(tracking_uri(params)), timeout=REGISTRY_LOCK_TIMEOUT_S):
        champion = registry.current_champion(name, alias)
        scores = HolderScores(test, settings.batch_size, settings.tta_flip, manifest)
        scores(champion)  # measured before registering: on other test data nothing is registered
        version = registry.register(
            best["model_uri"],
            name,
            best["run_id"],
            tags={k: f"{v:.6f}" for k, v in metrics.items()}
            | {
                "val_accuracy": f"{best['val_accuracy']:.6f}",
                tags.TEST_DATA_DIGEST: digest,
                tags.TEST_DATA_NAME: manifest.name,
            },
        )
        promotion = registry.promote_if_better(name, alias, version, metrics["test_accuracy"], scores, champion)
    previous, holder = promotion.rival, promotion.holder
    labels = test.labels.numpy()
    per_class = per_class_report(labels, predictions, manifest.classes)
    evaluation = {
        **metrics,
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "per_class": per_class,
        "tta_flip": settings.tta_flip,
        "test_data": {"name": manifest.name, "digest": digest},
        "val_accuracy": best["val_accuracy"],
        "model_name": name,
        "model_version": int(version.version),
        "model_uri": best["model_uri"],
        "run_id": best["run_id"],
        "run_name": best["run_name"],
        "alias": alias,
        "promoted": promotion.promoted,
        "previous_champion": (
            {"version": int(previous.version.version), **(scores.metrics(previous) or {"files": "gone"})}
            if previous
            else None
        ),
        "champion_version": int(holder.version.version) if holder else None,
    }
    write_json(reports.evaluation, evaluation)
    write_json(reports.champion, champion_record(holder, alias))
    names = np.array(manifest.classes)
    write_text(
        reports.confusion_csv,
        pd.DataFrame({"actual": names[labels], "predicted": names[predictions]}).to_csv(index=False),
    )
    confusion_png(labels, predictions, manifest.classes, reports.confusion_png)
    client = mlflow.MlflowClient()
    client.log_batch(best["run_id"], metrics=metric_batch(metrics, step=0))
    for artifact in reports.evaluate_outputs():
        client.log_artifact(best["run_id"], str(artifact), artifact_path="evaluation")
    return evaluation
