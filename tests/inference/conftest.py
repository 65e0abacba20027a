"""Fixtures shared by the engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from inference.engine.musicgen_engine import MusicGenEngine
    from inference.settings import EngineSettings


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: the machine is shared, and a single thread also keeps CPU
    results bit-stable between runs."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def engine(engine_settings: EngineSettings) -> MusicGenEngine:
    """An engine on the tiny models, one per test module (its model cache warms up once there)."""
    from inference.engine.musicgen_engine import MusicGenEngine

    return MusicGenEngine(engine_settings)
