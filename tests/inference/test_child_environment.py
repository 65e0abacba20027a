"""Children that parse untrusted files start without the bot's secrets."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.media.environment import child_environment
from inference.media.ffmpeg import decode_audio_file, ffmpeg_executable, probe_duration, use_ffmpeg


def test_secrets_are_left_out_and_what_children_need_is_kept() -> None:
    parent = {
        "DISCORD_TOKEN": "bot-token",
        "HF_TOKEN": "hf_secret",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "OPENAI_API_KEY": "sk",
        "DB_PASSWORD": "pw",
        "PATH": "/usr/bin",
        "HOME": "/home/bot",
        "HF_HOME": "/models",
        "HTTPS_PROXY": "http://proxy:3128",
        "no_proxy": "localhost",
        "CUDA_VISIBLE_DEVICES": "1",
        "LANG": "C.UTF-8",
        "SSH_AUTH_SOCK": "/tmp/agent",
    }
    child = child_environment(parent)
    assert child == {
        name: parent[name]
        for name in (
            "PATH",
            "HOME",
            "HF_HOME",
            "HTTPS_PROXY",
            "no_proxy",
            "CUDA_VISIBLE_DEVICES",
            "LANG",
            "SSH_AUTH_SOCK",
        )
    }


@pytest.fixture
def recording_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An `ffmpeg` (configured as `[engine] ffmpeg`) that writes the environment it was started with, then runs the real one."""
    real = ffmpeg_executable()
    record = tmp_path / "ffmpeg-environments.txt"
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    shim = shim_dir / "ffmpeg"
    shim.write_text(f'#!/bin/sh\nenv >> "{record}"\necho ---- >> "{record}"\nexec "{real}" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("DISCORD_TOKEN", "MTIz.discord-token-that-must-not-leak")
    monkeypatch.setenv("HF_TOKEN", "hf_must_not_leak_either")
    monkeypatch.setenv("HF_HOME", "/models/cache")
    assert use_ffmpeg(str(shim)) == str(shim)
    try:
        yield record
    finally:
        use_ffmpeg("")


def test_ffmpeg_decoding_an_upload_runs_without_the_tokens(recording_ffmpeg: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.wav"
    subprocess.run(
        [ffmpeg_executable(), "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=0.5", str(clip)],
        check=True,
    )
    recording_ffmpeg.write_text("")  # only the decoder's runs count
    assert probe_duration(clip) == pytest.approx(0.5, abs=0.01)
    assert decode_audio_file(clip, sample_rate=8000).shape[0] == 4000
    environments = recording_ffmpeg.read_text()
    assert environments.count("----") == 2
    assert "must-not-leak" not in environments and "hf_must_not_leak" not in environments
    assert "HF_HOME=/models/cache" in environments and "PATH=" in environments
