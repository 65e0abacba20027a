"""`python -m inference` as a person at a terminal uses it: generate a file, build a test model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import soundfile
from click.testing import CliRunner

from inference.__main__ import main
from inference.settings import EngineSettings


def write_config(settings: EngineSettings, path: Path) -> Path:
    """A config.toml with the test settings (TOML strings, numbers and booleans read as JSON ones)."""
    lines: list[str] = []
    for table, values in settings.model_dump().items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def config_file(engine_settings: EngineSettings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(engine_settings, tmp_path_factory.mktemp("cli") / "config.toml")


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_generate_writes_a_wav_of_the_asked_length_and_prints_the_seed(
    config_file: Path, tmp_path: Path
) -> None:
    request_flags = [
        "--config", str(config_file), "--model-version", "small", "--prompt", "warm piano",
        "--duration", "2", "--top-k", "50", "--temperature", "0.9", "--no-progress",
    ]  # fmt: skip
    output = tmp_path / "song.wav"
    code, text = run_cli("generate", *request_flags, "--output", str(output))

    assert code == 0, text
    seed = re.search(r"seed: (\d+)", text)
    assert seed is not None, text
    info = soundfile.info(output)
    assert (info.samplerate, info.frames, info.subtype) == (32_000, 64_000, "PCM_16")
    assert [p.name for p in tmp_path.iterdir()] == ["song.wav"]  # no scratch files left behind

    # The printed seed reproduces the same audio.
    again = tmp_path / "again.wav"
    code, text = run_cli("generate", *request_flags, "--output", str(again), "--seed", seed.group(1))
    assert code == 0, text
    assert f"seed: {seed.group(1)}" in text
    assert again.read_bytes() == output.read_bytes()


def test_the_output_extension_picks_mp3(config_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "song.mp3"
    code, text = run_cli(
        "generate",
        "--config",
        str(config_file),
        "--model-version",
        "small",
        "--prompt",
        "dark techno",
        "--duration",
        "1",
        "--normalization-strategy",
        "peak",
        "--output",
        str(output),
    )
    assert code == 0, text
    assert output.read_bytes()[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")
    assert soundfile.info(output).duration == pytest.approx(1.0, abs=0.1)


def test_make_test_model_writes_a_folder_that_generate_can_load(config_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-tiny-small"
    code, text = run_cli(
        "make-test-model", "--model-version", "small", "--tiny", "--out", str(folder), "--seed", "7"
    )
    assert code == 0, text
    assert (folder / "config.json").exists()

    output = tmp_path / "from-override.wav"
    code, text = run_cli(
        "generate",
        "--config",
        str(config_file),
        "--model-version",
        "small",
        "--model",
        str(folder),
        "--prompt",
        "jazz trio",
        "--duration",
        "1",
        "--output",
        str(output),
        "--no-progress",
    )
    assert code == 0, text
    assert soundfile.info(output).frames == 32_000


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt", "x", "--duration", "121"], "Duration must be between 1 and 120"),
        (["--prompt", "x", "--top-p", "1.5"], "top_p must be between 0 and 1"),
        (["--prompt", "x", "--top-k", "many"], "'many' is not a valid integer"),
        (["--prompt", "x", "--model-version", "huge"], "'huge' is not one of"),
        (["--duration", "4"], "Give a prompt, input audio, or both"),
        (["--prompt", "x", "--output", "a.wav", "--output-format", "mp3"], "make them agree"),
    ],
)
def test_bad_flags_get_a_friendly_message_and_a_nonzero_exit(
    config_file: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    code, text = run_cli("generate", "--config", str(config_file), *flags)
    assert code == 2
    assert message in text
    assert "Traceback" not in text


def test_an_error_only_the_model_can_see_is_friendly_too(config_file: Path, tmp_path: Path) -> None:
    clip = tmp_path / "melody.wav"
    soundfile.write(clip, [0.1, -0.1] * 16_000, 32_000)
    code, text = run_cli(
        "generate",
        "--config",
        str(config_file),
        "--model-version",
        "small",
        "--prompt",
        "x",
        "--input-audio",
        str(clip),
        "--duration",
        "1",
        "--output",
        str(tmp_path / "out.wav"),
    )
    assert code == 2
    assert "melody" in text.lower()
    assert "Traceback" not in text
