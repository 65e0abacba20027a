"""The [jam] section of the configuration: shipped default, and a longest piece the turns can read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.config import BotConfig, load_config

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config.toml"


def test_the_shipped_config_documents_the_jams_longest_piece_with_its_default() -> None:
    shipped = load_config(SHIPPED_CONFIG)
    assert shipped.jam.max_seconds == BotConfig().jam.max_seconds == 300
    assert "max_seconds = 300" in SHIPPED_CONFIG.read_text()


def test_a_longest_jam_over_the_longest_input_clip_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[limits]\nmax_input_seconds = 120\n\n[jam]\nmax_seconds = 300\n")
    with pytest.raises(ValidationError, match="max_input_seconds"):
        load_config(config)
    config.write_text("[jam]\nmax_seconds = 120\n")
    assert load_config(config).jam.max_seconds == 120
