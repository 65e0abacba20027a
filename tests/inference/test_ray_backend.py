"""The Ray back end as the bot uses it: batches on replicas (Ray actors) of a local cluster of CPU
replicas, files coming back as bytes, progress, cancelling one job of a batch, a replica killed.

One Ray runtime and one client (one replica on the tiny models) are shared by the module: starting
Ray and a replica that imports torch takes seconds on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import ray
import soundfile

from inference.backends.base import JobSubmission, ProgressCallback
from inference.backends.ray import FinishedFile, InputFile, RayInferenceClient
from inference.errors import GenerationCancelled, WorkerCrashed, WorkerStartError
from inference.protocol import BatchJob
from inference.request import GenerationRequest, RequestError
from inference.settings import EngineSettings
from tests.waiting import until

# Hang guards only (tests never assert timings).
JOB_TIMEOUT_S = 180.0
# Long enough that a job is still running when the test reacts to its first progress event.
LONG_DURATION_S = 30


def short_request(**changes: object) -> GenerationRequest:
    return GenerationRequest(model_version="small", prompt="calm acoustic guitar", duration=1).replace(
        **changes
    )


def replica_pids(client: RayInferenceClient) -> list[int]:
    return [ray.get(actor.pid.remote()) for actor in client.replica_actors]


def replica_scratch_folders(pid: int) -> list[Path]:
    """The temporary folders of the replica with this pid on this machine (one killed mid-batch leaves
    its own). Only that replica's: another test run on the machine has replicas of its own."""
    return list(Path(tempfile.gettempdir()).glob(f"musicgen-replica-{pid}-*"))


@pytest_asyncio.fixture(scope="module")
async def client(
    ray_cluster: None, stereo_engine_settings: EngineSettings
) -> AsyncIterator[RayInferenceClient]:
    # The mono versions on the tiny models, and the stereo ones beside them (loaded only when asked for).
    async with RayInferenceClient(stereo_engine_settings, replicas=1, num_cpus=1) as inference_client:
        yield inference_client


async def replica_freed(client: RayInferenceClient) -> None:
    """The one replica is idle again: outcomes are answered as jobs end, and the replica's batch is
    cleared just after the last one (once its `run_batch` call has returned, its scratch folder
    removed), so this waits rather than racing it."""
    await until(lambda: client.idle_workers == 1 and client.busy_workers == 0, "the replica is free", 30)


async def test_a_batch_runs_on_a_replica_and_its_files_are_written_on_the_bot_s_side(
    client: RayInferenceClient, tmp_path: Path
) -> None:
    progress: dict[str, list[tuple[int, int]]] = {"ray-a": [], "ray-b": []}

    def recorder(job_id: str) -> ProgressCallback:
        async def on_progress(steps_done: int, steps_total: int) -> None:
            progress[job_id].append((steps_done, steps_total))

        return on_progress

    output_dir = tmp_path / "outputs"  # not there yet: the client makes it
    (pid,) = replica_pids(client)
    tasks = client.submit_batch(
        [
            JobSubmission("ray-a", short_request(seed=1), recorder("ray-a")),
            JobSubmission("ray-b", short_request(duration=2, seed=2), recorder("ray-b")),
        ],
        output_dir,
    )
    first, second = await asyncio.wait_for(asyncio.gather(*tasks), JOB_TIMEOUT_S)

    assert (first.job_id, first.seed, second.job_id, second.seed) == ("ray-a", 1, "ray-b", 2)
    for result, seconds in ((first, 1), (second, 2)):
        assert Path(result.output_path).parent == output_dir
        info = soundfile.info(result.output_path)
        assert info.samplerate == result.sample_rate == 32_000
        assert info.frames == seconds * 32_000
    assert sorted(path.name for path in output_dir.iterdir()) == ["ray-a.wav", "ray-b.wav"]
    for job_id, events in progress.items():
        assert events, f"no progress for {job_id}"
        steps_done = [done for done, _ in events]
        assert steps_done == sorted(steps_done)
        assert events[-1][0] == events[-1][1]
    # The replica's own copies are gone once the batch is over (outcomes come back as each job ends,
    # a moment before the replica's batch call returns and removes them).
    await replica_freed(client)
    assert replica_scratch_folders(pid) == []


async def test_in_a_batch_a_bad_request_fails_alone_a_cancelled_job_stops_and_the_other_finishes(
    client: RayInferenceClient, tmp_path: Path
) -> None:
    pids_before = replica_pids(client)
    cancel_sent: list[bool] = []

    async def cancel_on_first_progress(steps_done: int, steps_total: int) -> None:
        if not cancel_sent:
            cancel_sent.append(await client.cancel("ray-cancel-me"))

    good, bad, cancelled = client.submit_batch(
        [
            JobSubmission("ray-good", short_request(duration=2, seed=11)),
            # 1000 s bypasses GenerationRequest.validate(); the engine refuses it.
            JobSubmission("ray-too-long", short_request(duration=1000, seed=12)),
            JobSubmission(
                "ray-cancel-me", short_request(duration=LONG_DURATION_S, seed=13), cancel_on_first_progress
            ),
        ],
        tmp_path,
    )
    done, _ = await asyncio.wait([good, bad, cancelled], timeout=JOB_TIMEOUT_S)
    assert len(done) == 3, "a job of the batch never ended"

    assert good.result().seed == 11
    with pytest.raises(RequestError, match="120"):
        bad.result()
    with pytest.raises(GenerationCancelled):
        cancelled.result()
    assert cancel_sent == [True]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ray-good.wav"]
    assert await client.cancel("ray-cancel-me") is False  # finished jobs are unknown to the client
    assert replica_pids(client) == pids_before


async def test_jobs_join_the_batch_a_replica_runs_and_each_comes_back_when_it_ends(
    client: RayInferenceClient, tmp_path: Path
) -> None:
    decoding = asyncio.Event()

    async def on_progress(steps_done: int, steps_total: int) -> None:
        decoding.set()

    (long,) = client.submit_batch(
        [JobSubmission("ray-long", short_request(duration=4), on_progress)], tmp_path
    )
    await asyncio.wait_for(decoding.wait(), JOB_TIMEOUT_S)
    (short,) = client.join_batch(["ray-long"], [JobSubmission("ray-short", short_request(seed=5))], tmp_path)

    short_result = await asyncio.wait_for(short, JOB_TIMEOUT_S)
    assert not long.done()  # the joined job came back while the batch went on
    long_result = await asyncio.wait_for(long, JOB_TIMEOUT_S)
    for result, seconds in ((short_result, 1), (long_result, 4)):
        assert Path(result.output_path).parent == tmp_path
        assert soundfile.info(result.output_path).frames == seconds * 32_000
    # The batch is over: a late join waits for the replica as a batch of its own.
    (late,) = client.join_batch(["ray-long"], [JobSubmission("ray-late", short_request(seed=6))], tmp_path)
    assert (await asyncio.wait_for(late, JOB_TIMEOUT_S)).seed == 6
    await replica_freed(client)
    # A replica running no batch refuses a join (the client then queues those jobs as a batch).
    (actor,) = client.replica_actors
    idle_join = actor.join.remote((BatchJob("ray-refused", short_request()),), {})
    assert await asyncio.wait_for(asyncio.wrap_future(idle_join.future()), JOB_TIMEOUT_S) is False


async def test_a_job_waiting_for_the_busy_replica_can_be_cancelled_and_never_runs(
    client: RayInferenceClient, tmp_path: Path
) -> None:
    first_started = asyncio.Event()

    async def on_first_progress(steps_done: int, steps_total: int) -> None:
        first_started.set()

    first = asyncio.create_task(
        client.submit("ray-first", short_request(duration=3), tmp_path, on_progress=on_first_progress)
    )
    second = asyncio.create_task(client.submit("ray-second", short_request(), tmp_path))
    await asyncio.wait_for(first_started.wait(), JOB_TIMEOUT_S)
    assert client.idle_workers == 0 and client.busy_workers == 1

    assert await client.cancel("ray-second") is True
    with pytest.raises(GenerationCancelled, match="before it started"):
        await second
    assert Path((await asyncio.wait_for(first, JOB_TIMEOUT_S)).output_path).exists()
    assert not list(tmp_path.glob("ray-second*"))


async def test_a_replica_killed_mid_batch_fails_its_jobs_as_crashed_and_a_replacement_serves_the_next(
    client: RayInferenceClient, tmp_path: Path
) -> None:
    (old_actor,) = client.replica_actors
    (old_pid,) = replica_pids(client)
    killed: list[bool] = []

    async def kill_replica_on_first_progress(steps_done: int, steps_total: int) -> None:
        if not killed:
            killed.append(True)
            ray.kill(old_actor)  # what a lost node or the OOM killer does to it

    tasks = client.submit_batch(
        [
            JobSubmission(
                f"ray-crash-{index}", short_request(duration=LONG_DURATION_S), kill_replica_on_first_progress
            )
            for index in range(2)
        ],
        tmp_path,
    )
    done, _ = await asyncio.wait(tasks, timeout=JOB_TIMEOUT_S)
    assert len(done) == 2
    for task in tasks:
        with pytest.raises(WorkerCrashed, match="batch of 2"):
            task.result()

    # The next job waits for the replacement replica, then runs on it.
    result = await asyncio.wait_for(
        client.submit("ray-after-crash", short_request(), tmp_path), JOB_TIMEOUT_S
    )
    assert Path(result.output_path).parent == tmp_path
    (new_pid,) = replica_pids(client)
    assert new_pid != old_pid
    # The killed replica's temporary folder was removed by its replacement (on the same node here).
    assert replica_scratch_folders(old_pid) == []


async def test_the_watchdog_can_kill_the_replica_of_a_hung_job_and_a_replacement_takes_over(
    client: RayInferenceClient, tmp_path: Path
) -> None:
    (old_pid,) = replica_pids(client)
    started: list[str] = []
    kills: list[bool] = []

    async def kill_on_first_progress(steps_done: int, steps_total: int) -> None:
        if not kills:
            kills.append(client.kill_worker_of("ray-hung"))

    assert not client.kill_worker_of("ray-hung")  # unknown: nothing to kill
    (task,) = client.submit_batch(
        [
            JobSubmission(
                "ray-hung",
                short_request(duration=LONG_DURATION_S),
                kill_on_first_progress,
                on_started=lambda: started.append("ray-hung"),
            )
        ],
        tmp_path,
    )
    with pytest.raises(WorkerCrashed):
        await asyncio.wait_for(task, JOB_TIMEOUT_S)
    assert started == ["ray-hung"] and kills == [True]
    result = await asyncio.wait_for(client.submit("ray-after-kill", short_request(), tmp_path), JOB_TIMEOUT_S)
    assert Path(result.output_path).exists()
    (new_pid,) = replica_pids(client)
    assert new_pid != old_pid


async def test_a_replica_the_cluster_cannot_place_is_a_start_error_naming_the_missing_resources(
    ray_cluster: None, engine_settings: EngineSettings
) -> None:
    # The module's cluster has no GPU: the replica waits for one until the start timeout.
    unplaceable = RayInferenceClient(engine_settings, replicas=1, num_gpus=1, start_timeout_s=3)
    with pytest.raises(WorkerStartError, match="GPU"):
        await unplaceable.start()
    assert ray.is_initialized()  # the runtime it found is left to its owner


async def test_an_uploaded_clip_travels_to_the_replica_as_bytes(
    client: RayInferenceClient, tmp_path: Path
) -> None:
    clip = tmp_path / "tune.wav"
    seconds = np.arange(32_000 * 2) / 32_000
    soundfile.write(clip, 0.3 * np.sin(2 * np.pi * 440 * seconds), 32_000)
    melody = GenerationRequest(
        model_version="melody", prompt="a cover", input_audio=str(clip), duration=1, seed=7
    )

    # Through the client: it reads the clip on the bot's side and sends its bytes with the batch.
    result = await asyncio.wait_for(client.submit("ray-melody", melody, tmp_path / "out"), JOB_TIMEOUT_S)
    assert soundfile.info(result.output_path).frames == 32_000

    # What a replica on another node sees: a path that does not exist there, and the clip's bytes.
    (actor,) = client.replica_actors
    elsewhere = BatchJob("ray-melody-elsewhere", melody.replace(input_audio="/nowhere/on/this/node/tune.wav"))
    unpolled = await asyncio.wait_for(
        asyncio.wrap_future(
            actor.run_batch.remote(
                (elsewhere,), {elsewhere.job_id: InputFile(".wav", clip.read_bytes())}
            ).future()
        ),
        JOB_TIMEOUT_S,
    )
    # Nobody polled this batch's events: they all come back with it, the outcome last.
    outcome = unpolled[-1]
    assert isinstance(outcome, FinishedFile), outcome
    assert outcome.data == Path(result.output_path).read_bytes()  # same clip, prompt, seed: same music


# Started in a fresh interpreter with no Ray runtime: the client starts its own, then waits for a line.
OWN_RUNTIME_SCRIPT = """
import asyncio, sys
from inference.backends.ray import RayInferenceClient
from inference.settings import EngineSettings

async def main() -> None:
    settings = EngineSettings.model_validate_json(sys.argv[1])
    small = {"num_cpus": 1, "num_gpus": 0, "object_store_memory": 100 * 1024 * 1024}
    async with RayInferenceClient(settings, replicas=1, num_cpus=1, init_options=small):
        print("started", flush=True)
        await asyncio.to_thread(sys.stdin.readline)

asyncio.run(main())
"""


def test_the_runtime_the_client_starts_itself_listens_on_the_loopback_interface_only(
    engine_settings: EngineSettings,
) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    child = subprocess.Popen(
        [sys.executable, "-c", OWN_RUNTIME_SCRIPT, engine_settings.model_dump_json()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        ready, _, _ = select.select([child.stdout], [], [], JOB_TIMEOUT_S)
        assert ready and child.stdout.readline().strip() == "started", "the client did not start"
        listening = listening_addresses(child.pid)
    finally:
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(JOB_TIMEOUT_S)
    # The runtime's own servers and the replica's worker all listen, and only on 127.0.0.1.
    assert {"gcs_server", "raylet"} <= {name for name, _ in listening}, listening
    exposed = {
        (name, address) for name, address in listening if not ipaddress.ip_address(address).is_loopback
    }
    assert not exposed, f"listening beyond this machine: {sorted(exposed)}"
    assert child.returncode == 0


def listening_addresses(root_pid: int) -> set[tuple[str, str]]:
    """(process name, IP address) of every TCP socket that `root_pid` or a descendant listens on,
    read from /proc (IPv4-mapped IPv6 addresses given as IPv4)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The name may hold spaces and parentheses: the fields after the last ")" are fixed.
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
    tree, grew = {root_pid}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    owner_of_socket: dict[str, str] = {}
    for pid in tree:
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owner_of_socket[target.removeprefix("socket:[").removesuffix("]")] = name
    listening = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in owner_of_socket:  # 0A: LISTEN
                listening.add((owner_of_socket[inode], _address(local.split(":")[0])))
    return listening


def _address(hex_address: str) -> str:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in the host's byte order."""
    raw = b"".join(
        int(hex_address[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(hex_address), 8)
    )
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def test_the_worker_s_ray_keys_are_read_from_the_config_file_and_the_shipped_file_holds_the_defaults(
    tmp_path: Path,
) -> None:
    from bot.config import WorkerOptions, load_config

    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[worker]\nprocesses = 8\nbackend = "ray"\nray_address = "auto"\nray_num_gpus = 1\nray_num_cpus = 4\n'
    )
    worker = load_config(config_file).worker
    assert (worker.backend, worker.processes, worker.ray_address) == ("ray", 8, "auto")
    assert (worker.ray_gpus_per_replica, worker.ray_num_cpus) == (1.0, 4.0)
    assert WorkerOptions().ray_gpus_per_replica is None  # "auto": decided by the cluster's GPUs
    with pytest.raises(ValueError, match="ray_num_gpus"):
        WorkerOptions(ray_num_gpus=-1)

    shipped = Path(__file__).resolve().parents[2] / "config.toml"
    assert load_config(shipped).worker == WorkerOptions()


async def test_a_stereo_batch_runs_on_a_replica_and_comes_back_in_two_channels(
    client: RayInferenceClient, tmp_path: Path
) -> None:
    seconds = np.arange(32_000 * 2) / 32_000
    clip = tmp_path / "stereo-riff.wav"
    soundfile.write(
        clip,
        np.stack([0.3 * np.sin(2 * np.pi * 220 * seconds), 0.2 * np.sin(2 * np.pi * 330 * seconds)], axis=1),
        32_000,
    )
    text, continued = client.submit_batch(
        [
            JobSubmission("ray-stereo", short_request(model_version="stereo-small", seed=21)),
            # The clip travels as bytes and is continued in its own two channels.
            JobSubmission(
                "ray-stereo-continued",
                short_request(
                    model_version="stereo-small", input_audio=str(clip), continuation=True, seed=22
                ),
            ),
        ],
        tmp_path / "out",
    )
    results = await asyncio.wait_for(asyncio.gather(text, continued), JOB_TIMEOUT_S)

    for result, frames in zip(results, (32_000, 3 * 32_000), strict=True):
        samples, rate = soundfile.read(result.output_path, dtype="float32", always_2d=True)
        assert (samples.shape, rate) == ((frames, 2), 32_000)
        assert np.abs(samples[:, 0] - samples[:, 1]).max() > 0.01  # a left and a right of its own
    await replica_freed(client)
