"""Shared test fixtures: tiny random-weight MusicGen checkpoints and engine settings that use them.

The models are built once per test session (a couple of seconds) under a session temp folder; torch
is imported lazily so tests that never touch a model (the bot side) do not pay for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from inference.settings import EngineSettings


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny transformers-format checkpoints: {"small": folder, "melody": folder}.

    Each folder also holds `text_encoder/` (T5 + tokenizer) and `encodec/` (EnCodec 32 kHz, random
    codebooks) sub-folders.
    """
    from inference.checkpoints.random_models import make_test_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "small": make_test_model("small", root / "small", tiny=True, seed=0),
        "melody": make_test_model("melody", root / "melody", tiny=True, seed=1),
    }


@pytest.fixture(scope="session")
def engine_settings(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> EngineSettings:
    """Settings pointing every model version at the tiny checkpoints, on CPU in float32.

    small/medium/large share the tiny small model, melody is the tiny melody model, the compression
    model (encode-decode) and text encoder are the tiny small's parts, no fine-tune is configured,
    melody stem separation is off (demucs weights cannot be fetched) and conversions go to a temp folder.
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
        engine=EngineOptions(device="cpu", dtype="float32", cpu_threads=1, model_cache_gb=4.0),
        melody=MelodyOptions(stem_separation=False),
    )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray runtime for one test module: two CPUs, no dashboard, a small object store.

    Ray-backed clients started meanwhile find Ray initialised and use it (and leave it running).
    """
    import ray

    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
