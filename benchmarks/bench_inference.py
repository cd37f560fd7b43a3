"""PyTorch eager against ONNX Runtime and OpenVINO on the champion, side by side in one invocation.

The champion (`models:/<registry.model_name>@<alias>` of the params' tracking store, inspected and loaded as the
export stage does) is exported to ONNX and to an OpenVINO IR in a temporary folder, with the export stage's own
code. Then, for each of `--repeat` rounds, every runtime in turn (the order rotates each round, so drift in the VM's
speed does not favour one) is timed with the export stage's own measures:

  - latency at batch 1: `--calls` calls, one real test image each, after a warm-up; p50 and p95;
  - throughput at batch 256: the median of `--batches` timed batches of real test images, after a warm-up.

Every runtime gets the same thread count. Printed: per runtime the median over rounds of each figure, and its ratio
to PyTorch eager (the median of the per-round ratios). Goal (PASS/FAIL): the fastest runtime at least 2x PyTorch
eager at batch 1.

Usage: .venv/bin/python benchmarks/bench_inference.py [--params params.yaml] [--repeat 5] [--calls 500]
       [--batches 20] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bench_tracking_design import cpu_description  # noqa: E402  (this folder is first on sys.path)

TARGET_BATCH1_SPEEDUP = 2.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--model-uri", help="a logged pt2 model (default: the registry's champion)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, help="threads for every runtime (default: torch's default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from fashion_mlops.tracking.client_settings import apply_client_defaults

    apply_client_defaults()  # before MLflow is imported
    import torch

    from fashion_mlops.config import load_params
    from fashion_mlops.data.manifest import load_manifest
    from fashion_mlops.data.splits import load_split
    from fashion_mlops.export.convert import to_onnx, to_openvino
    from fashion_mlops.export.timing import THROUGHPUT_BATCH, measure_speed
    from fashion_mlops.inference.runtimes import LABELS, OnnxRuntime, OpenVinoRuntime, TorchRuntime
    from fashion_mlops.tracking.model_files import load_logged_model
    from fashion_mlops.tracking.store import connect

    params = load_params(args.params)
    connect(params)
    model_uri = args.model_uri or f"models:/{params.registry.model_name}@{params.registry.alias}"
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    images = load_split(load_manifest(params.data.manifest), Path(params.data.dir), "test").images.numpy()[:2000]
    model = load_logged_model(model_uri)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        onnx_file, xml = Path(tmp) / "model.onnx", Path(tmp) / "ir" / "model.xml"
        xml.parent.mkdir()
        to_onnx(model, onnx_file)
        to_openvino(onnx_file, xml)
        runtimes = [TorchRuntime(model), OnnxRuntime(onnx_file, threads), OpenVinoRuntime(xml, threads)]
        rounds: dict[str, list] = {rt.name: [] for rt in runtimes}
        for round_index in range(args.repeat):
            order = runtimes[round_index % 3 :] + runtimes[: round_index % 3]
            for runtime in order:
                rounds[runtime.name].append(measure_speed(runtime, images, args.calls, args.batches))
            print(f"round {round_index + 1}/{args.repeat} done", file=sys.stderr)

    eager = rounds["torch"]
    results = {}
    for name, speeds in rounds.items():
        pairs = list(zip(eager, speeds, strict=True))
        results[name] = {
            "latency_ms_p50": statistics.median(s.latency_ms_p50 for s in speeds),
            "latency_ms_p95": statistics.median(s.latency_ms_p95 for s in speeds),
            "images_per_s": statistics.median(s.images_per_s for s in speeds),
            "batch1_speedup": statistics.median(e.latency_ms_p50 / s.latency_ms_p50 for e, s in pairs),
            "throughput_ratio": statistics.median(s.images_per_s / e.images_per_s for e, s in pairs),
        }
    fastest = max(results, key=lambda name: results[name]["batch1_speedup"])
    verdict = "PASS" if results[fastest]["batch1_speedup"] >= TARGET_BATCH1_SPEEDUP else "FAIL"

    print(f"\nCPU: {cpu_description()}; torch capability {torch.backends.cpu.get_cpu_capability()}; {threads} threads")
    print(f"model: {model_uri}; {args.repeat} rounds, medians; ratios are to PyTorch eager, per round, then median\n")
    print(
        f"| runtime | batch-1 p50 ms | batch-1 p95 ms | x eager (batch 1) | images/s at {THROUGHPUT_BATCH} | x eager |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, figures in results.items():
        print(
            f"| {LABELS[name]} | {figures['latency_ms_p50']:.3f} | {figures['latency_ms_p95']:.3f} | "
            f"{figures['batch1_speedup']:.2f} | {figures['images_per_s']:.0f} | {figures['throughput_ratio']:.2f} |"
        )
    speedup = results[fastest]["batch1_speedup"]
    print(
        f"\n{verdict}: fastest at batch 1 is {LABELS[fastest]}, {speedup:.2f}x PyTorch eager "
        f"(goal: at least {TARGET_BATCH1_SPEEDUP:.0f}x)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cpu": cpu_description(), "threads": threads, "model_uri": model_uri, "results": results}, indent=2
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
