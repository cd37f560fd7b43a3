"""Time the tutorial's loop against `fashion-mlops sweep` on the same grid, with tracking on and off.

In one invocation, per repeat:

  (a) reference: benchmarks/tutorial_reference.py, the tutorial's loop, as a subprocess;
  (b) project, tracking on: `fashion-mlops --params P --reports R sweep` with MLflow (fresh SQLite store, models
      logged) and TensorBoard (histograms every epoch), then `fashion-mlops ... evaluate` for the champion's
      test accuracy (timed separately, not part of the sweep's time);
  (c) project, tracking off: the same sweep with `tracking.enabled: false` and `tracking.log_models: false`.

Each subprocess gets its own fresh temporary working directory. Its wall time is measured from spawn to exit, and
its peak memory two ways: `os.wait4()` on the child's pid returns that child's own rusage, whose ru_maxrss is the
kernel's exact high-water mark of its resident set (per child, so several children in a row do not blur together
as RUSAGE_CHILDREN would); and a sampler thread sums the RSS of the child and all its descendants every 0.2 s, which
takes in the sweep's export process and any workers. The RSS sum counts shared pages (torch's libraries) once per
process, an upper bound. PSS, the tree's real share, is only sampled in an extra untimed run (`--pss`): reading
/proc/<pid>/smaps_rollup stalls the process's allocations (benchmarks/README.md says by how much).

Targets (printed as PASS/FAIL): reference / project(on) wall time >= 3; tracking overhead (on vs off) <= 5%;
project champion test accuracy >= the reference's best test accuracy; project peak memory < 2 GB.

Usage: .venv/bin/python benchmarks/bench_sweep.py [--quick] [--repeat N] [--workers N] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_SCRIPT = Path(__file__).resolve().parent / "tutorial_reference.py"
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TUTORIAL_GRID: dict[str, list[Any]] = {"lr": [0.01, 0.001], "batch_size": [100, 1000], "shuffle": [True, False]}
TARGET_SPEEDUP = 3.0
TARGET_OVERHEAD_PCT = 5.0
TARGET_RSS_MB = 2048.0
SAMPLE_EVERY_S = 0.2
QUICK_SUBSET = 6000
QUICK_VAL_SIZE = 1000  # leaves 5000 training images, the same count the quick reference trains on


# ---------------------------------------------------------------- measuring one subprocess


def _tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (the sweep's export process and any workers)."""
    try:
        import psutil
    except ImportError:
        return [pid]
    try:
        parent = psutil.Process(pid)
        return [pid, *(child.pid for child in parent.children(recursive=True))]
    except psutil.Error:
        return []


def proc_memory_kb(pid: int, field: str, path: str) -> int:
    """One `Field:   N kB` line of /proc/<pid>/<path> (0 when the process is gone or the field missing)."""
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_memory_bytes(pid: int, pss: bool) -> tuple[int, int | None]:
    """(sum of RSS, sum of PSS or None) over a process tree.

    RSS comes from /proc/<pid>/status, a cheap read. It counts a page shared by several processes (torch's
    libraries, mapped by the sweep and by its export process alike) once per process, so the sum is an upper
    bound. PSS splits each shared page between its processes, so its sum is the tree's real share; but reading
    /proc/<pid>/smaps_rollup walks the process's page tables under its memory-map lock, which stalls the
    process's own allocations, enough to slow a sweep visibly when sampled every 0.2 s. Timed runs therefore read RSS
    only, and PSS is sampled in a separate, untimed run (`--pss`).
    """
    pids = _tree_pids(pid)
    rss = sum(proc_memory_kb(p, "VmRSS", "status") for p in pids)
    if not pss:
        return rss * 1024, None
    return rss * 1024, sum(proc_memory_kb(p, "Pss", "smaps_rollup") for p in pids) * 1024


def run_measured(
    cmd: list[str], cwd: Path, log_path: Path, env: dict[str, str], echo: bool, pss: bool = False
) -> dict[str, Any]:
    """Run `cmd`, its output going to `log_path` (and the terminal with `echo`); wall time and peak memory.

    With `pss`, the tree's PSS is sampled too, which slows the process down (see tree_memory_bytes): such a
    run's wall time is not comparable with the others.
    """
    peak_tree_rss = peak_tree_pss = 0
    done = threading.Event()

    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE if echo else log, stderr=subprocess.STDOUT
        )

        def sample() -> None:
            nonlocal peak_tree_rss, peak_tree_pss
            while not done.is_set():
                rss, pss_bytes = tree_memory_bytes(proc.pid, pss)
                peak_tree_rss, peak_tree_pss = max(peak_tree_rss, rss), max(peak_tree_pss, pss_bytes or 0)
                done.wait(SAMPLE_EVERY_S)

        def tee() -> None:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                log.write(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        teer = threading.Thread(target=tee, daemon=True) if echo else None
        if teer:
            teer.start()
        maxrss_kb = None
        if hasattr(os, "wait4"):
            # wait4 on this pid: exact peak RSS of this child (ru_maxrss, KiB on Linux), not of all children so far
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            maxrss_kb = usage.ru_maxrss
        else:
            proc.wait()
        wall_s = time.perf_counter() - started
        done.set()
        sampler.join()
        if teer:
            teer.join()
    maxrss_mb = maxrss_kb / 1024 if maxrss_kb is not None else None
    tree_rss_mb, tree_pss_mb = peak_tree_rss / 2**20, peak_tree_pss / 2**20
    return {
        "cmd": cmd,
        "cwd": str(cwd),
        "log": str(log_path),
        "rc": proc.returncode,
        "wall_s": wall_s,
        "maxrss_mb": maxrss_mb,
        "sampled_tree_rss_mb": tree_rss_mb,
        "sampled_tree_pss_mb": tree_pss_mb if pss else None,
        # the main process's exact peak RSS, or the whole tree's sampled RSS sum (an upper bound) when larger
        "peak_rss_mb": max(maxrss_mb or 0.0, tree_rss_mb),
    }


def log_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- the three variants


def project_params(
    base: dict[str, Any], args: argparse.Namespace, workdir: Path, tracking_on: bool, grid: dict[str, list[Any]]
) -> dict[str, Any]:
    """The project's params.yaml (performance knobs kept) with the benchmark's grid, data and a private store."""
    params = copy.deepcopy(base)
    data = params.setdefault("data", {})
    data["manifest"] = str(Path(args.manifest).resolve())
    data["dir"] = str(Path(args.data_dir).resolve())
    data.setdefault("sources", [str(Path(args.data_dir).resolve())])
    data["val_size"] = args.val_size
    data["subset"] = args.subset
    params["model"] = {**params.get("model", {}), "arch": "simple_cnn"}
    train = params.setdefault("train", {})
    train.update({"epochs": args.epochs, "optimizer": "adam", "device": args.device})
    params["sweep"] = {**params.get("sweep", {}), "grid": grid, "resume": False, "workers": args.workers}
    params["tracking"] = {
        **params.get("tracking", {}),
        "mlflow_uri": f"sqlite:///{(workdir / 'mlflow.db').resolve()}",
        "artifact_location": str((workdir / "mlruns").resolve()),
        "experiment": "bench",
        "tensorboard_dir": str((workdir / "runs").resolve()),
        "histogram_every": 1,
        "log_models": tracking_on,
        "enabled": tracking_on,
    }
    return params


def run_project(
    label: str,
    base: dict[str, Any],
    args: argparse.Namespace,
    workdir: Path,
    tracking_on: bool,
    env: dict[str, str],
    pss: bool = False,
) -> dict[str, Any]:
    """One project sweep (then `evaluate`, when tracking is on and this is a timed run, i.e. not `pss`)."""
    workdir.mkdir(parents=True)
    params_path, reports = workdir / "params.yaml", workdir / "reports"
    params = project_params(base, args, workdir, tracking_on, grid_of(args))
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    cli = [args.cli, "--params", str(params_path), "--reports", str(reports)]
    if tracking_on and args.existing_store:
        # untimed: create the SQLite store's tables first, as a user's second sweep finds them (MLflow's schema
        # migrations on a brand-new database take a few seconds, once per store)
        uri = params["tracking"]["mlflow_uri"]
        init = f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"
        subprocess.run([sys.executable, "-c", init], check=True, env=env, capture_output=True)
    print(f"  {label}: sweep in {workdir}", flush=True)
    result: dict[str, Any] = {"label": label, "workdir": str(workdir), "tracking": tracking_on}
    result["sweep"] = run_measured([*cli, "sweep"], workdir, workdir / "sweep.log", env, args.verbose, pss)
    if result["sweep"]["rc"] != 0:
        result["error"] = f"sweep exited {result['sweep']['rc']}; log {result['sweep']['log']}"
        print(log_tail(result["sweep"]["log"]), file=sys.stderr)
        return result
    with contextlib.suppress(OSError, ValueError):
        sweep_json = json.loads((reports / "sweep.json").read_text())
        result["best_val_accuracy"] = sweep_json.get("best_val_accuracy")
        result["best_run"] = sweep_json.get("best_run")
        result["finished_runs"] = sweep_json.get("finished_runs")
    result["wrote_mlflow_store"] = (workdir / "mlflow.db").exists()
    result["wrote_tensorboard"] = (workdir / "runs").exists() and any((workdir / "runs").rglob("events.out.*"))
    if tracking_on and not pss:
        print(f"  {label}: evaluate", flush=True)
        result["evaluate"] = run_measured([*cli, "evaluate"], workdir, workdir / "evaluate.log", env, args.verbose)
        if result["evaluate"]["rc"] != 0:
            # the sweep's timing still counts; only the test accuracy is missing
            result["evaluate_error"] = f"evaluate exited {result['evaluate']['rc']}; log {result['evaluate']['log']}"
            print(log_tail(result["evaluate"]["log"]), file=sys.stderr)
            return result
        evaluation = json.loads((reports / "evaluation.json").read_text())
        result["test_accuracy"] = evaluation["test_accuracy"]
    return result


def run_reference_process(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    grid = grid_of(args)
    out = workdir / "reference.json"
    cmd = [
        sys.executable,
        str(REFERENCE_SCRIPT),
        "--data-dir",
        str(Path(args.data_dir).resolve()),
        "--workdir",
        str(workdir),
        "--epochs",
        str(args.epochs),
        "--lr",
        *map(str, grid["lr"]),
        "--batch-size",
        *map(str, grid["batch_size"]),
        "--shuffle",
        *map(str, grid["shuffle"]),
        "--device",
        "cuda" if args.device == "auto" and cuda_available() else ("cpu" if args.device == "auto" else args.device),
        "--json",
        str(out),
    ]
    if args.reference_subset is not None:
        cmd += ["--subset", str(args.reference_subset)]
    print(f"  (a) reference: tutorial loop in {workdir}", flush=True)
    result: dict[str, Any] = {"label": "reference", "workdir": str(workdir)}
    result["process"] = run_measured(cmd, workdir, workdir / "reference.log", env, args.verbose)
    if result["process"]["rc"] != 0:
        result["error"] = f"reference exited {result['process']['rc']}; log {result['process']['log']}"
        print(log_tail(result["process"]["log"]), file=sys.stderr)
        return result
    result["result"] = json.loads(out.read_text())
    result["test_accuracy"] = result["result"]["best_test_accuracy"]
    # What running the tutorial script costs, minus the test evaluation that the tutorial does not do.
    result["comparable_wall_s"] = result["process"]["wall_s"] - result["result"]["test_eval_s"]
    return result


def all_errors(repeats: list[dict[str, Any]]) -> list[str]:
    return [item[k] for rep in repeats for item in rep.values() for k in ("error", "evaluate_error") if k in item]


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def grid_of(args: argparse.Namespace) -> dict[str, list[Any]]:
    return {"lr": args.lr, "batch_size": args.batch_size, "shuffle": args.shuffle}


# ---------------------------------------------------------------- summary


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    return f" [{min(values):.1f}-{max(values):.1f}]" if len(values) > 1 else ""


def summarise(repeats: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    def ok(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in items if r and "error" not in r]

    ref = ok([r.get("reference") for r in repeats])
    on = ok([r.get("tracking_on") for r in repeats])
    off = ok([r.get("tracking_off") for r in repeats])
    summary: dict[str, Any] = {
        "reference_process_wall_s": _median([r["process"]["wall_s"] for r in ref]),
        "reference_comparable_wall_s": _median([r["comparable_wall_s"] for r in ref]),
        "reference_loop_wall_s": _median([r["result"]["wall_s"] for r in ref]),
        "reference_peak_rss_mb": max((r["process"]["peak_rss_mb"] for r in ref), default=None),
        "reference_best_test_accuracy": _median([r["test_accuracy"] for r in ref]),
        "on_wall_s": _median([r["sweep"]["wall_s"] for r in on]),
        "off_wall_s": _median([r["sweep"]["wall_s"] for r in off]),
        "evaluate_wall_s": _median(
            [r["evaluate"]["wall_s"] for r in on if "evaluate" in r and "evaluate_error" not in r]
        ),
        "on_peak_rss_mb": max((r["sweep"]["peak_rss_mb"] for r in on), default=None),
        "on_main_maxrss_mb": max((r["sweep"]["maxrss_mb"] or 0 for r in on), default=None),
        "on_tree_rss_mb": max((r["sweep"]["sampled_tree_rss_mb"] for r in on), default=None),
        "on_tree_pss_mb": max(
            (r["sweep"]["sampled_tree_pss_mb"] for r in ok([r.get("memory_run") for r in repeats])), default=None
        ),
        "off_peak_rss_mb": max((r["sweep"]["peak_rss_mb"] for r in off), default=None),
        "project_test_accuracy": _median([r.get("test_accuracy") for r in on]),
        "on_best_val_accuracy": _median([r.get("best_val_accuracy") for r in on]),
        "off_best_val_accuracy": _median([r.get("best_val_accuracy") for r in off]),
    }
    s = summary
    s["speedup"] = (
        s["reference_comparable_wall_s"] / s["on_wall_s"]
        if s["reference_comparable_wall_s"] and s["on_wall_s"]
        else None
    )
    s["speedup_vs_loop_only"] = (
        s["reference_loop_wall_s"] / s["on_wall_s"] if s["reference_loop_wall_s"] and s["on_wall_s"] else None
    )
    s["tracking_overhead_pct"] = (
        100.0 * (s["on_wall_s"] - s["off_wall_s"]) / s["off_wall_s"] if s["on_wall_s"] and s["off_wall_s"] else None
    )
    s["tracking_off_honoured"] = (
        not any(r["wrote_mlflow_store"] or r["wrote_tensorboard"] for r in off) if off else None
    )
    checks = {
        "speedup >= 3": None if s["speedup"] is None else s["speedup"] >= TARGET_SPEEDUP,
        "tracking overhead <= 5%": None
        if s["tracking_overhead_pct"] is None
        else s["tracking_overhead_pct"] <= TARGET_OVERHEAD_PCT,
        "project test acc >= reference": None
        if s["project_test_accuracy"] is None or s["reference_best_test_accuracy"] is None
        else s["project_test_accuracy"] >= s["reference_best_test_accuracy"],
        "project peak RSS < 2 GB": None if s["on_peak_rss_mb"] is None else s["on_peak_rss_mb"] < TARGET_RSS_MB,
    }
    s["checks"] = checks
    return summary


def print_table(repeats: list[dict[str, Any]], s: dict[str, Any], args: argparse.Namespace) -> None:
    def walls(key: str, path: tuple[str, ...]) -> list[float]:
        out = []
        for r in repeats:
            item = r.get(key)
            if not item or "error" in item:
                continue
            for part in path:
                item = item[part]
            out.append(item)
        return out

    n_runs = len(args.lr) * len(args.batch_size) * len(args.shuffle)
    print()
    print(
        f"Benchmark: {n_runs} runs x {args.epochs} epoch(s), device {args.device}, "
        f"{args.repeat} repeat(s) (medians; [min-max] when repeated), workers {args.workers}"
        + (", QUICK smoke settings" if args.quick else "")
    )
    header = f"{'':34} {'wall s':>16} {'peak mem MB':>12} {'best test acc':>14}  note"
    print(header)
    print("-" * len(header))
    if not args.skip_reference:
        print(
            f"{'(a) tutorial reference':34} "
            f"{_fmt(s['reference_comparable_wall_s']) + _spread(walls('reference', ('comparable_wall_s',))):>16} "
            f"{_fmt(s['reference_peak_rss_mb'], '.0f'):>12} {_fmt(s['reference_best_test_accuracy'], '.4f'):>14}  "
            f"process minus test eval; loop alone {_fmt(s['reference_loop_wall_s'])} s; best chosen ON TEST"
        )
    print(
        f"{'(b) project sweep, tracking on':34} "
        f"{_fmt(s['on_wall_s']) + _spread(walls('tracking_on', ('sweep', 'wall_s'))):>16} "
        f"{_fmt(s['on_peak_rss_mb'], '.0f'):>12} {_fmt(s['project_test_accuracy'], '.4f'):>14}  "
        f"champion chosen on val (val acc {_fmt(s['on_best_val_accuracy'], '.4f')}); whole process"
    )
    print(f"{'    + evaluate (not in sweep time)':34} {_fmt(s['evaluate_wall_s']):>16}")
    print(
        f"{'(c) project sweep, tracking off':34} "
        f"{_fmt(s['off_wall_s']) + _spread(walls('tracking_off', ('sweep', 'wall_s'))):>16} "
        f"{_fmt(s['off_peak_rss_mb'], '.0f'):>12} {'-':>14}  "
        f"no model logged, so no evaluate (val acc {_fmt(s['off_best_val_accuracy'], '.4f')})"
    )
    print()
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    c = s["checks"]
    if not args.skip_reference:
        print(
            f"  speed-up reference/project(on): {_fmt(s['speedup'], '.2f', 'x'):>8}   target >= {TARGET_SPEEDUP:.0f}x"
            f"   {verdict[c['speedup >= 3']]}   (loop-only reference: {_fmt(s['speedup_vs_loop_only'], '.2f', 'x')})"
        )
    print(
        f"  tracking overhead on vs off:    {_fmt(s['tracking_overhead_pct'], '+.1f', '%'):>8}   "
        f"target <= {TARGET_OVERHEAD_PCT:.0f}%   {verdict[c['tracking overhead <= 5%']]}"
    )
    if not args.skip_reference:
        print(
            f"  test accuracy project vs ref:   {_fmt(s['project_test_accuracy'], '.4f')} vs "
            f"{_fmt(s['reference_best_test_accuracy'], '.4f')}   target project >= reference   "
            f"{verdict[c['project test acc >= reference']]}"
        )
    print(
        f"  peak memory of project sweep:   {_fmt(s['on_peak_rss_mb'], '.0f', ' MB'):>8}   "
        f"target < {TARGET_RSS_MB:.0f} MB   {verdict[c['project peak RSS < 2 GB']]}"
    )
    print(
        f"    (sweep process alone: peak RSS {_fmt(s['on_main_maxrss_mb'], '.0f')} MB; with its export process and "
        f"workers: sum of RSS {_fmt(s['on_tree_rss_mb'], '.0f')} MB, which counts shared library pages once per "
        "process; "
        + (
            f"sum of PSS {_fmt(s['on_tree_pss_mb'], '.0f')} MB in the untimed --pss run)"
            if s["on_tree_pss_mb"] is not None
            else "--pss adds an untimed run that samples the tree's PSS)"
        )
    )
    if s["tracking_off_honoured"] is False:
        print(
            "  note: tracking.enabled: false was NOT honoured: (c) still wrote an MLflow store and/or TensorBoard "
            "events, so the overhead above only measures model logging"
        )
    if args.quick:
        print("  note: --quick numbers only show that the script works; they say nothing about the targets")


# ---------------------------------------------------------------- main


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test: 1 epoch, data.subset 6000, val_size 1000")
    parser.add_argument("--repeat", type=int, default=1, help="repeat every variant N times; medians are reported")
    parser.add_argument("--workers", type=int, default=1, help="sweep.workers for the project runs")
    parser.add_argument("--json", default=None, help="save all results and the summary here")
    parser.add_argument("--skip-reference", action="store_true", help="time only the project, (b) and (c)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 3, 1 with --quick)")
    parser.add_argument("--lr", type=float, nargs="+", default=TUTORIAL_GRID["lr"], help="grid values of lr")
    parser.add_argument("--batch-size", type=int, nargs="+", default=TUTORIAL_GRID["batch_size"])
    parser.add_argument("--shuffle", type=parse_bool, nargs="+", default=TUTORIAL_GRID["shuffle"])
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "auto"], help="for both sides (the tutorial used the CPU)"
    )
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "raw"), help="the decompressed IDX files")
    parser.add_argument("--manifest", default=str(ROOT / "datasets" / "fashion-mnist.json"))
    parser.add_argument(
        "--base-params",
        default=str(ROOT / "configs" / "tutorial.yaml"),
        help="params the project runs start from (train knobs such as threads/channels_last kept); 'none' for "
        "the code's defaults",
    )
    parser.add_argument(
        "--existing-store",
        action="store_true",
        help="create the MLflow store's tables before timing the tracked sweep (a store that already exists)",
    )
    parser.add_argument(
        "--pss",
        action="store_true",
        help="after the timed runs, one more tracked sweep that samples its process tree's PSS (untimed)",
    )
    parser.add_argument("--cli", default=None, help="the fashion-mlops executable (default: next to this python)")
    parser.add_argument("--tmp-dir", default=None, help="where the per-variant working folders go")
    parser.add_argument("--keep", action="store_true", help="keep the working folders (logs, stores, runs/)")
    parser.add_argument("--verbose", action="store_true", help="stream the subprocesses' output")
    return parser


def precision_path(base: dict[str, Any], device: str) -> str:
    """Which precision the project's sweeps train in on this machine, and why (the reference loop is fp32)."""
    from fashion_mlops.train import pick_device, precision_choice

    precision = (base.get("train") or {}).get("precision", "auto")
    bf16, why = precision_choice(precision, pick_device(device))
    return f"{'bf16' if bf16 else 'fp32'} ({why})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.quick else 3
    args.subset = QUICK_SUBSET if args.quick else None
    args.val_size = QUICK_VAL_SIZE if args.quick else 5000
    args.reference_subset = QUICK_SUBSET - QUICK_VAL_SIZE if args.quick else None
    if args.cli is None:
        beside = Path(sys.executable).parent / "fashion-mlops"
        args.cli = str(beside) if beside.exists() else (shutil.which("fashion-mlops") or "fashion-mlops")
    missing = [name for name in IDX_FILES if not (Path(args.data_dir) / name).is_file()]
    if missing:
        print(f"error: {args.data_dir} lacks {', '.join(missing)}; run `fashion-mlops download` first", file=sys.stderr)
        return 2
    base: dict[str, Any] = {}
    if args.base_params.lower() != "none":
        base = yaml.safe_load(Path(args.base_params).read_text()) or {}
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}

    tmp_root = Path(tempfile.mkdtemp(prefix="bench-sweep-", dir=args.tmp_dir))
    print(f"working folders under {tmp_root}", flush=True)
    print(f"precision: {precision_path(base, args.device)}", flush=True)
    repeats: list[dict[str, Any]] = []
    failed = True
    try:
        for index in range(args.repeat):
            print(f"repeat {index + 1}/{args.repeat}", flush=True)
            rep_dir = tmp_root / f"repeat-{index + 1}"
            rep: dict[str, Any] = {}
            if not args.skip_reference:
                rep["reference"] = run_reference_process(args, rep_dir / "reference", env)
            # alternate the order of on/off so that drift (thermal, neighbours) does not favour one of them
            order = [(True, "tracking_on"), (False, "tracking_off")]
            for tracking_on, key in order if index % 2 == 0 else order[::-1]:
                label = "(b) tracking on" if tracking_on else "(c) tracking off"
                rep[key] = run_project(label, base, args, rep_dir / key, tracking_on, env)
            repeats.append(rep)
        if args.pss:
            print("memory run (untimed: sampling PSS slows the process down)", flush=True)
            memory = run_project("(m) tracking on", base, args, tmp_root / "memory-run", True, env, pss=True)
            repeats.append({"memory_run": memory})
        failed = bool(all_errors(repeats))
    finally:
        if failed and not args.keep:
            print(f"keeping {tmp_root} for its logs", file=sys.stderr)
        elif not args.keep:
            shutil.rmtree(tmp_root, ignore_errors=True)

    summary = summarise(repeats, args)
    print_table(repeats, summary, args)
    errors = all_errors(repeats)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.json:
        settings = dict(vars(args))
        payload = {
            "settings": settings,
            "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
            "summary": summary,
            "repeats": repeats,
            "working_folders": str(tmp_root) if args.keep or errors else None,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"results saved to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
