"""TPE with median pruning against the full grid it samples from, on the grid's time budget: the best validation
accuracy each reaches, and the time to reach the grid's best.

In one invocation, per repeat, each `fashion-mlops --params P --reports R sweep` on configs/tutorial.yaml's settings
(simple_cnn, its optimizer, schedule, augmentation...), `train.epochs` 4, `data.subset` 20000 and `data.val_size`
5000, tracking on (a fresh SQLite store, models logged, TensorBoard):

  grid: `sweep.search: grid` over lr [0.0003, 0.001, 0.003, 0.01] x batch_size [32, 64, 128, 256] = 16 runs, every
        run trained for all epochs; first, since its wall time is the other's budget;
  tpe:  `sweep.search: tpe` drawing from the space the grid covers: lr log-uniform from the grid's lowest to its
        highest lr, batch_size one of the grid's 4; `sweep.prune: median`, `sweep.prune_warmup` 1 (a trial can be
        stopped after any epoch but the last); `sweep.time_budget_s` = this repeat's grid wall time (no trial
        starts after it; the one under way finishes), `sweep.trials` 64 at most; `sweep.seed` = the repeat's index,
        so each repeat is another draw.

Each sweep runs in its own fresh temporary directory with `sweep.resume: false`; its wall time is measured from spawn
to exit. From reports/sweep.json: each run's status (FINISHED / PRUNED / FAILED), final validation accuracy and epochs
trained, and the best validation accuracy (among FINISHED runs). From the sweep's MLflow store (the child runs tagged
`fashion_mlops.sweep_run_id` = the sweep's parent run): the timestamp of each run's last `val_accuracy` metric (the
moment its final accuracy was known) and its end_time (set by the export process once its model is logged).

"Time to the grid's best" = from the spawn of the sweep process to the last `val_accuracy` timestamp of the first
FINISHED run whose final validation accuracy is at least the same repeat's grid best (a pruned trial never counts);
"not reached" if none is. The same from the runs' end_time is printed beside it, but it is not the measure: the
export process runs at nice 19, behind training, so on a busy 2-core machine a run's model is logged (and its
end_time set) from seconds to minutes after its last epoch, often only once training is over. Also printed: the best
accuracy the grid had reached (by the same timestamps) when the TPE sweep exited, i.e. on TPE's time budget.

Goal (printed as PASS/FAIL): the median over repeats of (TPE's time to the grid's best) / (the grid's wall time) at
most 0.5; a repeat where TPE does not reach it counts as infinity.

Usage: .venv/bin/python benchmarks/bench_search.py [--repeat 3] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench_ray_executor import timed_sweep  # this folder is first on sys.path
from bench_tracking_design import cpu_description

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATIO = 0.5
LRS = [0.0003, 0.001, 0.003, 0.01]  # a decade and a half around Adam's usual 1e-3
BATCH_SIZES = [32, 64, 128, 256]
SWEEP_TAG = "fashion_mlops.sweep_run_id"
TRIAL_STATE_TAG = "fashion_mlops.trial_state"
KIND_TAG = "fashion_mlops.kind"
INF = math.inf


def sweep_params(
    args: argparse.Namespace, workdir: Path, search: str, seed: int, budget_s: float | None
) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / args.config).read_text())
    params["data"] |= {
        "manifest": str(ROOT / params["data"]["manifest"]),
        "dir": str(Path(args.data_dir).resolve()),
        "subset": args.subset,
        "val_size": args.val_size,
    }
    params["model"]["arch"] = "simple_cnn"
    params["train"] |= {"precision": args.precision, "epochs": args.epochs}
    sweep: dict[str, Any] = {"executor": "local", "workers": 1, "resume": False}
    if search == "grid":
        sweep |= {"search": "grid", "grid": {"lr": args.lr, "batch_size": args.batch_size}, "space": {}}
        sweep |= {"prune": "none"}
    else:
        space = {"lr": {"low": min(args.lr), "high": max(args.lr), "log": True}, "batch_size": args.batch_size}
        sweep |= {"search": "tpe", "trials": args.trials, "space": space, "grid": {}, "seed": seed}
        sweep |= {"prune": "median", "prune_warmup": 1, "time_budget_s": budget_s}
    params["sweep"] = sweep
    params["tracking"] |= {
        "mlflow_uri": f"sqlite:///{workdir / 'mlflow.db'}",
        "artifact_location": str(workdir / "mlruns"),
        "tensorboard_dir": str(workdir / "runs"),
        "log_models": True,
    }
    return params


def run_sweep(
    args: argparse.Namespace, search: str, seed: int, base: Path, budget_s: float | None = None
) -> dict[str, Any]:
    """One sweep, spawn to exit, and what its reports and MLflow store say of each run (times from the spawn)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{search}-", dir=base))
    params = sweep_params(args, workdir, search, seed, budget_s)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    spawned = time.time()
    done, wall_s = timed_sweep(workdir)
    (workdir / "sweep.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"{search} sweep failed ({done.returncode}), kept {workdir}:\n{done.stderr[-3000:]}")
    report = json.loads((workdir / "reports" / "sweep.json").read_text())
    sweep_run_id = json.loads((workdir / "reports" / "best_run.json").read_text())["sweep_run_id"]
    runs, parent_start_s, problems = store_times(params, sweep_run_id, report, spawned)
    result = {
        "search": search,
        "seed": seed if search != "grid" else None,
        "wall_s": wall_s,
        "parent_start_s": parent_start_s,
        "best_run": report["best_run"],
        "best_val_accuracy": report["best_val_accuracy"],
        "total_runs": report["total_runs"],
        "finished_runs": report["finished_runs"],
        "pruned_runs": report["pruned_runs"],
        "epochs_trained": sum(run["epochs"] for run in runs.values()),
        "runs": runs,
        "problems": problems + report_problems(report, runs, search, args),
    }
    if args.keep:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def store_times(
    params: dict[str, Any], sweep_run_id: str, report: dict[str, Any], spawned: float
) -> tuple[dict[str, dict[str, Any]], float | None, list[str]]:
    """Per run of sweep.json: its status, accuracy, epochs, swept values and, from MLflow, its start and end and the
    timestamp of its final val_accuracy, in seconds from the spawn of the sweep."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=params["tracking"]["mlflow_uri"])
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_run_id}'", max_results=1000
    )
    children = {run.info.run_id: run for run in children if run.data.tags.get(KIND_TAG) == "cell"}
    parent = client.get_run(sweep_run_id)

    def since(ms: int | None) -> float | None:
        return None if ms is None else ms / 1000 - spawned

    problems = []
    if len(children) != report["total_runs"]:
        problems.append(f"{len(children)} child runs in MLflow, sweep.json has {report['total_runs']}")
    swept = {}
    for row in report["rows"]:
        swept.setdefault(row["run"], {k: row[k] for k in ("lr", "batch_size") if k in row})
    runs = {}
    for name, entry in report["runs"].items():
        child = children.get(entry["run_id"])
        run = {
            "status": entry["status"],
            "run_id": entry["run_id"],
            "epochs": entry["epochs"],
            "val_accuracy": entry.get("val_accuracy"),
            "run_duration_s": entry.get("run_duration_s"),
            **swept.get(name, {}),
            "mlflow_status": None,
            "trial_state": None,
            "start_s": None,
            "end_s": None,
            "final_val_s": None,
        }
        if child is None:
            problems.append(f"{name}: run {entry['run_id']} not among the sweep's child runs in MLflow")
        else:
            history = client.get_metric_history(child.info.run_id, "val_accuracy")
            last = max(history, key=lambda m: (m.step, m.timestamp), default=None)
            run |= {
                "mlflow_status": child.info.status,
                "trial_state": child.data.tags.get(TRIAL_STATE_TAG),
                "start_s": since(child.info.start_time),
                "end_s": since(child.info.end_time),
                "final_val_s": since(last.timestamp) if last else None,
                "val_accuracy_steps": len(history),
            }
            if entry["status"] == "FINISHED" and (child.info.end_time is None or last is None):
                problems.append(f"{name}: FINISHED without an end_time or a val_accuracy history in MLflow")
            if last is not None and run["val_accuracy"] is not None and last.value != run["val_accuracy"]:
                problems.append(
                    f"{name}: MLflow's last val_accuracy {last.value} != sweep.json's {run['val_accuracy']}"
                )
        runs[name] = run
    return runs, since(parent.info.start_time), problems


def report_problems(
    report: dict[str, Any], runs: dict[str, dict[str, Any]], search: str, args: argparse.Namespace
) -> list[str]:
    """What would make the figures wrong: a best run that is not FINISHED or not the best, inconsistent states."""
    problems = []
    best = runs.get(report["best_run"], {})
    if best.get("status") != "FINISHED":
        problems.append(f"best run {report['best_run']} has status {best.get('status')}")
    finished = [run["val_accuracy"] for run in runs.values() if run["status"] == "FINISHED"]
    if finished and max(finished) != report["best_val_accuracy"]:
        problems.append(f"best_val_accuracy {report['best_val_accuracy']} != best FINISHED run's {max(finished)}")
    expected = len(args.lr) * len(args.batch_size) if search == "grid" else args.trials
    if report["total_runs"] != expected and (search == "grid" or report["total_runs"] > expected):
        problems.append(f"{report['total_runs']} runs, expected {expected}")
    for name, run in runs.items():
        if run["status"] == "FINISHED" and run["epochs"] != args.epochs:
            problems.append(f"{name}: FINISHED after {run['epochs']} of {args.epochs} epochs")
        if run["status"] == "PRUNED" and not 1 <= run["epochs"] < args.epochs:
            problems.append(f"{name}: PRUNED after {run['epochs']} of {args.epochs} epochs")
        if run["status"] == "FAILED":
            problems.append(f"{name}: FAILED")
        if search == "grid" and run["status"] != "FINISHED":
            problems.append(f"{name}: {run['status']} in a grid sweep")
        expected_state = {"FINISHED": "finished", "PRUNED": "pruned"}.get(run["status"])
        if search != "grid" and run["trial_state"] is not None and run["trial_state"] != expected_state:
            problems.append(f"{name}: status {run['status']} but trial_state tag {run['trial_state']}")
        expected_mlflow = {"FINISHED": "FINISHED", "PRUNED": "KILLED"}.get(run["status"])
        if run["mlflow_status"] is not None and expected_mlflow and run["mlflow_status"] != expected_mlflow:
            problems.append(f"{name}: status {run['status']} but MLflow run status {run['mlflow_status']}")
        if run["end_s"] is not None and run["final_val_s"] is not None and run["end_s"] < run["final_val_s"]:
            problems.append(f"{name}: end_time before its last val_accuracy")
    return problems


def time_to(result: dict[str, Any], target: float, key: str = "final_val_s") -> float:
    """Seconds from spawn until the first FINISHED run with final val_accuracy >= target (its `key`), else inf."""
    times = [
        run[key]
        for run in result["runs"].values()
        if run["status"] == "FINISHED" and run["val_accuracy"] >= target and run[key] is not None
    ]
    return min(times, default=INF)


def best_by(result: dict[str, Any], seconds: float) -> float | None:
    """The best final val_accuracy among the FINISHED runs whose final epoch was done within `seconds` of spawn."""
    done = [
        run["val_accuracy"]
        for run in result["runs"].values()
        if run["status"] == "FINISHED" and run["final_val_s"] is not None and run["final_val_s"] <= seconds
    ]
    return max(done, default=None)


def compare(pair: dict[str, dict[str, Any]]) -> dict[str, Any]:
    grid, tpe = pair["grid"], pair["tpe"]
    target = grid["best_val_accuracy"]
    tpe_reach, tpe_reach_end = time_to(tpe, target), time_to(tpe, target, "end_s")
    return {
        "seed": tpe["seed"],
        "grid_best": target,
        "tpe_best": tpe["best_val_accuracy"],
        "grid_wall_s": grid["wall_s"],
        "tpe_wall_s": tpe["wall_s"],
        "grid_reach_s": time_to(grid, target),
        "grid_reach_end_s": time_to(grid, target, "end_s"),
        "tpe_reach_s": tpe_reach,
        "tpe_reach_end_s": tpe_reach_end,
        "reach_ratio": tpe_reach / grid["wall_s"],
        "reach_ratio_end": tpe_reach_end / grid["wall_s"],
        "wall_ratio": tpe["wall_s"] / grid["wall_s"],
        "grid_best_by_tpe_wall": best_by(grid, tpe["wall_s"]),
    }


def describe(label: str, result: dict[str, Any]) -> str:
    best = result["runs"][result["best_run"]]
    values = ", ".join(
        f"{k}={best[k]:.4g}" if isinstance(best[k], float) else f"{k}={best[k]}"
        for k in ("lr", "batch_size")
        if k in best
    )
    seed = f" seed {result['seed']}," if result["seed"] is not None else ""
    return (
        f"  {label}:{seed} wall {result['wall_s']:.1f} s, best {result['best_val_accuracy']:.4f} ({values}), "
        f"{result['total_runs']} runs ({result['finished_runs']} finished, {result['pruned_runs']} pruned), "
        f"{result['epochs_trained']} epochs"
    )


def reach_text(seconds: float) -> str:
    return "did not reach it" if math.isinf(seconds) else f"reached it at {seconds:.1f} s"


def shown(seconds: float) -> str:
    return "not reached" if math.isinf(seconds) else f"{seconds:.1f}"


def plain(value: Any) -> Any:
    """inf as null, for strict JSON."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="pairs of sweeps (grid, tpe); medians are reported")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test of the script: 1 epoch, subset 6000, val_size 1000, 1 pair"
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default: 4)")
    parser.add_argument("--subset", type=int, default=20000, help="data.subset (default: 20000)")
    parser.add_argument("--val-size", type=int, default=5000, help="data.val_size (default: 5000)")
    parser.add_argument("--trials", type=int, default=64, help="most TPE trials in the budget (default: 64)")
    parser.add_argument("--lr", type=float, nargs="+", default=LRS, help=f"the grid's lr values (default: {LRS})")
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=BATCH_SIZES,
        help=f"the grid's batch sizes (default: {BATCH_SIZES})",
    )
    parser.add_argument("--config", default="configs/tutorial.yaml")
    parser.add_argument("--precision", default="auto", help="train.precision for both (default: auto)")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "raw"), help="the decompressed IDX files")
    parser.add_argument("--keep", action="store_true", help="keep each sweep's folder (store, reports, sweep.log)")
    parser.add_argument("--json", default=None, help="save all results and the summary here")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.subset, args.val_size, args.repeat = 1, 6000, 1000, 1

    base = Path(tempfile.mkdtemp(prefix="bench-search-"))
    grid_size = len(args.lr) * len(args.batch_size)
    print(
        f"grid: lr {args.lr} x batch_size {args.batch_size} = {grid_size} runs; tpe: the grid's wall time, at most "
        f"{args.trials} trials, lr log-uniform [{min(args.lr)}, {max(args.lr)}], median pruning after epoch 1; "
        f"{args.epochs} epochs, "
        f"subset {args.subset}, val_size {args.val_size}",
        flush=True,
    )
    if args.epochs < 2:
        print("(with 1 epoch no trial can be pruned: the pruner decides after an epoch that is not the last)")
    pairs, comparisons = [], []
    for repeat in range(args.repeat):
        print(f"repeat {repeat + 1}, tpe seed {repeat}", flush=True)
        pair: dict[str, dict[str, Any]] = {}
        for search in ("grid", "tpe"):
            budget_s = pair["grid"]["wall_s"] if search == "tpe" else None
            pair[search] = run_sweep(args, search, repeat, base, budget_s)
            print(describe(search, pair[search]), flush=True)
            for problem in pair[search]["problems"]:
                print(f"    ! {problem}", flush=True)
        pairs.append(pair)
        comparisons.append(cmp := compare(pair))
        print(
            f"  grid best {cmp['grid_best']:.4f} (its first run with it done at {shown(cmp['grid_reach_s'])} s); "
            f"tpe: {reach_text(cmp['tpe_reach_s'])}, ratio to the grid's wall time {cmp['reach_ratio']:.3f}",
            flush=True,
        )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(c[key] for c in comparisons)

    summary = {
        "machine": cpu_description(),
        "config": args.config,
        "precision": args.precision,
        "epochs": args.epochs,
        "subset": args.subset,
        "val_size": args.val_size,
        "grid": {"lr": args.lr, "batch_size": args.batch_size},
        "trials": args.trials,
        "repeats": args.repeat,
        "medians": {
            key: med(key)
            for key in (
                "grid_best",
                "tpe_best",
                "grid_wall_s",
                "tpe_wall_s",
                "grid_reach_s",
                "grid_reach_end_s",
                "tpe_reach_s",
                "tpe_reach_end_s",
                "reach_ratio",
                "reach_ratio_end",
                "wall_ratio",
            )
        }
        | {
            "grid_pruned": statistics.median(p["grid"]["pruned_runs"] for p in pairs),
            "tpe_pruned": statistics.median(p["tpe"]["pruned_runs"] for p in pairs),
            "grid_epochs": statistics.median(p["grid"]["epochs_trained"] for p in pairs),
            "tpe_epochs": statistics.median(p["tpe"]["epochs_trained"] for p in pairs),
        },
        "per_repeat": comparisons,
        "problems": [f"repeat {i + 1} {s}: {msg}" for i, p in enumerate(pairs) for s in p for msg in p[s]["problems"]],
    }

    m = summary["medians"]
    print(
        f"\nmachine: {summary['machine']}; {args.config} (simple_cnn), precision {args.precision}, {args.epochs} "
        f"epochs, subset {args.subset}, val_size {args.val_size}, {args.repeat} pairs"
    )
    header = (
        f"{'repeat':<8}{'sweep':<6}{'seed':>5}{'best val_acc':>14}{'wall s':>9}{'to grid best s':>16}"
        f"{'(by end_time)':>17}{'runs':>6}{'pruned':>8}{'epochs':>8}"
    )
    print(header)
    for i, (pair, cmp) in enumerate(zip(pairs, comparisons, strict=True)):
        for search in ("grid", "tpe"):
            result = pair[search]
            seed = "-" if result["seed"] is None else str(result["seed"])
            print(
                f"{i + 1:<8}{search:<6}{seed:>5}{result['best_val_accuracy']:>14.4f}{result['wall_s']:>9.1f}"
                f"{shown(cmp[search + '_reach_s']):>16}{shown(cmp[search + '_reach_end_s']):>17}"
                f"{result['total_runs']:>6}{result['pruned_runs']:>8}{result['epochs_trained']:>8}"
            )
    for search in ("grid", "tpe"):
        print(
            f"{'median':<8}{search:<6}{'':>5}{m[search + '_best']:>14.4f}{m[search + '_wall_s']:>9.1f}"
            f"{shown(m[search + '_reach_s']):>16}{shown(m[search + '_reach_end_s']):>17}"
            f"{'':>6}{m[search + '_pruned']:>8g}{m[search + '_epochs']:>8g}"
        )
    ratios = [round(c["reach_ratio"], 3) for c in comparisons]
    print(f"tpe time to grid best / grid wall:   median {m['reach_ratio']:.3f}  {ratios}")
    ratios_end = [round(c["reach_ratio_end"], 3) for c in comparisons]
    print(f"  the same by the runs' end_time:     median {m['reach_ratio_end']:.3f}  {ratios_end}")
    walls = [round(c["wall_ratio"], 3) for c in comparisons]
    print(f"tpe wall / grid wall:                median {m['wall_ratio']:.3f}  {walls}")
    budget = [c["grid_best_by_tpe_wall"] for c in comparisons]
    print(f"grid's best by the time tpe exited (same budget): {[None if b is None else round(b, 4) for b in budget]}")
    if summary["problems"]:
        print(f"{len(summary['problems'])} problem(s) seen in the sweeps' reports and stores (listed above)")
    verdict = "PASS" if m["reach_ratio"] <= GOAL_RATIO else "FAIL"
    print(
        f"{verdict}: pruned TPE reaches the grid's best in {m['reach_ratio']:.3f} of the grid's wall time, median "
        f"(goal <= {GOAL_RATIO})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(plain({"summary": summary, "pairs": pairs}), indent=2))


if __name__ == "__main__":
    main()
