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


def wave_rows(image: Image.Image, column: int, colour: tuple[int, int, int] = WAVE) -> list[int]:
    """The rows of `column` drawn in the wave's colour."""
    return [y for y in range(image.height) if image.getpixel((column, y)) == colour]


def test_a_stereo_result_is_drawn_as_two_lanes_left_above_right() -> None:
    t = np.arange(16000) / 8000
    left = (0.8 * np.sin(2 * np.pi * 400 * t)).astype(np.float32)
    right = np.where(t < 1.0, 0.0, 0.8 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    image = picture(np.stack([left, right], axis=1))

    # The first second: only the left channel plays, so the top lane is full and the bottom one flat.
    first_second = wave_rows(image, 100)
    assert min(first_second) < 10
    assert len([y for y in first_second if y >= 60]) <= 2  # the right lane's zero line
    # The second second: both play, each in its own half of the picture.
    both = wave_rows(image, 500)
    assert len([y for y in both if y < 60]) > 40 and len([y for y in both if y >= 60]) > 40


def test_both_lanes_share_one_scale_so_a_quieter_side_looks_quieter() -> None:
    t = np.arange(16000) / 8000
    tone = np.sin(2 * np.pi * 400 * t).astype(np.float32)
    image = picture(np.stack([0.8 * tone, 0.2 * tone], axis=1))
    top, bottom = wave_rows(image, 300), wave_rows(image, 300)
    top_height = len([y for y in top if y < 60])
    bottom_height = len([y for y in bottom if y >= 60])
    assert top_height > 45 and 8 < bottom_height < 18  # a quarter of the level, a quarter of the height


def test_mono_audio_stays_one_lane_whether_it_comes_as_one_column_or_a_flat_array() -> None:
    t = np.arange(16000) / 8000
    mono = (0.8 * np.sin(2 * np.pi * 400 * t)).astype(np.float32)
    assert waveform_png(mono, 8000) == waveform_png(mono[:, None], 8000)
    rows = wave_rows(picture(mono), 300)
    assert min(rows) < 10 and max(rows) > 110  # one lane, the whole height
