"""A small picture of a result: its waveform, with parts of the piece marked (who added what).

Drawn with numpy and Pillow in the bot process from each pixel column's lowest and highest sample.
Mono audio is one lane; stereo audio is two, left above right, drawn to one scale so that a louder
side looks louder. A file is summarised as ffmpeg streams it past (`ColumnExtremes`, one per
channel), so a 10-minute piece costs the bot a few hundred kilobytes, not its samples. It blocks, so
call it with `asyncio.to_thread`. The PNG is attached to the result message and shown in its embed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bot.audio.files import decode_slot
from inference.media.ffmpeg import stream_audio_file

__all__ = ["ChannelExtremes", "ColumnExtremes", "MarkedPart", "waveform_png", "waveform_png_of_file"]

WIDTH, HEIGHT = 640, 120
# Plenty for a picture 640 pixels wide, and cheap to decode.
PICTURE_SAMPLE_RATE = 8000
BACKGROUND = (30, 31, 34)
WAVE = (88, 101, 242)  # Discord's blurple, like the result embeds
# Backgrounds and waves of marked parts, in turn.
PART_COLOURS = ((43, 45, 49), (36, 52, 47), (52, 40, 56), (56, 49, 36))
PART_WAVES = ((88, 101, 242), (59, 165, 93), (235, 69, 158), (250, 168, 26))
LABEL = (220, 221, 222)
# The line between the left and the right lane, and their names at the right edge.
LANE_DIVIDER = (78, 80, 88)
LANE_NAMES = ("L", "R")
# Blocks a summary keeps at most per pixel column: columns stay exact to 1/32 of their width.
BLOCKS_PER_COLUMN = 64


@dataclass(frozen=True)
class MarkedPart:
    """A stretch of the piece to mark: a jam member's turn, or "original" / "new" of a continuation."""

    start_s: float
    end_s: float
    label: str


class ColumnExtremes:
    """The lowest and highest sample of each block of a mono signal fed in pieces, for drawing it.

    Blocks start one sample long; whenever there are more than `capacity`, neighbours merge and
    blocks double, so a signal of any length is summarised in at most `capacity` blocks (a partial
    block waits at the end for the samples that complete it). Up to `capacity` samples this is the
    signal itself and the columns are exact.
    """

    def __init__(self, capacity: int = BLOCKS_PER_COLUMN * WIDTH) -> None:
        self.capacity = capacity - capacity % 2
        self.block = 1
        self.samples = 0
        self._lows: list[np.ndarray] = []
        self._highs: list[np.ndarray] = []
        self._blocks = 0
        # The last, incomplete block: its extremes and how many samples it has.
        self._carry: tuple[float, float, int] | None = None

    def add(self, mono: np.ndarray) -> None:
        mono = np.asarray(mono, dtype=np.float32).reshape(-1)
        self.samples += mono.shape[0]
        if self._carry is not None:
            low, high, count = self._carry
            taken = mono[: self.block - count]
            mono = mono[taken.shape[0] :]
            if taken.size:
                low, high, count = (
                    min(low, float(taken.min())),
                    max(high, float(taken.max())),
                    count + taken.size,
                )
            self._carry = None
            if count == self.block:
                self._append(np.array([low], np.float32), np.array([high], np.float32))
            else:
                self._carry = (low, high, count)
                return
        whole = mono.shape[0] - mono.shape[0] % self.block
        if whole:
            blocks = mono[:whole].reshape(-1, self.block)
            self._append(blocks.min(axis=1), blocks.max(axis=1))
        if whole < mono.shape[0]:
            rest = mono[whole:]
            self._carry = (float(rest.min()), float(rest.max()), rest.shape[0])
        while self._blocks > self.capacity:
            self._merge()

    def _append(self, lows: np.ndarray, highs: np.ndarray) -> None:
        self._lows.append(lows)
        self._highs.append(highs)
        self._blocks += lows.shape[0]

    def _merge(self) -> None:
        lows, highs = np.concatenate(self._lows), np.concatenate(self._highs)
        if lows.shape[0] % 2:
            # The odd block out is the start of a doubled block still being filled.
            low, high = float(lows[-1]), float(highs[-1])
            count = self.block
            if self._carry is not None:
                low, high, count = min(low, self._carry[0]), max(high, self._carry[1]), count + self._carry[2]
            self._carry = (low, high, count)
            lows, highs = lows[:-1], highs[:-1]
        self._lows = [lows.reshape(-1, 2).min(axis=1)]
        self._highs = [highs.reshape(-1, 2).max(axis=1)]
        self._blocks = self._lows[0].shape[0]
        self.block *= 2

    def columns(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Per pixel column, the lowest and highest sample it covers (0 for a column of nothing)."""
        lows = np.concatenate([*self._lows, np.zeros(0, np.float32)])
        highs = np.concatenate([*self._highs, np.zeros(0, np.float32)])
        if self._carry is not None:
            lows = np.append(lows, np.float32(self._carry[0]))
            highs = np.append(highs, np.float32(self._carry[1]))
        column_lows = np.zeros(width, dtype=np.float32)
        column_highs = np.zeros(width, dtype=np.float32)
        if not lows.size:
            return column_lows, column_highs
        # A column takes the blocks that start within its samples, or else the block its first
        # sample is in (a column narrower than a sample, or than a block).
        edges = np.linspace(0, self.samples, width + 1).astype(int)
        first_blocks = -(-edges // self.block)
        for column in range(width):
            start, stop = int(first_blocks[column]), int(first_blocks[column + 1])
            if stop <= start:
                start = int(edges[column]) // self.block
                stop = start + 1
            column_lows[column] = lows[start:stop].min()
            column_highs[column] = highs[start:stop].max()
        return column_lows, column_highs


class ChannelExtremes:
    """`ColumnExtremes` of each channel of audio fed in pieces of [samples] or [samples, channels]:
    one lane for mono, two for stereo (more channels are mixed down to one lane)."""

    def __init__(self) -> None:
        self.lanes: list[ColumnExtremes] = []

    def add(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32)
        channels = [samples] if samples.ndim == 1 else _lanes_of(samples)
        if not self.lanes:
            self.lanes = [ColumnExtremes() for _ in channels]
        for lane, channel in zip(self.lanes, channels, strict=True):
            lane.add(channel)

    @property
    def samples(self) -> int:
        return self.lanes[0].samples if self.lanes else 0


def _lanes_of(samples: np.ndarray) -> list[np.ndarray]:
    """The signals of a [samples, channels] block to draw: each channel of mono or stereo audio, else
    the mix."""
    if samples.shape[1] in (1, len(LANE_NAMES)):
        return [samples[:, channel] for channel in range(samples.shape[1])]
    return [samples.mean(axis=1)]


def _draw(
    extremes: ChannelExtremes,
    sample_rate: int,
    parts: Sequence[MarkedPart],
    width: int,
    height: int,
) -> bytes:
    seconds = max(extremes.samples / sample_rate, 1e-9)
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
    font = ImageFont.load_default()
    _draw_lanes(draw, [lane.columns(width) for lane in extremes.lanes], column_colour, height, font)
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


def _draw_lanes(
    draw: ImageDraw.ImageDraw,
    lanes: Sequence[tuple[np.ndarray, np.ndarray]],
    column_colour: Sequence[tuple[int, int, int]],
    height: int,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """Each lane's columns (lows, highs) in its own horizontal band, all to the loudest lane's scale."""
    if not lanes:
        return
    peak = max(
        float(max(np.abs(lows).max(initial=0.0), np.abs(highs).max(initial=0.0))) for lows, highs in lanes
    )
    lane_height = height / len(lanes)
    scale = (lane_height / 2 - 4) / peak if peak > 1e-6 else 0.0
    width = len(column_colour)
    for index, (lows, highs) in enumerate(lanes):
        middle = lane_height * (index + 0.5)
        for column in range(width):
            top = round(middle - highs[column] * scale)
            bottom = round(middle - lows[column] * scale)
            draw.line((column, top, column, max(bottom, top)), fill=column_colour[column])
    if len(lanes) == len(LANE_NAMES):
        divider = round(lane_height)
        draw.line((0, divider, width - 1, divider), fill=LANE_DIVIDER)
        for index, name in enumerate(LANE_NAMES):
            draw.text((width - 10, round(lane_height * (index + 1)) - 13), name, fill=LABEL, font=font)


def waveform_png(
    samples: np.ndarray,
    sample_rate: int,
    *,
    parts: Sequence[MarkedPart] = (),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> bytes:
    """The waveform of `samples` ([T] or [T, C]) as PNG bytes, each of `parts` shaded and labelled;
    stereo audio is drawn as two lanes, left above right."""
    extremes = ChannelExtremes()
    extremes.add(samples)
    return _draw(extremes, sample_rate, parts, width, height)


def waveform_png_of_file(
    path: str | Path,
    *,
    parts: Sequence[MarkedPart] = (),
    timeout_s: float = 30.0,
    max_seconds: float = 3600.0,
) -> bytes:
    """The waveform picture of an audio file (any format ffmpeg decodes), summarised as it streams;
    a stereo file is drawn as two lanes, left above right."""
    extremes = ChannelExtremes()
    with decode_slot():
        stream_audio_file(
            path,
            extremes.add,
            sample_rate=PICTURE_SAMPLE_RATE,
            timeout_s=timeout_s,
            max_seconds=max_seconds,
        )
    return _draw(extremes, PICTURE_SAMPLE_RATE, parts, WIDTH, HEIGHT)
