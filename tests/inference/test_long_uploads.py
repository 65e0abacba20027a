"""Long uploads: only the part a request uses is decoded and kept, under a memory bound."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import inference.media.ffmpeg
from bot.config import BotConfig, Limits, load_config
from inference.engine.audio import load_audio
from inference.media.ffmpeg import AudioDecodeError, decode_audio_file, ffmpeg_executable

RATE = 8000


@pytest.fixture(scope="module")
def ten_minute_mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-minute stereo MP3 (the longest clip the bot accepts by default), made in a second by ffmpeg."""
    path = tmp_path_factory.mktemp("long") / "ten-minutes.mp3"
    subprocess.run(
        [ffmpeg_executable(), "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=220:duration=600",
         "-ac", "2", "-ar", "8000", "-b:a", "16k", str(path)],
        check=True,
    )  # fmt: skip
    return path


def test_a_melody_from_a_ten_minute_clip_decodes_only_the_thirty_seconds_it_follows(
    ten_minute_mp3: Path,
) -> None:
    clip = load_audio(ten_minute_mp3, sample_rate=RATE, channels=1, start_s=100.0)
    assert clip.shape == (1, 30 * RATE)
    assert clip.abs().max() > 0.05  # real audio from 100 s on, not padding


def test_a_window_near_the_end_stops_at_the_end_of_the_clip(ten_minute_mp3: Path) -> None:
    tail = load_audio(ten_minute_mp3, sample_rate=RATE, channels=2, start_s=590.0)
    assert tail.shape[0] == 2 and tail.shape[1] == pytest.approx(10 * RATE, abs=RATE // 20)


def test_the_decoder_keeps_only_the_window_asked_for(ten_minute_mp3: Path) -> None:
    window = decode_audio_file(ten_minute_mp3, sample_rate=RATE, start_s=300.0, end_s=301.5)
    assert window.shape == (int(1.5 * RATE), 2)


def test_an_ffmpeg_that_runs_out_of_its_memory_allowance_is_a_clear_refusal(
    ten_minute_mp3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference.media.ffmpeg, "FFMPEG_MEMORY_LIMIT_BYTES", 8 << 20)
    with pytest.raises(AudioDecodeError, match=r"^Couldn.t read that audio file"):
        decode_audio_file(ten_minute_mp3, sample_rate=RATE, end_s=1.0)


def test_the_worker_gets_the_bots_clip_length_limit(tmp_path: Path) -> None:
    # (Both stay above [jam] max_seconds, which may not exceed the clip limit.)
    assert BotConfig(limits=Limits(max_input_seconds=420)).engine_settings.engine.max_input_seconds == 420
    config_file = tmp_path / "config.toml"
    config_file.write_text("[limits]\nmax_input_seconds = 900\n")
    assert load_config(config_file).engine_settings.engine.max_input_seconds == 900
    from inference.settings import load_engine_settings

    assert load_engine_settings(config_file).engine.max_input_seconds == 900


@pytest.mark.parametrize("output_format", ["wav", "mp3"])
def test_a_result_written_to_a_full_disk_fails_and_leaves_no_partial_file(
    full_disk: Path, output_format: str
) -> None:
    import torch

    from inference.engine.audio import write_audio

    wav = torch.zeros(1, 32000)
    with pytest.raises((OSError, RuntimeError)):
        write_audio(wav, 32000, full_disk / "outputs" / "job-1", output_format)
    assert not list((full_disk / "outputs").glob("job-1*"))
