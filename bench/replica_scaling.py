"""Jobs per minute with 1, 2 and 4 local workers of the tiny model, for a steady stream of jobs.

    python bench/replica_scaling.py            # 1, 2, 4 workers
    python bench/replica_scaling.py --quick    # fewer jobs per worker

Each worker count gets its own `InferenceClient` (one process per `[worker] devices` entry, here
"cpu", one torch thread each), warmed up with one job per worker, then a stream of jobs kept queued
the whole time (each job its own batch, so the count of workers is what varies). Ends with
`TARGET replicas_2_vs_1 measured=<x> target=1.6 ok|short`.

The workers are processes on this machine's cores: a worker is one core busy, so the ratio is bounded
by the cores left free (on a 2-core machine shared with other work, 2 workers at most double, and
4 workers cannot beat 2).
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
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout: make the packages importable
    sys.path.insert(0, str(REPO_ROOT))

from inference.backends.local import InferenceClient  # noqa: E402
from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR, make_test_model  # noqa: E402
from inference.request import GenerationRequest  # noqa: E402
from inference.settings import EngineOptions, EngineSettings, MelodyOptions, ModelSources  # noqa: E402

REPLICAS_2_VS_1_TARGET = 1.6
WORKER_COUNTS = (1, 2, 4)


def tiny_settings(model_dir: Path) -> EngineSettings:
    return EngineSettings(
        models=ModelSources(
            small=str(model_dir),
            text_encoder=str(model_dir / TEXT_ENCODER_DIR),
            compression=str(model_dir / COMPRESSION_DIR),
            conversion_cache=str(model_dir.parent / "converted"),
        ),
        engine=EngineOptions(device="cpu", dtype="float32", cpu_threads=1),
        melody=MelodyOptions(stem_separation=False),
    )


def stream_request(index: int, duration: int) -> GenerationRequest:
    return GenerationRequest(
        model_version="small", prompt=f"steady stream {index}", duration=duration, seed=index
    ).validate()


async def jobs_per_minute(
    settings: EngineSettings, workers: int, jobs: int, duration: int, out: Path
) -> float:
    """Jobs per minute of `workers` workers working through `jobs` jobs queued at once."""
    async with InferenceClient(settings, devices=["cpu"] * workers) as client:
        # Warm-up: one job per worker at once, so every worker has loaded the model.
        await asyncio.gather(
            *(client.submit(f"warm-{workers}-{n}", stream_request(n, 1), out) for n in range(workers))
        )
        started = time.perf_counter()
        await asyncio.gather(
            *(client.submit(f"job-{workers}-{n}", stream_request(n, duration), out) for n in range(jobs))
        )
        return jobs / (time.perf_counter() - started) * 60


def run_replica_scaling(
    tiny_dir: Path, *, quick: bool = False, counts: tuple[int, ...] = WORKER_COUNTS
) -> list[str]:
    """Print the table; return the TARGET line."""
    settings = tiny_settings(tiny_dir)
    jobs_per_worker = 3 if quick else 6
    duration = 2 if quick else 4
    print(
        f"\nreplicas: local workers of the tiny model, {duration} s jobs, {jobs_per_worker} per worker queued "
        f"at once ({os.cpu_count()} CPU cores here)",
        flush=True,
    )
    print("| workers | jobs | jobs/min | vs 1 worker |\n|---|---|---|---|", flush=True)
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as out:
        for workers in counts:
            jobs = jobs_per_worker * max(counts)  # the same stream for every count
            rates[workers] = asyncio.run(jobs_per_minute(settings, workers, jobs, duration, Path(out)))
            print(
                f"| {workers} | {jobs} | {rates[workers]:.1f} | {rates[workers] / rates[counts[0]]:.2f}x |",
                flush=True,
            )
    ratio = rates.get(2, 0.0) / rates[1] if 1 in rates else 0.0
    cores = os.cpu_count() or 1
    if cores < 4:
        print(
            f"note: {cores} cores here, shared with the bench process and whatever else runs: 2 workers can at "
            "best double, 4 workers have no cores of their own",
            flush=True,
        )
    verdict = "ok" if ratio >= REPLICAS_2_VS_1_TARGET else "short"
    return [f"TARGET replicas_2_vs_1 measured={ratio:.3f} target={REPLICAS_2_VS_1_TARGET:g} {verdict}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter jobs")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "data" / "bench-models")
    args = parser.parse_args(argv)
    tiny_dir = args.model_dir / "tiny-small"
    if not (tiny_dir / "config.json").exists():
        make_test_model("small", tiny_dir, tiny=True, seed=0)
    for line in run_replica_scaling(tiny_dir, quick=args.quick):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
