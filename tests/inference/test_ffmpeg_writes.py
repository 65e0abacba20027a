"""Whichever ffmpeg runs (the bundled one, or a system one where installed), what it writes to a full
disk fails loudly and leaves no partial file: an MP3 result, and the WAV a continuation's piece is
written into. Debian 12's ffmpeg 5.1 exits 0 after "Error writing trailer: No space left on device"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from inference.engine.audio import write_audio
from inference.media.ffmpeg import decode_to_wav, encode_mp3
from tests.ffmpeg_binaries import BINARIES, running_binary


@pytest.fixture(params=BINARIES)
def ffmpeg_binary(request: pytest.FixtureRequest) -> Iterator[str]:
    with running_binary(request.param) as executable:
        yield executable


def files_but_the_filler(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.name != "filler" and path.is_file())


def a_second_of_tone(folder: Path) -> Path:
    clip = folder / "tone.wav"
    t = np.arange(32000) / 32000
    soundfile.write(clip, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 32000, subtype="PCM_16")
    return clip


def test_an_mp3_result_written_to_a_full_disk_fails_and_leaves_no_partial_file(
    full_disk: Path, ffmpeg_binary: str
) -> None:
    with pytest.raises((OSError, RuntimeError)):
        write_audio(torch.zeros(1, 32000), 32000, full_disk / "job-1", "mp3")
    assert files_but_the_filler(full_disk) == []


def test_a_wav_reencoded_as_mp3_onto_a_full_disk_fails_and_leaves_no_partial_file(
    full_disk: Path, tmp_path: Path, ffmpeg_binary: str
) -> None:
    with pytest.raises(RuntimeError, match=r"incomplete|could not encode"):
        encode_mp3(full_disk / "piece.mp3", wav_file=a_second_of_tone(tmp_path), bitrate="128k")
    assert files_but_the_filler(full_disk) == []


def test_a_piece_written_to_a_full_disk_fails_and_leaves_no_partial_file(
    full_disk: Path, tmp_path: Path, ffmpeg_binary: str
) -> None:
    with pytest.raises(RuntimeError, match=r"could not write|incomplete|no samples"):
        decode_to_wav(a_second_of_tone(tmp_path), full_disk / "piece.wav", sample_rate=32000)
    assert files_but_the_filler(full_disk) == []


def test_with_room_on_the_disk_both_write_whole_files(tmp_path: Path, ffmpeg_binary: str) -> None:
    clip = a_second_of_tone(tmp_path)
    layout = decode_to_wav(clip, tmp_path / "piece.wav", sample_rate=32000)
    assert (layout.channels, layout.frames) == (1, 32000)
    mp3 = encode_mp3(tmp_path / "piece.mp3", wav_file=clip, bitrate="128k")
    assert mp3.stat().st_size >= 128_000 / 8 * 0.9
