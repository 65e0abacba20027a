"""The worker process and its client, as the bot uses them: submit, batches, progress, errors, cancel, crashes.

One client (one worker on the tiny models) is shared by most tests: starting a process that
imports torch takes seconds. Tests that need their own processes say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import pytest_asyncio
import soundfile

from inference.backends import worker as worker_module
from inference.backends.base import JobSubmission
from inference.backends.local import InferenceClient, worker_process_context
from inference.errors import GenerationCancelled, GenerationFailed, WorkerCrashed, WorkerStartError
from inference.protocol import (
    BatchJob,
    Cancel,
    ErrorKind,
    GenerationError,
    GenerationResult,
    Progress,
    Ready,
    Shutdown,
    Started,
    SubmitBatch,
)
from inference.request import GenerationRequest, RequestError
from inference.settings import EngineSettings

# Hang guards only (tests never assert timings): a crash must be noticed long before this.
JOB_TIMEOUT_S = 120.0
# Long enough that a job is still running when the test reacts to its first progress event.
LONG_DURATION_S = 30


def short_request(**changes: object) -> GenerationRequest:
    return GenerationRequest(model_version="small", prompt="calm acoustic guitar", duration=1).replace(
        **changes
    )


@pytest_asyncio.fixture(scope="module")
async def client(engine_settings: EngineSettings) -> AsyncIterator[InferenceClient]:
    inference_client = InferenceClient(engine_settings, processes=1)
    await inference_client.start()
    yield inference_client
    await inference_client.close()


async def test_a_job_writes_an_audio_file_and_reports_its_seed_and_progress(
    client: InferenceClient, tmp_path: Path
) -> None:
    progress: list[tuple[int, int]] = []

    async def on_progress(steps_done: int, steps_total: int) -> None:
        progress.append((steps_done, steps_total))

    result = await asyncio.wait_for(
        client.submit("job-ok", short_request(), tmp_path, on_progress=on_progress), JOB_TIMEOUT_S
    )

    assert isinstance(result, GenerationResult)
    assert result.job_id == "job-ok"
    assert Path(result.output_path).parent == tmp_path
    info = soundfile.info(result.output_path)
    assert info.samplerate == result.sample_rate == 32_000
    assert info.frames == 32_000  # exactly the 1 s asked for
    assert isinstance(result.seed, int) and result.seed >= 0
    # Progress arrives in order and ends at the total number of decoder steps.
    assert progress, "no progress was reported"
    steps_done = [done for done, _ in progress]
    assert steps_done == sorted(steps_done)
    assert progress[-1][0] == progress[-1][1]
    assert len({total for _, total in progress}) == 1
    assert client.idle_workers == 1


async def test_a_bad_request_is_the_person_s_error_and_the_same_worker_serves_the_next_job(
    client: InferenceClient, tmp_path: Path
) -> None:
    pids_before = client.worker_pids
    # 1000 s bypasses GenerationRequest.validate() (the bot validates at the edge); the engine refuses it
    # (over [limits] max_duration_s).
    with pytest.raises(RequestError, match="120"):
        await asyncio.wait_for(
            client.submit("job-too-long", short_request(duration=1000), tmp_path), JOB_TIMEOUT_S
        )

    result = await asyncio.wait_for(
        client.submit("job-after-bad", short_request(seed=5), tmp_path), JOB_TIMEOUT_S
    )
    assert result.seed == 5
    assert client.worker_pids == pids_before


async def test_an_internal_failure_fails_only_that_job(client: InferenceClient, tmp_path: Path) -> None:
    pids_before = client.worker_pids
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("the output folder is a file, so writing the result fails")

    with pytest.raises(GenerationFailed):
        await asyncio.wait_for(client.submit("job-unwritable", short_request(), not_a_folder), JOB_TIMEOUT_S)

    result = await asyncio.wait_for(
        client.submit("job-after-failure", short_request(), tmp_path), JOB_TIMEOUT_S
    )
    assert Path(result.output_path).exists()
    assert client.worker_pids == pids_before


async def test_cancelling_a_running_job_stops_it_and_the_worker_goes_on(
    client: InferenceClient, tmp_path: Path
) -> None:
    pids_before = client.worker_pids
    cancel_sent: list[bool] = []

    async def cancel_on_first_progress(steps_done: int, steps_total: int) -> None:
        if not cancel_sent:
            cancel_sent.append(await client.cancel("job-cancel-me"))

    long_job = short_request(duration=LONG_DURATION_S)
    with pytest.raises(GenerationCancelled):
        await asyncio.wait_for(
            client.submit("job-cancel-me", long_job, tmp_path, on_progress=cancel_on_first_progress),
            JOB_TIMEOUT_S,
        )
    assert cancel_sent == [True]
    assert not list(tmp_path.glob("job-cancel-me*"))
    assert await client.cancel("job-cancel-me") is False  # finished jobs are unknown to the client

    result = await asyncio.wait_for(
        client.submit("job-after-cancel", short_request(), tmp_path), JOB_TIMEOUT_S
    )
    assert Path(result.output_path).exists()
    assert client.worker_pids == pids_before


async def test_a_job_waiting_for_a_busy_worker_can_be_cancelled_and_never_runs(
    client: InferenceClient, tmp_path: Path
) -> None:
    first_started = asyncio.Event()

    async def on_first_progress(steps_done: int, steps_total: int) -> None:
        first_started.set()

    first = asyncio.create_task(
        client.submit("job-first", short_request(duration=3), tmp_path, on_progress=on_first_progress)
    )
    second = asyncio.create_task(client.submit("job-second", short_request(), tmp_path))
    await asyncio.wait_for(first_started.wait(), JOB_TIMEOUT_S)
    assert client.idle_workers == 0

    assert await client.cancel("job-second") is True
    with pytest.raises(GenerationCancelled):
        await second
    result = await asyncio.wait_for(first, JOB_TIMEOUT_S)
    assert Path(result.output_path).exists()
    assert not list(tmp_path.glob("job-second*"))


async def test_a_worker_killed_mid_job_fails_that_job_and_a_new_worker_takes_the_next(
    client: InferenceClient, tmp_path: Path
) -> None:
    (old_pid,) = client.worker_pids

    async def kill_worker_on_first_progress(steps_done: int, steps_total: int) -> None:
        if old_pid in client.worker_pids:
            os.kill(old_pid, signal.SIGKILL)  # what the OOM killer does

    with pytest.raises(WorkerCrashed):
        await asyncio.wait_for(
            client.submit(
                "job-killed",
                short_request(duration=LONG_DURATION_S),
                tmp_path,
                on_progress=kill_worker_on_first_progress,
            ),
            JOB_TIMEOUT_S,
        )

    # The next job waits for the replacement worker, then runs on it.
    result = await asyncio.wait_for(
        client.submit("job-on-new-worker", short_request(), tmp_path), JOB_TIMEOUT_S
    )
    assert Path(result.output_path).exists()
    (new_pid,) = client.worker_pids
    assert new_pid != old_pid


async def test_in_a_batch_of_three_a_bad_request_fails_alone_a_cancelled_job_stops_and_the_third_finishes(
    client: InferenceClient, tmp_path: Path
) -> None:
    pids_before = client.worker_pids
    progress: dict[str, list[tuple[int, int]]] = {"batch-good": [], "batch-cancel-me": []}
    cancel_sent: list[bool] = []

    def recorder(job_id: str):
        async def on_progress(steps_done: int, steps_total: int) -> None:
            progress[job_id].append((steps_done, steps_total))
            if job_id == "batch-cancel-me" and not cancel_sent:
                cancel_sent.append(await client.cancel(job_id))

        return on_progress

    good, bad, cancelled = client.submit_batch(
        [
            JobSubmission("batch-good", short_request(duration=2, seed=11), recorder("batch-good")),
            # 1000 s bypasses GenerationRequest.validate(); the engine refuses it.
            JobSubmission("batch-too-long", short_request(duration=1000, seed=12)),
            JobSubmission(
                "batch-cancel-me",
                short_request(duration=LONG_DURATION_S, seed=13),
                recorder("batch-cancel-me"),
            ),
        ],
        tmp_path,
    )
    done, _ = await asyncio.wait([good, bad, cancelled], timeout=JOB_TIMEOUT_S)
    assert len(done) == 3, "a job of the batch never ended"

    result = good.result()
    assert result.job_id == "batch-good" and result.seed == 11
    assert soundfile.info(result.output_path).frames == 2 * 32_000
    assert progress["batch-good"][-1][0] == progress["batch-good"][-1][1]
    with pytest.raises(RequestError, match="120"):
        bad.result()
    with pytest.raises(GenerationCancelled):
        cancelled.result()
    assert cancel_sent == [True]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["batch-good.wav"]
    assert client.worker_pids == pids_before
    assert client.idle_workers == 1


async def test_a_job_cancelled_while_its_batch_waits_leaves_the_batch_and_the_others_run(
    client: InferenceClient, tmp_path: Path
) -> None:
    first_started = asyncio.Event()

    async def on_first_progress(steps_done: int, steps_total: int) -> None:
        first_started.set()

    first = asyncio.create_task(
        client.submit("wait-first", short_request(duration=3), tmp_path, on_progress=on_first_progress)
    )
    await asyncio.wait_for(first_started.wait(), JOB_TIMEOUT_S)
    kept, dropped = client.submit_batch(
        [JobSubmission("wait-kept", short_request(seed=21)), JobSubmission("wait-dropped", short_request())],
        tmp_path,
    )
    assert await client.cancel("wait-dropped") is True
    with pytest.raises(GenerationCancelled, match="before it started"):
        await asyncio.wait_for(dropped, JOB_TIMEOUT_S)
    assert (await asyncio.wait_for(kept, JOB_TIMEOUT_S)).seed == 21
    await asyncio.wait_for(first, JOB_TIMEOUT_S)
    assert not list(tmp_path.glob("wait-dropped*"))


async def test_a_worker_killed_mid_batch_fails_every_job_of_the_batch_as_crashed(
    client: InferenceClient, tmp_path: Path
) -> None:
    (old_pid,) = client.worker_pids

    async def kill_worker_on_first_progress(steps_done: int, steps_total: int) -> None:
        if old_pid in client.worker_pids:
            os.kill(old_pid, signal.SIGKILL)

    tasks = client.submit_batch(
        [
            JobSubmission(
                f"crash-{index}", short_request(duration=LONG_DURATION_S), kill_worker_on_first_progress
            )
            for index in range(3)
        ],
        tmp_path,
    )
    done, _ = await asyncio.wait(tasks, timeout=JOB_TIMEOUT_S)
    assert len(done) == 3
    for task in tasks:
        with pytest.raises(WorkerCrashed, match="batch of 3"):
            task.result()

    result = await asyncio.wait_for(
        client.submit("after-batch-crash", short_request(), tmp_path), JOB_TIMEOUT_S
    )
    assert Path(result.output_path).exists()
    assert client.worker_pids != [old_pid]


async def test_jobs_joined_to_a_running_batch_run_in_it_and_each_ends_on_its_own(
    client: InferenceClient, tmp_path: Path
) -> None:
    (before,) = client.workers
    decoding = asyncio.Event()

    async def on_progress(steps_done: int, steps_total: int) -> None:
        decoding.set()

    (long,) = client.submit_batch(
        [JobSubmission("join-long", short_request(duration=3), on_progress)], tmp_path
    )
    await asyncio.wait_for(decoding.wait(), JOB_TIMEOUT_S)
    (short,) = client.join_batch(
        ["join-long"], [JobSubmission("join-short", short_request(seed=9))], tmp_path
    )

    short_result = await asyncio.wait_for(short, JOB_TIMEOUT_S)
    assert not long.done()  # the joined job ended first, in the middle of the batch
    long_result = await asyncio.wait_for(long, JOB_TIMEOUT_S)
    assert (short_result.duration_s, long_result.duration_s) == (1.0, 3.0)
    (after,) = client.workers
    assert (after.batches_run, after.jobs_run) == (before.batches_run + 1, before.jobs_run + 2)

    # Once the batch is over, a join waits for a worker as a batch of its own.
    (late,) = client.join_batch(["join-long"], [JobSubmission("join-late", short_request())], tmp_path)
    assert Path((await asyncio.wait_for(late, JOB_TIMEOUT_S)).output_path).exists()
    (last,) = client.workers
    assert last.batches_run == before.batches_run + 2


async def test_closing_the_client_mid_job_cancels_it_and_leaves_no_process(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    own_client = InferenceClient(engine_settings, processes=1)
    await own_client.start()
    (pid,) = own_client.worker_pids
    started = asyncio.Event()

    async def on_progress(steps_done: int, steps_total: int) -> None:
        started.set()

    job = asyncio.create_task(
        own_client.submit(
            "job-at-close", short_request(duration=LONG_DURATION_S), tmp_path, on_progress=on_progress
        )
    )
    await asyncio.wait_for(started.wait(), JOB_TIMEOUT_S)
    await own_client.close()

    with pytest.raises(GenerationCancelled):
        await job
    assert own_client.worker_pids == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    with pytest.raises(RuntimeError, match="not running"):
        await own_client.submit("job-after-close", short_request(), tmp_path)


async def test_a_worker_that_cannot_start_says_why_and_leaves_no_process(
    engine_settings: EngineSettings,
) -> None:
    missing_gpu = engine_settings.model_copy(
        update={"engine": engine_settings.engine.model_copy(update={"device": "cuda:7"})}
    )
    children_before = {child.pid for child in multiprocessing.active_children()}
    own_client = InferenceClient(missing_gpu, processes=1)
    with pytest.raises(WorkerStartError, match="cuda:7"):
        await own_client.start()
    assert own_client.worker_pids == []
    assert {child.pid for child in multiprocessing.active_children()} == children_before


@contextlib.contextmanager
def raw_worker(engine_settings: EngineSettings) -> Iterator[tuple[Connection, Ready]]:
    """A worker process spoken to over its pipe, without the client; it must then shut down cleanly."""
    context = worker_process_context()
    parent_conn, child_conn = context.Pipe()
    process = context.Process(target=worker_module.main, args=(child_conn, engine_settings), daemon=True)
    process.start()
    child_conn.close()
    try:
        assert parent_conn.poll(JOB_TIMEOUT_S)
        ready = parent_conn.recv()
        assert isinstance(ready, Ready)
        yield parent_conn, ready
        parent_conn.send(Shutdown())
        process.join(JOB_TIMEOUT_S)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join()


def receive_until(conn: Connection, events: list[object], done: Callable[[list[object]], bool]) -> None:
    """Append the worker's events to `events` until `done(events)`."""
    while not done(events):
        assert conn.poll(JOB_TIMEOUT_S), f"worker went quiet after {events!r}"
        events.append(conn.recv())


def ended(job_id: str) -> Callable[[list[object]], bool]:
    """Whether the last event received is `job_id`'s result."""
    return lambda events: (
        bool(events) and isinstance(events[-1], GenerationResult) and events[-1].job_id == job_id
    )


def test_the_worker_runs_batches_in_order_and_drops_a_cancelled_waiting_job_from_its_batch(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    """The raw protocol, without the client: a batch waits behind another, and one of its jobs is cancelled."""
    with raw_worker(engine_settings) as (conn, ready):
        assert (ready.device, ready.dtype) == ("cpu", "float32")
        conn.send(SubmitBatch((BatchJob("first", short_request(duration=2)),), str(tmp_path)))
        conn.send(
            SubmitBatch(
                (BatchJob("second", short_request()), BatchJob("third", short_request(seed=3))), str(tmp_path)
            )
        )
        conn.send(Cancel("second"))

        events: list[object] = []
        receive_until(conn, events, ended("third"))

        finished = [
            (e.job_id, type(e).__name__) for e in events if isinstance(e, GenerationResult | GenerationError)
        ]
        assert sorted(finished) == [
            ("first", "GenerationResult"),
            ("second", "GenerationError"),
            ("third", "GenerationResult"),
        ]
        assert [e.job_id for e in events if isinstance(e, Started)] == ["first", "third"]
        (dropped,) = [e for e in events if isinstance(e, GenerationError)]
        assert dropped.kind is ErrorKind.CANCELLED
        first_progress = [e for e in events if isinstance(e, Progress) and e.job_id == "first"]
        assert first_progress[-1].steps_done == first_progress[-1].steps_total


def test_a_batch_sent_to_join_enters_the_running_batch_and_is_answered_when_it_ends(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    """The raw protocol: while "long" decodes, a join with a job of the same kind starts at once and
    is answered before "long" ends; a join that cannot share the batch (a melody job) runs after it."""
    with raw_worker(engine_settings) as (conn, _):
        conn.send(SubmitBatch((BatchJob("long", short_request(duration=4)),), str(tmp_path)))
        events: list[object] = []
        receive_until(
            conn, events, lambda got: any(isinstance(e, Progress) and e.job_id == "long" for e in got)
        )
        melody = short_request(model_version="melody")
        conn.send(SubmitBatch((BatchJob("melody", melody),), str(tmp_path), join=True))
        conn.send(SubmitBatch((BatchJob("joins", short_request(seed=5)),), str(tmp_path), join=True))
        receive_until(conn, events, ended("melody"))

        order = [(type(e).__name__, e.job_id) for e in events if isinstance(e, Started | GenerationResult)]
        assert order == [
            ("Started", "long"),
            ("Started", "joins"),
            ("GenerationResult", "joins"),
            ("GenerationResult", "long"),
            ("Started", "melody"),
            ("GenerationResult", "melody"),
        ]
        long_steps = [e.steps_done for e in events if isinstance(e, Progress) and e.job_id == "long"]
        assert long_steps[-1] == 4 * 50 + 3  # "long" ran to its own end with a neighbour joining
        for name, seconds in (("joins", 1), ("long", 4), ("melody", 1)):
            assert soundfile.info(tmp_path / f"{name}.wav").duration == pytest.approx(seconds)


async def test_workers_run_below_the_bot_s_priority(
    client: InferenceClient, engine_settings: EngineSettings
) -> None:
    # A busy model must never keep the bot's event loop (at the normal priority) off the CPU.
    assert engine_settings.engine.worker_nice == 10
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    pids = client.worker_pids
    assert pids
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [min(ours + 10, 19)] * len(pids)
