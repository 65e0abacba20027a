"""Benchmark: jobs per minute with 1, 2 and 4 CPU replicas of the tiny model on a local Ray cluster.

    python bench/ray_bench.py                 # 1, 2, 4 replicas, 12 jobs of 4 s each
    python bench/ray_bench.py --replicas 1,2 --jobs 8 --duration 2

A steady stream: all jobs are handed to `RayInferenceClient` at once (single jobs, as with
`[worker] max_batch_size = 1`), so every replica always has the next one waiting. Each replica
reserves one CPU and runs torch on one thread; the local cluster gets as many CPUs as the largest
replica count, so on a machine with fewer cores the larger counts share them (and cannot scale).
Before timing, every replica runs one job (Ray worker start, torch import, model load). The table
gives jobs per minute and the speed-up against one replica; the last line is machine-readable:
`TARGET ray_2_vs_1_replicas measured=<x> target=1.6 ok|short`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout: make `inference` importable
    sys.path.insert(0, str(REPO_ROOT))

import ray  # noqa: E402

from bench.model_settings import random_model_settings  # noqa: E402
from inference.backends.ray import RayInferenceClient  # noqa: E402
from inference.checkpoints.random_models import make_test_model  # noqa: E402
from inference.request import GenerationRequest  # noqa: E402
from inference.settings import EngineOptions, EngineSettings  # noqa: E402

TWO_VS_ONE_TARGET = 1.6


async def jobs_per_minute(
    settings: EngineSettings, replicas: int, jobs: int, duration: int, out: Path
) -> float:
    async with RayInferenceClient(settings, replicas=replicas, num_gpus=0, num_cpus=1) as client:

        async def run(prefix: str, count: int, index_offset: int = 0) -> None:
            request = GenerationRequest(model_version="small", prompt="steady stream", duration=duration)
            await asyncio.gather(
                *(
                    client.submit(f"{prefix}-{index}", request.replace(seed=index_offset + index), out)
                    for index in range(count)
                )
            )

        await run(f"warm-{replicas}", replicas)
        started = time.perf_counter()
        await run(f"timed-{replicas}", jobs, 1000)
        return jobs / ((time.perf_counter() - started) / 60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", default="1,2,4", help="comma-separated replica counts [1,2,4]")
    parser.add_argument("--jobs", type=int, default=12, help="timed jobs per replica count [12]")
    parser.add_argument("--duration", type=int, default=4, help="seconds of audio per job [4]")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.replicas.split(",") if part.strip()]

    with tempfile.TemporaryDirectory(prefix="ray-bench-") as scratch:
        root = Path(scratch)
        model_dir = make_test_model("small", root / "small", tiny=True, seed=0)
        settings = random_model_settings(
            model_dir,
            EngineOptions(device="cpu", dtype="float32", cpu_threads=1, model_cache_gb=1.0),
            conversion_cache=root / "converted",
            with_melody=False,
        )
        ray.init(
            num_cpus=max(counts),
            num_gpus=0,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            configure_logging=False,
            log_to_driver=False,
        )
        try:
            rates = {
                count: asyncio.run(
                    jobs_per_minute(settings, count, args.jobs, args.duration, root / f"out-{count}")
                )
                for count in counts
            }
        finally:
            ray.shutdown()

    print(f"machine: {os.cpu_count()} cores; {args.jobs} jobs of {args.duration} s each per row (tiny model)")
    print(f"{'replicas':>8}  {'jobs/min':>9}  {'vs 1':>6}")
    base = rates.get(1)
    for count, rate in rates.items():
        ratio = f"{rate / base:5.2f}x" if base else "     -"
        print(f"{count:>8}  {rate:9.1f}  {ratio:>6}")
    if base and 2 in rates:
        measured = rates[2] / base
        verdict = "ok" if measured >= TWO_VS_ONE_TARGET else "short"
        print(f"TARGET ray_2_vs_1_replicas measured={measured:.2f} target={TWO_VS_ONE_TARGET} {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
