"""The reproducibility check: run the whole DVC pipeline twice from scratch and compare every metric.

Each run happens in a fresh git repository holding a copy of the project, with its own MLflow store;
the second run uses two worker processes, so the check also proves that parallel cells reproduce
serial ones. Durations and run ids are expected to differ; nothing else may.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fashion_mlops.errors import NotReproducible
from fashion_mlops.reports import Reports

# what legitimately differs between two identical runs: wall time and the ids of what they created
VOLATILE_COLUMNS = ("run_id", "epoch_duration_s", "run_duration_s")
VOLATILE_KEYS = ("run_id", "model_uri", "model_version", "champion_version", "previous_champion", "run_duration_s")


def project_files(root: Path) -> list[Path]:
    """The files git tracks, which is what a clean clone has."""
    listing = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    return [Path(line) for line in listing.splitlines() if (root / line).is_file()]


def prepare_copy(root: Path, dest: Path, params: dict[str, Any]) -> None:
    """A fresh git repo with the project, the sample data and the given params."""
    for relative in project_files(root):
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
    for generated in ("reports", "dvc.lock"):
        path = dest / generated
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    shutil.copytree(root / "data" / "sample", dest / "data" / "sample")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=repro-check", "-c", "user.email=repro-check@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "repro-check"], cwd=dest, check=True)


def run_pipeline(dest: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(["dvc", "repro"], cwd=dest, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dvc repro failed in {dest}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def stable_results(dest: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The results of a run without what legitimately varies (timings, ids)."""
    reports = Reports(dest / "reports")
    table = pd.read_csv(reports.sweep_csv).drop(columns=list(VOLATILE_COLUMNS))
    evaluation = json.loads(reports.evaluation.read_text())
    return table, {k: v for k, v in evaluation.items() if k not in VOLATILE_KEYS}


def differences(first: tuple[pd.DataFrame, dict], second: tuple[pd.DataFrame, dict]) -> list[str]:
    """Every cell or key where two runs disagree, as readable lines."""
    found = []
    (table_a, eval_a), (table_b, eval_b) = first, second
    if table_a.shape != table_b.shape or list(table_a.columns) != list(table_b.columns):
        found.append(f"sweep.csv shape/columns differ: {table_a.shape} {list(table_a.columns)} vs {table_b.shape}")
    else:
        for column in table_a.columns:
            for row, (a, b) in enumerate(zip(table_a[column], table_b[column], strict=True)):
                if a != b and not (pd.isna(a) and pd.isna(b)):
                    found.append(f"sweep.csv row {row} ({table_a['run'][row]}) {column}: {a!r} != {b!r}")
    for key in sorted(set(eval_a) | set(eval_b)):
        if eval_a.get(key) != eval_b.get(key):
            found.append(f"evaluation.json {key}: {eval_a.get(key)!r} != {eval_b.get(key)!r}")
    return found


def repro_check(root: Path, params_file: Path, keep: bool = False) -> None:
    """Run the pipeline twice (serial, then two workers) from scratch; raise NotReproducible on any difference."""
    params = yaml.safe_load(params_file.read_text())
    workdir = Path(tempfile.mkdtemp(prefix="repro-check-"))
    results = []
    try:
        for attempt, workers in ((1, 1), (2, 2)):
            dest = workdir / f"run-{attempt}"
            run_params = json.loads(json.dumps(params))
            run_params.setdefault("sweep", {})["workers"] = workers
            prepare_copy(root, dest, run_params)
            run_pipeline(dest)
            results.append(stable_results(dest))
            print(f"run {attempt} (workers={workers}) done: {dest}")
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    found = differences(*results)
    if found:
        raise NotReproducible(f"{len(found)} difference(s):\n  " + "\n  ".join(found[:50]))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="configs/repro-check.yaml")
    parser.add_argument("--keep", action="store_true", help="keep the two work directories")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if not (root / "data" / "sample").is_dir():
        from fashion_mlops.data.sample import write_sample_dataset

        write_sample_dataset(root / "data" / "sample", n_train=2000, n_test=500)
    try:
        repro_check(root, Path(args.params), keep=args.keep)
    except NotReproducible as error:
        print(f"NOT reproducible: {error}", file=sys.stderr)
        return 1
    print("reproducible: both runs gave identical metrics, parameters and champion")
    return 0


if __name__ == "__main__":
    sys.exit(main())
