"""The shipped config.toml documents every key of every table, each with its built-in default."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel

from bot.config import BotConfig, load_config
from inference.settings import EngineSettings, load_engine_settings

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"


def config_tables() -> dict[str, type[BaseModel]]:
    """Each config.toml table and the section that reads it: the bot's, then the engine's."""
    sections = {**BotConfig.model_fields, **EngineSettings.model_fields}
    del sections["engine_settings"]  # not a table: [models], [engine] and [melody] are its sections
    tables: dict[str, type[BaseModel]] = {}
    for table, section in sections.items():
        assert isinstance(section.annotation, type) and issubclass(section.annotation, BaseModel)
        tables[table] = section.annotation
    return tables


def test_the_shipped_config_holds_the_built_in_defaults() -> None:
    assert load_config(SHIPPED_CONFIG) == BotConfig()
    assert load_engine_settings(SHIPPED_CONFIG) == EngineSettings()


def test_the_shipped_config_lists_every_key_of_every_table() -> None:
    shipped = tomllib.loads(SHIPPED_CONFIG.read_text())
    expected = {table: set(section.model_fields) for table, section in config_tables().items()}
    # Not [engine] keys: `[limits] max_input_seconds` and `max_duration_s`, and `[worker] max_batch_size`,
    # copied into the engine's settings.
    expected["engine"] -= {"max_input_seconds", "max_duration_s", "max_batch_size"}
    assert {table: set(keys) for table, keys in shipped.items()} == expected
