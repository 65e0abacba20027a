"""One worker per device, and which free worker takes a batch.

The choices are pure logic (`inference.backends.placement`), tested without processes; then two real workers
pinned by `[worker] devices = ["cpu", "cpu"]` show that both start on their device, both run jobs,
and a batch goes to the worker that already ran its model.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.config import WorkerOptions
from inference.backends.base import JobSubmission
from inference.backends.local import InferenceClient
from inference.backends.placement import (
    FreeWorker,
    choose_worker,
    needs_gpu_count,
    visible_gpu_count,
    worker_devices,
)
from inference.request import GenerationRequest, ModelVersion
from inference.settings import EngineSettings

JOB_TIMEOUT_S = 120.0


# -- which devices ---------------------------------------------------------------------------------
def test_auto_starts_one_worker_per_visible_gpu() -> None:
    assert worker_devices("auto", [], "auto", gpu_count=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert worker_devices("auto", [], "cuda", gpu_count=2) == ["cuda:0", "cuda:1"]


def test_auto_starts_one_worker_on_a_machine_without_gpu() -> None:
    assert worker_devices("auto", [], "auto", gpu_count=0) == ["cpu"]
    assert worker_devices("auto", [], "cpu", gpu_count=4) == ["cpu"]


def test_an_engine_device_that_names_a_card_pins_every_worker_to_it() -> None:
    assert worker_devices("auto", [], "cuda:1", gpu_count=4) == ["cuda:1"]
    assert worker_devices(2, [], "cuda:1", gpu_count=4) == ["cuda:1", "cuda:1"]


def test_a_number_of_workers_is_spread_over_the_gpus_in_turn() -> None:
    assert worker_devices(3, [], "auto", gpu_count=2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(2, [], "auto", gpu_count=0) == ["auto", "auto"]
    assert worker_devices(1, [], "auto", gpu_count=0) == ["auto"]


def test_an_explicit_device_list_wins() -> None:
    assert worker_devices("auto", ["cpu", "cpu"], "auto", gpu_count=8) == ["cpu", "cpu"]
    assert worker_devices(1, ["cuda:1", "cuda:0"], "auto", gpu_count=2) == ["cuda:1", "cuda:0"]


def test_the_gpus_are_counted_only_when_the_answer_matters() -> None:
    assert needs_gpu_count("auto", [], "auto")
    assert needs_gpu_count(2, [], "cuda")
    assert not needs_gpu_count(1, [], "auto")  # one worker on "auto" picks its device itself
    assert not needs_gpu_count("auto", [], "cpu")
    assert not needs_gpu_count("auto", ["cpu"], "auto")


def test_the_worker_config_takes_auto_a_device_list_and_refuses_a_contradiction() -> None:
    assert WorkerOptions(processes="auto").processes == "auto"
    assert WorkerOptions(devices=["cpu", "cpu"]).devices == ["cpu", "cpu"]
    assert WorkerOptions(processes="auto", devices=["cuda:0", "cuda:1"]).devices == ["cuda:0", "cuda:1"]
    with pytest.raises(ValidationError, match="devices lists 2"):
        WorkerOptions(processes=3, devices=["cuda:0", "cuda:1"])
    with pytest.raises(ValidationError):
        WorkerOptions(processes="many")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        WorkerOptions(processes=0)
    with pytest.raises(ValidationError, match="empty"):
        WorkerOptions(devices=["cpu", " "])


# -- which free worker ----------------------------------------------------------------------------
def test_a_batch_goes_to_a_free_worker_that_holds_its_model() -> None:
    free = [FreeWorker("w1", ("melody",)), FreeWorker("w2", ("large", "small"))]
    assert choose_worker(free, "small").name == "w2"
    assert choose_worker(free, "melody").name == "w1"


def test_a_new_model_goes_to_the_free_worker_holding_the_fewest_models() -> None:
    free = [FreeWorker("w1", ("melody", "small")), FreeWorker("w2", ("large",)), FreeWorker("w3", ())]
    assert choose_worker(free, "medium").name == "w3"
    assert choose_worker(free[:2], "medium").name == "w2"


def test_ties_go_to_the_first_free_worker() -> None:
    assert choose_worker([FreeWorker("w1", ()), FreeWorker("w2", ())], "small").name == "w1"
    assert choose_worker([FreeWorker("w1", ("small",)), FreeWorker("w2", ("small",))], "small").name == "w1"
    with pytest.raises(ValueError):
        choose_worker([], "small")


# -- two real workers --------------------------------------------------------------------------------
def request_for(model_version: ModelVersion) -> GenerationRequest:
    return GenerationRequest(model_version=model_version, prompt="warm synth pads", duration=1, seed=5)


async def test_two_pinned_workers_both_run_jobs_and_keep_to_their_models(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    async with InferenceClient(engine_settings, devices=["cpu", "cpu"]) as client:
        assert client.worker_count == 2
        first, second = client.workers
        assert (first.device, first.ready_device) == ("cpu", "cpu")
        assert (second.device, second.ready_device) == ("cpu", "cpu")

        # Both free and empty: the first takes "small"; "melody" then goes to the one holding nothing.
        runs: list[tuple[str, ModelVersion]] = [
            ("s1", "small"),
            ("m1", "melody"),
            ("s2", "small"),
            ("m2", "melody"),
        ]
        for job_id, model_version in runs:
            result = await asyncio.wait_for(
                client.submit(job_id, request_for(model_version), tmp_path), JOB_TIMEOUT_S
            )
            assert Path(result.output_path).exists()
        first, second = client.workers
        assert first.models == ("small",) and first.jobs_run == 2
        assert second.models == ("melody",) and second.jobs_run == 2

        # Two batches at once: one per worker, both run.
        tasks = [
            *client.submit_batch([JobSubmission("s3", request_for("small"))], tmp_path),
            *client.submit_batch([JobSubmission("s4", request_for("small"))], tmp_path),
        ]
        assert client.busy_workers == 2
        results = await asyncio.wait_for(asyncio.gather(*tasks), JOB_TIMEOUT_S)
        assert [r.job_id for r in results] == ["s3", "s4"]
        first, second = client.workers
        assert (first.jobs_run, second.jobs_run) == (3, 3)
        # The worker that took the second "small" batch holds both models now, "small" most recently.
        assert second.models == ("small", "melody")


async def test_auto_starts_a_worker_on_each_gpu_torch_sees_or_one_on_the_cpu(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert visible_gpu_count() == gpus
    on_auto = engine_settings.model_copy(
        update={"engine": engine_settings.engine.model_copy(update={"device": "auto"})}
    )
    async with InferenceClient(on_auto, processes="auto") as client:
        expected = [f"cuda:{index}" for index in range(gpus)] or ["cpu"]
        assert [(w.device, w.ready_device) for w in client.workers] == [(d, d) for d in expected]
        result = await asyncio.wait_for(
            client.submit("auto-1", request_for("small"), tmp_path), JOB_TIMEOUT_S
        )
        assert Path(result.output_path).exists()
