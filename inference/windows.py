"""Pieces longer than a model's window: audiocraft's windowed extension, counted in frames.

A MusicGen model generates at most its window, the `dataset.segment_duration` it was trained on (30 s
for every released model). audiocraft's `MusicGen._generate_tokens` (1.3.0) makes a longer piece
window by window, and so does the engine:

- the first window is generated whole (a continuation's clip is its prompt, and counts in it);
- each next window is prompted with the last `window - stride` of the codes made so far and adds
  `stride` new seconds (the last one only what is left), where `stride` is `[engine] extend_stride_s`
  (audiocraft's `extend_stride`, 18 s by default);
- a melody is read from the window's time offset on, for a whole window, and repeated when the clip
  is shorter (audiocraft slices the melody's samples `positions % length`).

This module holds that loop's arithmetic only (which windows, their prompts, their new frames, where
their melody starts). It imports no torch: the bot uses it to count a long job's steps and cost.
"""

from __future__ import annotations

from dataclasses import dataclass

# The window of every released MusicGen model (audiocraft's `max_duration`: their training segments).
RELEASED_MODEL_WINDOW_S = 30.0
# Frames per second of MusicGen's codes (EnCodec 32 kHz), for estimates made without a model.
FRAME_RATE = 50
# audiocraft's `MusicGen.extend_stride` default, `[engine] extend_stride_s`'s.
DEFAULT_EXTEND_STRIDE_S = 18.0


@dataclass(frozen=True)
class Window:
    """One window of a piece, in frames of the piece (the clip of a continuation counted in)."""

    # Where the window starts in the piece (audiocraft's `current_gen_offset`).
    offset: int
    # The frames it is prompted with: a continuation's clip for the first, else the end of the last.
    prompt_frames: int
    # The frames it spans, prompt included (audiocraft's `max_gen_len`).
    frames: int

    @property
    def new_frames(self) -> int:
        return self.frames - self.prompt_frames

    def melody_start_sample(self, *, frame_rate: int, sample_rate: int) -> int:
        """The first sample of the melody this window follows, rounded as audiocraft does
        (`int(time_offset * sample_rate)` with `time_offset = offset / frame_rate`)."""
        return int(self.offset / frame_rate * sample_rate)


def window_frames(window_s: float, frame_rate: int) -> int:
    """A window in frames, as audiocraft rounds it (`int(max_duration * frame_rate)`)."""
    return int(window_s * frame_rate)


def stride_frames(stride_s: float, frame_rate: int) -> int:
    """The stride in frames, as audiocraft rounds it (`int(frame_rate * extend_stride)`)."""
    return int(frame_rate * stride_s)


def plan_windows(*, prompt_frames: int, new_frames: int, window: int, stride: int) -> tuple[Window, ...]:
    """The windows that make `prompt_frames + new_frames` frames with a model of `window` frames,
    striding `stride` frames: audiocraft's `_generate_tokens` loop, counted in frames.

    One window when the piece fits in the model's; else the first is whole and each next one is
    prompted with the last `window - stride` frames of the one before. Raises ValueError for a
    stride that is not shorter than the window, or a prompt that leaves a window no new frame
    (audiocraft asserts both).
    """
    total = prompt_frames + new_frames
    if new_frames < 1 or prompt_frames < 0:
        raise ValueError(f"a piece needs new frames (got {new_frames}) and no negative prompt")
    if total <= window:
        return (Window(offset=0, prompt_frames=prompt_frames, frames=total),)
    if not 0 < stride < window:
        raise ValueError(f"the stride ({stride} frames) must be shorter than the window ({window} frames)")
    if prompt_frames >= window:
        raise ValueError(f"a prompt of {prompt_frames} frames fills the whole window of {window} frames")
    windows = []
    offset, prompt = 0, prompt_frames
    while offset + prompt < total:
        frames = min(total - offset, window)
        windows.append(Window(offset=offset, prompt_frames=prompt, frames=frames))
        prompt = frames - stride
        offset += stride
    return tuple(windows)


def decoder_steps(windows: tuple[Window, ...], *, delay_steps: int) -> int:
    """Decoder steps of every window together: each window's new frames plus the steps the delay
    pattern adds (`delay_steps`: the codebooks of one channel, less one)."""
    return sum(each.new_frames + delay_steps for each in windows)


def window_count(
    piece_s: float, *, window_s: float = RELEASED_MODEL_WINDOW_S, stride_s: float = DEFAULT_EXTEND_STRIDE_S
) -> int:
    """How many windows make a piece of `piece_s` seconds (a continuation's clip counted in): an
    estimate for the bot, at MusicGen's frame rate. 1 for a piece the model cannot extend."""
    window, stride = window_frames(window_s, FRAME_RATE), stride_frames(stride_s, FRAME_RATE)
    new_frames = max(1, round(piece_s * FRAME_RATE))
    if new_frames > window and not 0 < stride < window:
        return 1
    return len(plan_windows(prompt_frames=0, new_frames=new_frames, window=window, stride=stride))
