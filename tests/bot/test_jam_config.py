"""The [jam] section of the configuration: a longest piece the turns can read back (the shipped
default is checked with every other in tests/test_shipped_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.config import load_config


def test_a_longest_jam_over_the_longest_input_clip_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[limits]\nmax_input_seconds = 120\n\n[jam]\nmax_seconds = 300\n")
    with pytest.raises(ValidationError, match="max_input_seconds"):
        load_config(config)
    config.write_text("[jam]\nmax_seconds = 120\n")
    assert load_config(config).jam.max_seconds == 120
