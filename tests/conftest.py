"""Shared test fixtures: tiny random-weight MusicGen checkpoints and engine settings that use them.

The models are built once per test session (a couple of seconds) under a session temp folder; torch
is imported lazily so tests that never touch a model (the bot side) do not pay for it.

The suite runs on pytest-xdist workers (`-n` in pyproject's addopts). Each test module stays on one
worker, so its module-scoped fixtures start once and its scenarios run in their written order; the
modules that start a Ray runtime run on one worker, so no two runtimes run at once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from filelock import FileLock

if TYPE_CHECKING:
    from inference.settings import EngineSettings

# No test may wait on the Hugging Face hub: tests build their checkpoints, and a hub id in a test stands
# for one that cannot be reached. Offline mode makes every hub access fail at once (on a refused
# connection huggingface_hub retries for 23 s), and the endpoint, a closed port on this machine, keeps
# anything that ignores offline mode off the network. Set before huggingface_hub is imported (it reads
# them once), and inherited by every worker and child process.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"

# The test modules that start a Ray runtime: they run on one xdist worker, one after the other (two
# runtimes at once on a 2-core machine starve each other past their timeouts).
RAY_TEST_MODULES = frozenset({"tests/inference/test_ray_backend.py", "tests/bot/test_ray_scenarios.py"})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` (pyproject's addopts), with the Ray modules as one unit of work.

    Each module goes whole to one worker, in its written order, so its module-scoped fixtures
    start once; units are handed out in collection order (`--no-loadscope-reorder`), which puts
    MODULES_RUN_FIRST first. (xdist's `loadgroup` would group by marks, but it does not see them
    under pytest 9.2, whose node ids it cannot suffix.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "ray" if module in RAY_TEST_MODULES else module

    return ModulesScheduling(config, log)


# The modules that take longest (a quarter of a minute and more) go first, so that none of them is
# left running alone at the end: Ray, processes killed and replaced, a compile with a cold inductor
# cache. After those, the scenarios that spend their time waiting (discord.py's retry and
# rate-limit pauses, timeouts run out on purpose) alternate with busy modules: waiting together they
# would leave the cores idle, beside a busy one they cost next to nothing.
MODULES_RUN_FIRST = (
    *sorted(RAY_TEST_MODULES),
    "tests/inference/test_batching.py",
    "tests/bot/test_long_clip_memory.py",
    "tests/bot/test_soak.py",
    "tests/bot/test_stereo_scenarios.py",
    "tests/bot/test_jam_scenarios.py",
    "tests/inference/test_checkpoints.py",
    "tests/bot/test_discord_fault_scenarios.py",
    "tests/bot/test_batch_scenarios.py",
    "tests/bot/test_every_entry_point.py",
    "tests/bot/test_restart_scenarios.py",
    "tests/bot/test_continue_scenarios.py",
    "tests/bot/test_deadline_scenarios.py",
    "tests/bot/test_jam_promises.py",
    "tests/bot/test_long_piece_scenarios.py",
    "tests/test_fake_discord_faults.py",
    "tests/inference/test_engine.py",
    "tests/bot/test_runtime_fault_scenarios.py",
    "tests/inference/test_stereo.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run MODULES_RUN_FIRST first, in their order (each module keeps its tests' order), and check
    that a module that starts a Ray runtime is one of RAY_TEST_MODULES and that every test runs on
    the session's event loop."""
    for item in items:
        module = _module_of(item)
        if "ray_cluster" in getattr(item, "fixturenames", ()) and module not in RAY_TEST_MODULES:
            raise pytest.UsageError(
                f"{module} starts a Ray runtime: add it to RAY_TEST_MODULES in tests/conftest.py"
            )
        _check_runs_on_the_session_loop(item)
    rank = {module: place for place, module in enumerate(MODULES_RUN_FIRST)}
    items.sort(key=lambda item: rank.get(_module_of(item), len(rank)))


def _check_runs_on_the_session_loop(item: pytest.Item) -> None:
    """Every async test and fixture runs on the session's one event loop (pyproject's asyncio
    settings). A client's tasks belong to the loop that started it: a test on another loop than its
    fixture's gets answers only while its own loop runs, and what is left pending stalls for good
    once that loop stops (a Ray client's batch did, and every later test of its module timed out)."""
    marker = item.get_closest_marker("asyncio")
    scopes = {"test": (marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")) if marker else None}
    if isinstance(item, pytest.Function):
        for name, definitions in item._fixtureinfo.name2fixturedefs.items():
            scopes[f"fixture {name}"] = getattr(definitions[-1].func, "_loop_scope", None)
    elsewhere = {what: scope for what, scope in scopes.items() if scope not in (None, "session")}
    if elsewhere:
        raise pytest.UsageError(f"{item.nodeid}: runs on another event loop than the session's: {elsewhere}")


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny transformers-format checkpoints: {"small": folder, "melody": folder}.

    Each folder also holds `text_encoder/` (T5 + tokenizer) and `encodec/` (EnCodec 32 kHz, random
    codebooks) sub-folders.
    """
    from inference.checkpoints.random_models import make_test_model

    root = built_once(
        tmp_path_factory,
        "tiny_models",
        lambda root: (
            make_test_model("small", root / "small", tiny=True, seed=0),
            make_test_model("melody", root / "melody", tiny=True, seed=1),
        ),
    )
    return {"small": root / "small", "melody": root / "melody"}


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder `build` fills the same way every time (seeded test models), made once per test run.

    The xdist workers of a run share it: the first to get here builds it under a lock, and the
    others wait and read it. Each worker building its own copy cost the start of the run a few
    seconds of CPU per worker.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's own temp folder, above each worker's
    folder, complete = root / name, root / f"{name}.complete"
    with FileLock(root / f"{name}.lock"):
        if not complete.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed half-way left
            folder.mkdir()
            build(folder)
            complete.touch()
    return folder


@pytest.fixture(scope="session")
def engine_settings(tiny_engine_settings: EngineSettings) -> EngineSettings:
    """The engine settings a test runs on: `tiny_engine_settings`, unless its module overrides this."""
    return tiny_engine_settings


@pytest.fixture(scope="session")
def tiny_engine_settings(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> EngineSettings:
    """Settings pointing every model version at the tiny checkpoints, on CPU in float32.

    small/medium/large share the tiny small model, melody is the tiny melody model, the compression
    model (encode-decode) and text encoder are the tiny small's parts, no fine-tune is configured,
    melody stem separation is off (demucs weights cannot be fetched) and conversions (and measured
    kernels) go to a temp folder.
    """
    from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR
    from inference.settings import EngineOptions, EngineSettings, MelodyOptions, ModelSources

    small = tiny_model_dirs["small"]
    return EngineSettings(
        models=ModelSources(
            small=str(small),
            medium=str(small),
            large=str(small),
            melody=str(tiny_model_dirs["melody"]),
            finetuned="",
            text_encoder=str(small / TEXT_ENCODER_DIR),
            compression=str(small / COMPRESSION_DIR),
            conversion_cache=str(tmp_path_factory.mktemp("converted")),
        ),
        # The fixed kernel rules rather than "auto": what a measurement picks on a busy machine must
        # not decide the suite's results (tests/inference/test_kernel_choice.py measures).
        engine=EngineOptions(
            device="cpu",
            dtype="float32",
            cpu_threads=1,
            model_cache_gb=4.0,
            cpu_matmul="rules",
            kernel_cache=str(tmp_path_factory.mktemp("kernels") / "cpu-kernels.json"),
        ),
        melody=MelodyOptions(stem_separation=False),
    )


@pytest.fixture(scope="session")
def tiny_stereo_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny stereo checkpoints, one of each format: {"stereo-small": a transformers folder laid out as
    facebook/musicgen-stereo-small (decoder audio_channels 2, 8 codebooks), "stereo-melody": an
    audiocraft export of audiocraft's stereo recipe (interleaved codebooks, channels 2), converted on
    first use}. Both keep the mono EnCodec in `encodec/` and their T5 in `text_encoder/`."""
    from inference.checkpoints.random_models import make_test_model

    root = built_once(
        tmp_path_factory,
        "tiny_stereo_models",
        lambda root: (
            make_test_model("small", root / "stereo-small", tiny=True, seed=10, stereo=True),
            make_test_model(
                "melody", root / "stereo-melody", tiny=True, seed=11, stereo=True, fmt="audiocraft"
            ),
        ),
    )
    return {"stereo-small": root / "stereo-small", "stereo-melody": root / "stereo-melody"}


@pytest.fixture(scope="session")
def stereo_engine_settings(
    engine_settings: EngineSettings, tiny_stereo_model_dirs: dict[str, Path]
) -> EngineSettings:
    """`engine_settings` with the stereo versions on the tiny stereo checkpoints: stereo-small,
    stereo-medium and stereo-large share the transformers one, stereo-melody and stereo-melody-large
    the audiocraft one. All the tiny models share one T5 architecture and one EnCodec layout, so the
    mono small model's `text_encoder` and `compression` serve the conversion."""
    small = str(tiny_stereo_model_dirs["stereo-small"])
    melody = str(tiny_stereo_model_dirs["stereo-melody"])
    models = engine_settings.models.model_copy(
        update={
            "stereo_small": small,
            "stereo_medium": small,
            "stereo_large": small,
            "stereo_melody": melody,
            "stereo_melody_large": melody,
        }
    )
    return engine_settings.model_copy(update={"models": models})


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray runtime for a module of RAY_TEST_MODULES: two CPUs, no dashboard, a small object store.

    Ray-backed clients started meanwhile find Ray initialised and use it (and leave it running). A
    Ray module followed by another (they run one after another, on one xdist worker) hands its
    runtime on instead of stopping it: starting one costs seconds of CPU.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            num_gpus=0,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            configure_logging=False,
        )
    yield
    if _next_module not in RAY_TEST_MODULES:
        ray.shutdown()


# The module of the test that runs next (None: none does), for fixtures that end with their module.
_next_module: str | None = None


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # Runs before pytest's own teardown, which ends the module's fixtures when the module changes.
    global _next_module
    _next_module = None if nextitem is None else _module_of(nextitem)
