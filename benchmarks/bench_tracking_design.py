"""Time this checkout's tracking design against another checkout's, side by side on the tutorial grid.

In one invocation, per repeat, in turn (A B C, then C B A, so that a machine whose speed drifts favours none), each
as its own subprocess in a fresh folder with a fresh SQLite store:

  (A) this checkout, tracking on: `python -m fashion_mlops sweep` (MLflow runs, TensorBoard, logged models);
  (B) the baseline checkout, tracking on: the same command with PYTHONPATH at `--baseline-src`, e.g. a worktree of
      the commit before a tracking change (`git worktree add /tmp/baseline <commit>`);
  (C) this checkout, tracking off (`tracking.enabled: false`): what tracking costs at all.

The params are bench_sweep.py's: the project's params.yaml with the tutorial grid (8 cells x 3 epochs of
simple_cnn, histograms every epoch). Prints the median wall time of each and the median of the per-repeat ratios
A/B and A/C (pairing keeps a ratio meaningful while the machine's speed drifts), and the CPU it ran on.

Usage: .venv/bin/python benchmarks/bench_tracking_design.py --baseline-src /tmp/baseline/src [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from bench_sweep import ROOT, TUTORIAL_GRID, project_params, run_measured  # this folder is first on sys.path


def cpu_description() -> str:
    """The CPU model, core count and the ISA flags that decide the fast paths (AVX2, AVX-512, bf16, AMX)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(isa) or 'no AVX2'}"


def sweep_once(label: str, src: Path, tracking_on: bool, args: argparse.Namespace, root: Path) -> float:
    """One timed sweep of checkout `src`; returns its wall time in seconds."""
    workdir = root / label
    workdir.mkdir(parents=True)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = project_params(base, args, workdir, tracking_on, TUTORIAL_GRID)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "fashion_mlops", "--params", "params.yaml", "--reports", "reports", "sweep"]
    result = run_measured(cmd, workdir, workdir / "sweep.log", env, echo=False)
    if result["rc"] != 0:
        raise SystemExit(f"{label}: the sweep exited {result['rc']}; see {workdir / 'sweep.log'}")
    print(f"  {label}: {result['wall_s']:.1f} s", flush=True)
    return result["wall_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", required=True, help="the src/ folder of the checkout to compare with")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "raw"))
    parser.add_argument("--manifest", default=str(ROOT / "datasets" / "fashion-mnist.json"))
    parser.add_argument("--keep", action="store_true", help="keep the working folders")
    parser.add_argument("--skip-off", action="store_true", help="leave out (C), tracking off")
    args = parser.parse_args(argv)
    args.epochs, args.device, args.val_size, args.subset = 3, "cpu", 5000, None
    variants = {
        "A this checkout, tracking on": (ROOT / "src", True),
        "B baseline, tracking on": (Path(args.baseline_src).resolve(), True),
        "C this checkout, tracking off": (ROOT / "src", False),
    }
    if args.skip_off:
        del variants["C this checkout, tracking off"]
    times: dict[str, list[float]] = {label: [] for label in variants}
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    try:
        for repeat in range(args.repeat):
            print(f"repeat {repeat + 1}/{args.repeat}", flush=True)
            order = list(variants.items())
            for label, (src, tracking_on) in order if repeat % 2 == 0 else reversed(order):
                times[label].append(sweep_once(f"{repeat}-{label[0]}", src, tracking_on, args, tmp))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    a, b, *c = times.values()
    print(f"\nCPU: {cpu_description()}; {args.repeat} repeats, sweep.workers {args.workers}")
    for label, values in times.items():
        spread = f"[{min(values):.1f}-{max(values):.1f}]"
        print(f"  {label:32s} median {statistics.median(values):6.1f} s {spread}")
    print(f"  A/B (this design / baseline): {_paired(a, b)}  (median of per-repeat ratios)")
    if c:
        print(f"  A/C (tracking on / off):      {_paired(a, c[0])}")
    return 0


def _paired(first: list[float], second: list[float]) -> str:
    ratios = [x / y for x, y in zip(first, second, strict=True)]
    return f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})"


if __name__ == "__main__":
    sys.exit(main())
