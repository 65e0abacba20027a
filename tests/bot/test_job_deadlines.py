"""A job that outlives its deadline gets its worker killed for real, and the next job runs on a fresh one.

Here the watchdog drives the real inference client directly (start at submit, progress on each step,
finish at the end) with the client's own `kill_worker_of`; tests/bot/test_deadline_scenarios.py
goes through the bot and its dispatcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.pipeline.deadlines import DeadlinePolicy, JobWatchdog
from inference.backends.local import InferenceClient, JobSubmission
from inference.errors import WorkerCrashed
from inference.protocol import GenerationResult
from inference.request import GenerationRequest

# The watchdog kills the worker of a job past its deadline.


def killer(client: InferenceClient, killed: list[int]) -> Callable[[str], bool]:
    """The client's kill_worker_of, noting the pid it was running on."""

    def kill_worker_of(job_id: str) -> bool:
        pids = client.worker_pids
        if client.kill_worker_of(job_id):
            killed.extend(pids)
            return True
        return False

    return kill_worker_of


async def run_watched(
    client: InferenceClient, watchdog: JobWatchdog, job_id: str, request: GenerationRequest, out: Path
) -> GenerationResult:
    watchdog.start(job_id, request)
    try:
        return await client.submit(job_id, request, out, on_progress=lambda *_: watchdog.progress(job_id))
    finally:
        watchdog.finish(job_id)


async def test_a_job_past_its_deadline_has_its_worker_killed_and_the_next_job_runs(
    inference_client: InferenceClient, tmp_path: Path
) -> None:
    killed: list[int] = []
    watchdog = JobWatchdog(
        killer(inference_client, killed),
        DeadlinePolicy(base_s=0.0, per_audio_second_s=0.01, stall_s=600),
    )
    long_job = GenerationRequest(prompt="endless drone", duration=30, seed=1, model_version="small")
    assert watchdog.policy.deadline_s(long_job) == pytest.approx(0.3)
    with pytest.raises(WorkerCrashed):
        await run_watched(inference_client, watchdog, "hung-1", long_job, tmp_path)
    assert len(killed) == 1
    assert watchdog.missed("hung-1") == "it ran past its deadline of 0.3 s"
    assert watchdog.watching == 0

    # A fresh worker takes the next job, and a job within its deadline is left alone.
    watchdog.policy = DeadlinePolicy()
    result = await run_watched(
        inference_client,
        watchdog,
        "fine-2",
        GenerationRequest(prompt="short", duration=1, seed=2, model_version="small"),
        tmp_path,
    )
    assert Path(result.output_path).is_file()
    assert killed[0] not in inference_client.worker_pids
    assert watchdog.missed("fine-2") is None and len(killed) == 1


async def test_progress_keeps_a_job_alive_and_a_stall_kills_it(
    inference_client: InferenceClient, tmp_path: Path
) -> None:
    calls: list[str] = []

    def record_kill(job_id: str) -> bool:
        calls.append(job_id)
        return True

    watchdog = JobWatchdog(record_kill, DeadlinePolicy(base_s=600, per_audio_second_s=0, stall_s=0.3))
    request = GenerationRequest(prompt="steady", duration=1, seed=3, model_version="small")
    watchdog.start("steady", request)
    for _ in range(10):  # steps every 0.1 s: never 0.3 s without one
        watchdog.progress("steady")
        await asyncio.sleep(0.1)
    assert calls == []
    await asyncio.sleep(1.0)  # the steps stop
    assert calls == ["steady"] and watchdog.missed("steady") == "it made no progress for 0.3 s"
    assert watchdog.watching == 0


async def test_the_deadline_grows_with_the_audio_a_job_makes_and_reads() -> None:
    policy = DeadlinePolicy(base_s=600, per_audio_second_s=60, stall_s=300)
    assert (
        policy.deadline_s(GenerationRequest(prompt="a", duration=8, seed=1, model_version="small"))
        == 600 + 8 * 60
    )
    with_clip = GenerationRequest(prompt="a", duration=8, seed=1, input_audio="clip.wav")
    assert policy.deadline_s(with_clip) == 600 + (8 + 30) * 60


async def test_the_client_kills_only_the_worker_running_the_job(
    inference_client: InferenceClient, tmp_path: Path
) -> None:
    assert inference_client.kill_worker_of("never-submitted") is False
    pids = inference_client.worker_pids
    result = await inference_client.submit(
        "already-done", GenerationRequest(prompt="a", duration=1, seed=4, model_version="small"), tmp_path
    )
    assert Path(result.output_path).is_file()
    assert inference_client.kill_worker_of("already-done") is False
    assert inference_client.worker_pids == pids


async def test_the_client_says_when_a_worker_takes_a_job_so_its_deadline_starts_there(
    inference_client: InferenceClient, tmp_path: Path
) -> None:
    events: list[str] = []
    (task,) = inference_client.submit_batch(
        [
            JobSubmission(
                "timed",
                GenerationRequest(prompt="a", duration=1, seed=5, model_version="small"),
                on_progress=lambda *_: events.append("progress"),
                on_started=lambda: events.append("started"),
            )
        ],
        tmp_path,
    )
    await task
    assert events[0] == "started" and events.count("started") == 1 and "progress" in events
