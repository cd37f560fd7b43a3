"""How fast a runtime is: latency at batch 1 and throughput at a large batch, on real images.

Shared by the export stage (reports/export.json) and benchmarks/bench_inference.py, so both measure the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fashion_mlops.inference.runtimes import Runtime, model_input

WARMUP_CALLS = 10
THROUGHPUT_BATCH = 256


@dataclass(frozen=True)
class Speed:
    latency_ms_p50: float
    latency_ms_p95: float
    images_per_s: float  # at THROUGHPUT_BATCH

    def as_dict(self) -> dict[str, float]:
        return {
            "latency_ms_p50": round(self.latency_ms_p50, 4),
            "latency_ms_p95": round(self.latency_ms_p95, 4),
            f"images_per_s_batch{THROUGHPUT_BATCH}": round(self.images_per_s, 1),
        }


def latencies_ms(runtime: Runtime, images: np.ndarray, calls: int) -> np.ndarray:
    """Milliseconds per call at batch 1, one image after another (cycling through `images`), after a warm-up."""
    inputs = [model_input(images[i % len(images) : i % len(images) + 1]) for i in range(calls + WARMUP_CALLS)]
    for x in inputs[:WARMUP_CALLS]:
        runtime.logits(x)
    timings = np.empty(calls)
    for i, x in enumerate(inputs[WARMUP_CALLS:]):
        start = time.perf_counter()
        runtime.logits(x)
        timings[i] = time.perf_counter() - start
    return timings * 1e3


def images_per_second(runtime: Runtime, images: np.ndarray, batches: int) -> float:
    """Images per second at THROUGHPUT_BATCH: the median batch time over `batches` batches, after one warm-up."""
    x = model_input(np.resize(images, (THROUGHPUT_BATCH, *images.shape[1:])))
    runtime.logits(x)
    timings = []
    for _ in range(batches):
        start = time.perf_counter()
        runtime.logits(x)
        timings.append(time.perf_counter() - start)
    return THROUGHPUT_BATCH / float(np.median(timings))


def measure_speed(runtime: Runtime, images: np.ndarray, latency_calls: int, throughput_batches: int) -> Speed:
    timings = latencies_ms(runtime, images, latency_calls)
    return Speed(
        latency_ms_p50=float(np.percentile(timings, 50)),
        latency_ms_p95=float(np.percentile(timings, 95)),
        images_per_s=images_per_second(runtime, images, throughput_batches),
    )
