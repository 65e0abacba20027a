"""The picture under each result: a waveform PNG, with the parts of a piece marked."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bot.audio.waveform import BACKGROUND, PART_COLOURS, PART_WAVES, WAVE, MarkedPart, waveform_png


def picture(samples: np.ndarray, parts: list[MarkedPart] | None = None) -> Image.Image:
    return Image.open(io.BytesIO(waveform_png(samples, 8000, parts=parts or []))).convert("RGB")


def test_a_loud_half_and_a_silent_half_draw_as_a_wave_then_a_flat_line() -> None:
    t = np.arange(16000) / 8000
    samples = np.where(t < 1.0, 0.8 * np.sin(2 * np.pi * 400 * t), 0.0).astype(np.float32)
    image = picture(samples)
    assert image.size == (640, 120)
    loud_column = [image.getpixel((100, y)) for y in range(120)]
    quiet_column = [image.getpixel((500, y)) for y in range(120)]
    assert sum(pixel == WAVE for pixel in loud_column) > 80  # nearly full height
    assert sum(pixel == WAVE for pixel in quiet_column) <= 2  # the zero line only
    assert image.getpixel((500, 5)) == BACKGROUND


def test_each_members_part_is_shaded_in_its_own_colours() -> None:
    samples = (0.5 * np.sin(np.arange(24000) / 10)).astype(np.float32)  # 3 s
    parts = [MarkedPart(0.0, 1.0, "alice"), MarkedPart(1.0, 3.0, "bob")]
    image = picture(samples, parts)
    assert image.getpixel((100, 118)) == PART_COLOURS[0] and image.getpixel((400, 118)) == PART_COLOURS[1]
    assert PART_WAVES[0] in [image.getpixel((100, y)) for y in range(120)]
    assert PART_WAVES[1] in [image.getpixel((400, y)) for y in range(120)]
