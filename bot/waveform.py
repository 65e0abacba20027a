"""A small picture of a result: its waveform, with parts of the piece marked (who added what).

Drawn from the samples with numpy and Pillow in the bot process; it blocks, so call it with
`asyncio.to_thread`. The PNG is attached to the result message and shown in its embed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inference.ffmpeg import decode_audio_file

__all__ = ["MarkedPart", "waveform_png", "waveform_png_of_file"]

WIDTH, HEIGHT = 640, 120
# Plenty for a picture 640 pixels wide, and cheap to decode.
PICTURE_SAMPLE_RATE = 8000
BACKGROUND = (30, 31, 34)
WAVE = (88, 101, 242)  # Discord's blurple, like the result embeds
# Backgrounds and waves of marked parts, in turn.
PART_COLOURS = ((43, 45, 49), (36, 52, 47), (52, 40, 56), (56, 49, 36))
PART_WAVES = ((88, 101, 242), (59, 165, 93), (235, 69, 158), (250, 168, 26))
LABEL = (220, 221, 222)


@dataclass(frozen=True)
class MarkedPart:
    """A stretch of the piece to mark: a jam member's turn, or "original" / "new" of a continuation."""

    start_s: float
    end_s: float
    label: str


def _column_extremes(mono: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel column, the lowest and highest sample it covers."""
    edges = np.linspace(0, mono.shape[0], width + 1).astype(int)
    lows = np.zeros(width, dtype=np.float32)
    highs = np.zeros(width, dtype=np.float32)
    for column in range(width):
        chunk = mono[edges[column] : max(edges[column + 1], edges[column] + 1)]
        if chunk.size:
            lows[column], highs[column] = chunk.min(), chunk.max()
    return lows, highs


def waveform_png(
    samples: np.ndarray,
    sample_rate: int,
    *,
    parts: Sequence[MarkedPart] = (),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> bytes:
    """The waveform of `samples` ([T] or [T, C]) as PNG bytes, each of `parts` shaded and labelled."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    seconds = max(mono.shape[0] / sample_rate, 1e-9)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    column_colour = [WAVE] * width
    for index, part in enumerate(parts):
        left = max(0, round(part.start_s / seconds * width))
        right = min(width, round(part.end_s / seconds * width))
        if right <= left:
            continue
        draw.rectangle((left, 0, right - 1, height - 1), fill=PART_COLOURS[index % len(PART_COLOURS)])
        column_colour[left:right] = [PART_WAVES[index % len(PART_WAVES)]] * (right - left)
    peak = float(np.abs(mono).max()) if mono.size else 0.0
    scale = (height / 2 - 4) / peak if peak > 1e-6 else 0.0
    lows, highs = _column_extremes(mono, width)
    middle = height / 2
    for column in range(width):
        top = round(middle - highs[column] * scale)
        bottom = round(middle - lows[column] * scale)
        draw.line((column, top, column, max(bottom, top)), fill=column_colour[column])
    font = ImageFont.load_default()
    for part in parts:
        left = max(0, round(part.start_s / seconds * width))
        if left < width - 8:
            draw.text((left + 3, 2), part.label[:40], fill=LABEL, font=font)
    for part in parts[1:]:
        boundary = round(part.start_s / seconds * width)
        if 0 < boundary < width:
            draw.line((boundary, 0, boundary, height - 1), fill=LABEL)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def waveform_png_of_file(
    path: str | Path,
    *,
    parts: Sequence[MarkedPart] = (),
    timeout_s: float = 30.0,
    max_seconds: float = 3600.0,
) -> bytes:
    """The waveform picture of an audio file (any format ffmpeg decodes)."""
    samples = decode_audio_file(
        path, sample_rate=PICTURE_SAMPLE_RATE, timeout_s=timeout_s, max_seconds=max_seconds
    )
    return waveform_png(samples, PICTURE_SAMPLE_RATE, parts=parts)
