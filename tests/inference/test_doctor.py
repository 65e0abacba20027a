"""`doctor` as a new owner runs it after installing: `musicgen-bot doctor` and `python -m inference
doctor`, on this machine's CPU, against a config.toml pointing at the tiny test models.

Each run is the real round (host, torch, the tiny model in float32 on the CPU as the reference, the
served engine checked against it, timed): `--quick` keeps its generations to one second.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from bot.__main__ import doctor_plan
from bot.__main__ import main as bot_main
from bot.config import load_config
from inference.__main__ import main as inference_main
from inference.doctor import DoctorPlan
from inference.settings import EngineSettings

# The weight a damaged checkpoint has a NaN in: the decoder's last layer norm, which every logit reads.
DAMAGED_WEIGHT = "decoder.model.decoder.layer_norm.weight"


def write_config(settings: EngineSettings, path: Path, **tables: dict[str, Any]) -> Path:
    """A config.toml with the test engine settings, its data dir beside it, batches of 2, and the
    keys of `tables` on top (TOML strings, numbers and booleans read as JSON ones)."""
    config: dict[str, dict[str, Any]] = {
        "bot": {"data_dir": str(path.parent / "data")},
        "worker": {"max_batch_size": 2},
        **settings.model_dump(),
    }
    for table, values in tables.items():
        config[table] = {**config.get(table, {}), **values}
    lines: list[str] = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def config_file(engine_settings: EngineSettings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(engine_settings, tmp_path_factory.mktemp("doctor") / "config.toml")


def run(command: click.Command, *args: str) -> tuple[int, str]:
    """The exit code and what the command printed on stdout (its progress goes to stderr)."""
    result = CliRunner().invoke(command, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def verdicts(output: str) -> dict[str, tuple[str, str]]:
    """The table's lines: {check: (verdict, result)} (columns are at least two spaces apart)."""
    lines = output.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["check", "verdict", "result"], output
    table = lines[1 : lines.index("")]
    rows = [re.split(r"\s{2,}", line, maxsplit=2) for line in table]
    return {check: (verdict, result) for check, verdict, result in rows}


def advice(output: str) -> list[str]:
    """The lines under "What to change:"."""
    lines = output.splitlines()
    if "What to change:" not in lines:
        return []
    following = lines[lines.index("What to change:") + 1 :]
    return following[: following.index("")]


def test_a_healthy_machine_passes_every_check(
    engine_settings: EngineSettings, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # As shipped: the workers on whatever device "auto" finds (the CPU here), one per GPU.
    config = write_config(
        engine_settings, tmp_path / "config.toml", engine={"device": "auto"}, worker={"processes": "auto"}
    )

    code, output = run(bot_main, "--config", str(config), "doctor", "--quick")

    assert code == 0, output
    table = verdicts(output)
    assert table["config"] == ("info", str(config))
    assert table["devices"] == ("info", "workers on cpu")
    assert table["model"] == ("info", f"small: {tiny_model_dirs['small']}")
    for environment in ("CPU", "memory", "torch", "dtype on cpu", "Ray"):
        assert table[environment][0] == "info", output
    assert table["disk"][0] == table["ffmpeg"][0] == "ok", output
    assert table["dtype on cpu"][1].startswith("float32 (set: [engine] dtype = 'float32')")
    # The served engine (float32, the configured kernels) against float32 on the CPU.
    assert table["finite values on cpu"] == ("ok", "no NaN, no infinity")
    verdict, result = table["token agreement on cpu"]
    assert verdict == "ok", output
    assert re.fullmatch(
        r"\d+\.\d% of codes as float32 on the CPU picks them \(at least 90%, teacher-forced\)", result
    )
    assert table["loudness on cpu"][0] == table["spectrum on cpu"][0] == "ok"
    for timed in ("1 s job on cpu", "batch of 2 on cpu"):
        verdict, result = table[timed]
        assert verdict == "ok", output
        assert re.search(r"steps/s, RTF \d+\.\d\d.*, peak \d+\.\d\d GiB", result), result
    assert "FAIL" not in output
    assert advice(output) == []
    assert output.rstrip().endswith("Every check passed.")


def test_a_checkpoint_with_nan_weights_fails_and_says_to_replace_it(
    config_file: Path, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged-small"
    shutil.copytree(tiny_model_dirs["small"], damaged)
    weights = load_file(damaged / "model.safetensors")
    weights[DAMAGED_WEIGHT][0] = math.nan
    save_file(weights, damaged / "model.safetensors", metadata={"format": "pt"})

    # --model checks another folder than the configured one.
    code, output = run(
        inference_main, "doctor", "--config", str(config_file), "--quick", "--model", str(damaged)
    )

    assert code == 1, output
    table = verdicts(output)
    assert table["model"] == ("info", f"small: {damaged}")
    assert table["finite values on cpu"] == ("FAIL", "NaN or infinity in the logits or audio")
    assert table["timing on cpu"] == ("info", "not timed: its values are not finite")
    assert advice(output) == [
        "- finite values on cpu: the checkpoint gives NaN or infinite values even in float32 on the CPU, "
        "so its weights are damaged: download or convert it again (or point `[models]` at another)."
    ]
    assert output.rstrip().endswith("1 check(s) failed.")


def test_an_unreachable_ray_cluster_fails_and_says_what_to_start(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    config = write_config(
        engine_settings, tmp_path / "config.toml", worker={"backend": "ray", "ray_address": address}
    )

    code, output = run(bot_main, "--config", str(config), "doctor", "--quick")

    assert code == 1, output
    table = verdicts(output)
    verdict, result = table["Ray"]
    assert verdict == "FAIL"
    assert result.startswith(f"cannot reach the Ray cluster at {address} (")
    # The rest of the round still runs: the machine itself is fine.
    assert table["token agreement on cpu"][0] == "ok"
    assert [verdict for verdict, _ in table.values()].count("FAIL") == 1
    assert advice(output) == [
        "- Ray: start the cluster there (`ray start --head` on that node) or set `[worker] ray_address` "
        f'to the address it prints ("" starts Ray on this machine); {address} does not answer.'
    ]
    assert output.rstrip().endswith("1 check(s) failed.")


def test_both_commands_read_the_same_plan_from_a_config_file(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    config = write_config(
        engine_settings,
        tmp_path / "config.toml",
        bot={"default_model_version": "melody"},
        worker={
            "processes": "auto",
            "devices": ["cpu", "cpu"],
            "max_batch_size": 3,
            "backend": "ray",
            "ray_address": "10.0.0.1:6379",
            "ray_num_gpus": 0.5,
            "ray_num_cpus": 2.0,
        },
        storage={"min_free_mb": 123},
        limits={"max_duration_s": 60},
    )

    assert DoctorPlan.from_config_file(config) == doctor_plan(load_config(config), config)


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
