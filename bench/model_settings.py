"""Engine settings the benchmarks run on: every model version served by one random-weight model."""

from __future__ import annotations

import argparse
from pathlib import Path

from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR
from inference.settings import EngineOptions, EngineSettings, MelodyOptions, ModelSources


def add_model_dir_option(parser: argparse.ArgumentParser) -> None:
    """--model-dir, shared so that every benchmark builds its random-weight models in one place."""
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "data" / "bench-models",
        help="where the random-weight models are built once and reused",
    )


def random_model_settings(
    model_dir: Path,
    engine: EngineOptions,
    *,
    conversion_cache: Path | None = None,
    with_melody: bool = True,
) -> EngineSettings:
    """Engine settings serving small, medium, large (and melody, unless `with_melody` is False) from the
    one random-weight model `make_test_model` built in `model_dir`, with the T5 and EnCodec it keeps
    beside them; no stem separation. Converted checkpoints go to `conversion_cache` (by default
    "converted" next to the model)."""
    return EngineSettings(
        models=ModelSources(
            small=str(model_dir),
            medium=str(model_dir),
            large=str(model_dir),
            melody=str(model_dir) if with_melody else "",
            text_encoder=str(model_dir / TEXT_ENCODER_DIR),
            compression=str(model_dir / COMPRESSION_DIR),
            conversion_cache=str(conversion_cache or model_dir.parent / "converted"),
        ),
        engine=engine,
        melody=MelodyOptions(stem_separation=False),
    )
