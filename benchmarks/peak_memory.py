"""Run a command (e.g. `dvc repro`) and report the wall time and the peak memory of one of its subprocesses.

The subprocess is the first descendant whose command line contains `--match` (default `fashion-mlops sweep`); its
memory is the sum of PSS over it and its own descendants (the sweep's export process, any workers), sampled
every 0.5 s, with the RSS sum beside it (which counts torch's shared library pages once per process).

Usage: .venv/bin/python benchmarks/peak_memory.py [--match TEXT] -- dvc repro
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import tree_memory_bytes

SAMPLE_EVERY_S = 0.5


def find_match(root: psutil.Process, match: str) -> psutil.Process | None:
    try:
        for proc in [root, *root.children(recursive=True)]:
            if match in " ".join(proc.cmdline()):
                return proc
    except psutil.Error:
        return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--match", default="fashion-mlops sweep")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    peaks = {"pss": 0.0, "rss": 0.0}
    done = threading.Event()
    started = time.perf_counter()
    proc = subprocess.Popen(command)
    root = psutil.Process(proc.pid)

    def sample() -> None:
        while not done.is_set():
            target = find_match(root, args.match)
            if target is not None:
                rss, pss = tree_memory_bytes(target.pid, pss=True)
                peaks["pss"], peaks["rss"] = max(peaks["pss"], pss / 2**20), max(peaks["rss"], rss / 2**20)
            done.wait(SAMPLE_EVERY_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    returncode = proc.wait()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    print(
        f"{' '.join(command)}: exit {returncode}, wall {wall:.1f} s ({wall / 60:.1f} min); peak memory of the "
        f"'{args.match}' process tree: PSS {peaks['pss']:.0f} MB (RSS sum {peaks['rss']:.0f} MB)"
    )
    return returncode


if __name__ == "__main__":
    sys.exit(main())
