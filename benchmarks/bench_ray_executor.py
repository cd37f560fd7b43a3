"""Time the tutorial grid through the Ray executor against the local executor, and the cost of starting Ray.

In one invocation, per repeat (the order of the two alternates between repeats, so that drift of the machine's speed
does not favour one):

  local: `fashion-mlops --params P --reports R sweep` on configs/tutorial.yaml (8 cells of simple_cnn), tracking on
         (a fresh SQLite store, models logged, TensorBoard), `sweep.executor: local`;
  ray:   the same with `sweep.executor: ray` and `sweep.ray_address: null`, so the sweep starts a Ray instance on
         this machine and stops it at the end: its start-up is part of the time, as it is for a user.

Then, separately, the fixed cost of a local Ray instance: in a fresh process, `ray.init(address="local")`, one
no-op task, `ray.shutdown()`, timed from before the init to after the shutdown (the import of ray is not included).

Each sweep runs in its own fresh temporary directory with `sweep.resume: false`; its wall time is measured from spawn
to exit. The two executors must give the same per-run metrics; the script checks that too.

Goal (printed as PASS/FAIL): the median of ray/local wall-time ratios, pair by pair, at most 1.10.

Usage: .venv/bin/python benchmarks/bench_ray_executor.py [--repeat 3] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench_tracking_design import cpu_description  # this folder is first on sys.path

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATIO = 1.10
RAY_START_SCRIPT = """
import logging, time, ray
started = time.perf_counter()
ray.init(address="local", num_cpus={cpus}, include_dashboard=False, logging_level=logging.WARNING)
ray.get(ray.remote(lambda: None).remote())
ray.shutdown()
print(time.perf_counter() - started)
"""


def sweep_params(args: argparse.Namespace, workdir: Path, executor: str) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / args.config).read_text())
    params["data"] |= {"manifest": str(ROOT / params["data"]["manifest"]), "dir": str(Path(args.data_dir).resolve())}
    params["train"]["precision"] = args.precision
    if args.epochs:
        params["train"]["epochs"] = args.epochs
    if args.quick:
        params["data"] |= {"subset": 6000, "val_size": 1000}
        params["train"]["epochs"] = 1
    params["sweep"] |= {"executor": executor, "ray_address": None, "resume": False}
    params["tracking"] |= {
        "mlflow_uri": f"sqlite:///{workdir / 'mlflow.db'}",
        "artifact_location": str(workdir / "mlruns"),
        "tensorboard_dir": str(workdir / "runs"),
    }
    return params


def timed_sweep(workdir: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """`fashion-mlops sweep` on workdir/params.yaml, with none of this shell's tracking or Ray overrides; the
    finished process and its wall time from spawn to exit."""
    cli = Path(sys.executable).with_name("fashion-mlops")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    started = time.perf_counter()
    done = subprocess.run(
        [str(cli), "--params", "params.yaml", "--reports", "reports", "sweep"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    return done, time.perf_counter() - started


def run_sweep(args: argparse.Namespace, executor: str, base: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{executor}-", dir=base))
    (workdir / "params.yaml").write_text(yaml.safe_dump(sweep_params(args, workdir, executor), sort_keys=False))
    done, wall_s = timed_sweep(workdir)
    if done.returncode != 0:
        sys.exit(f"{executor} sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    runs = json.loads((workdir / "reports" / "sweep.json").read_text())["runs"]
    metrics = {name: (run["val_accuracy"], run["val_loss"], run["loss"]) for name, run in runs.items()}
    shutil.rmtree(workdir, ignore_errors=True)
    return {"executor": executor, "wall_s": wall_s, "metrics": metrics}


def ray_start_cost(cpus: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", RAY_START_SCRIPT.format(cpus=cpus)], capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="pairs of sweeps; medians are reported")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, data.subset 6000")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the config's)")
    parser.add_argument("--config", default="configs/tutorial.yaml")
    parser.add_argument("--precision", default="auto", help="train.precision for both (default: auto)")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "raw"), help="the decompressed IDX files")
    parser.add_argument("--json", default=None, help="save all results and the summary here")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    pairs = []
    for repeat in range(args.repeat):
        order = ("local", "ray") if repeat % 2 == 0 else ("ray", "local")
        results = {executor: run_sweep(args, executor, base) for executor in order}
        pairs.append(results)
        print(
            f"repeat {repeat + 1}: local {results['local']['wall_s']:.1f} s, ray {results['ray']['wall_s']:.1f} s, "
            f"ratio {results['ray']['wall_s'] / results['local']['wall_s']:.3f}",
            flush=True,
        )
    starts = [ray_start_cost(len(os.sched_getaffinity(0))) for _ in range(args.repeat)]
    shutil.rmtree(base, ignore_errors=True)

    ratios = [pair["ray"]["wall_s"] / pair["local"]["wall_s"] for pair in pairs]
    same = all(pair["ray"]["metrics"] == pair["local"]["metrics"] for pair in pairs)
    summary = {
        "machine": cpu_description(),
        "config": args.config,
        "precision": args.precision,
        "local_s_median": statistics.median(p["local"]["wall_s"] for p in pairs),
        "ray_s_median": statistics.median(p["ray"]["wall_s"] for p in pairs),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "ray_start_s_median": statistics.median(starts),
        "ray_start_s": starts,
        "same_metrics": same,
    }
    print(f"\nmachine: {summary['machine']}; {args.config}, precision {args.precision}, {args.repeat} pairs")
    print(f"{'':28}{'median':>10}  all")
    print(
        f"{'local executor, s':28}{summary['local_s_median']:>10.1f}  {[round(p['local']['wall_s'], 1) for p in pairs]}"
    )
    print(f"{'ray executor, s':28}{summary['ray_s_median']:>10.1f}  {[round(p['ray']['wall_s'], 1) for p in pairs]}")
    print(f"{'ray / local (pair by pair)':28}{summary['ratio_median']:>10.3f}  {[round(r, 3) for r in ratios]}")
    print(f"{'ray start + 1 task + stop, s':28}{summary['ray_start_s_median']:>10.2f}  {[round(s, 2) for s in starts]}")
    print(f"same per-run metrics from both executors: {same}")
    verdict = "PASS" if summary["ratio_median"] <= GOAL_RATIO else "FAIL"
    print(f"{verdict}: ray / local {summary['ratio_median']:.3f} (goal <= {GOAL_RATIO})")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "pairs": pairs}, indent=2))


if __name__ == "__main__":
    main()
