"""The picture of a posted file is drawn as ffmpeg streams the file past: the same picture as from
its samples, without the bot holding a long piece's samples."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageChops

from bot.audio.waveform import PICTURE_SAMPLE_RATE, WAVE, MarkedPart, waveform_png, waveform_png_of_file
from inference.media.ffmpeg import decode_audio_file


def swelling_tone(seconds: float, rate: int) -> np.ndarray:
    """A tone whose loudness rises and falls a few times: a picture with a shape to compare."""
    t = np.arange(round(seconds * rate)) / rate
    envelope = 0.1 + 0.8 * np.abs(np.sin(np.pi * t / seconds * 3))
    return (envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def picture(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def test_a_short_files_picture_is_exactly_the_picture_of_its_samples(tmp_path: Path) -> None:
    path = tmp_path / "result.wav"
    left = swelling_tone(3.0, 32000)
    soundfile.write(path, np.stack([left, 0.5 * left], axis=1), 32000, subtype="PCM_16")
    parts = [MarkedPart(0.0, 2.0, "original"), MarkedPart(2.0, 3.0, "new")]

    from_file = waveform_png_of_file(path, parts=parts)

    samples = decode_audio_file(path, sample_rate=PICTURE_SAMPLE_RATE)
    assert from_file == waveform_png(samples, PICTURE_SAMPLE_RATE, parts=parts)


def test_a_ten_minute_piece_is_drawn_without_holding_its_samples(tmp_path: Path) -> None:
    path = tmp_path / "piece.wav"
    left = swelling_tone(600.0, 16000)
    soundfile.write(path, np.stack([left, -0.5 * left], axis=1), 16000, subtype="PCM_16")
    del left

    tracemalloc.start()
    try:
        from_file = waveform_png_of_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # Its samples at the picture's rate would be 38 MB as float32 (and 19 MB more mixed to mono);
    # streamed, it is a few 1 MB reads of ffmpeg's output at a time.
    assert peak < 12 << 20, f"{peak / 2**20:.1f} MiB"
    expected = picture(
        waveform_png(decode_audio_file(path, sample_rate=PICTURE_SAMPLE_RATE), PICTURE_SAMPLE_RATE)
    )
    differing = (
        ImageChops.difference(picture(from_file), expected).convert("L").point(lambda v: 255 if v else 0)
    )
    assert differing.histogram()[255] < 0.01 * 640 * 120  # summarised in blocks: nearly every pixel alike


def test_a_stereo_files_picture_has_a_lane_for_each_channel_and_a_mono_file_one(tmp_path: Path) -> None:
    tone = swelling_tone(2.0, 32000)
    stereo_path, mono_path = tmp_path / "stereo.wav", tmp_path / "mono.wav"
    soundfile.write(stereo_path, np.stack([tone, np.zeros_like(tone)], axis=1), 32000, subtype="PCM_16")
    soundfile.write(mono_path, tone, 32000, subtype="PCM_16")

    stereo, mono = picture(waveform_png_of_file(stereo_path)), picture(waveform_png_of_file(mono_path))

    def drawn_rows(image: Image.Image) -> set[int]:
        return {y for x in range(0, 640, 8) for y in range(120) if image.getpixel((x, y)) == WAVE}

    # The silent right channel is a flat line in the lower lane; the left fills the upper lane.
    assert min(drawn_rows(stereo)) < 10 and len({y for y in drawn_rows(stereo) if y >= 60}) <= 2
    assert max(drawn_rows(mono)) > 100 and min(drawn_rows(mono)) < 20
