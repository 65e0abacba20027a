"""Stitching a continuation: the context window, the level match, the join, and fitting an upload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bot.audio_edit import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    context_window,
    decode_clip,
    encode_to_fit,
    stitch_continuation,
    stitch_files,
    write_wav,
)
from inference.request import RequestError


def tone(seconds: float, frequency: float, amplitude: float, *, start_s: float = 0.0) -> np.ndarray:
    t = start_s + np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)[:, None]


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def test_a_long_source_is_continued_from_its_last_ten_seconds() -> None:
    window = context_window(45.0, 8, 10.0)
    assert (window.start_s, window.seconds, window.source_seconds) == (35.0, 10.0, 45.0)


def test_the_window_shrinks_to_leave_room_for_the_new_seconds_and_is_whole_frames() -> None:
    assert context_window(60.0, 25, 10.0).seconds == pytest.approx(5.0)
    short = context_window(3.013, 8, 10.0)  # the whole clip, cut to whole 20 ms frames
    context_samples = round(short.seconds * SAMPLE_RATE)
    assert context_samples % FRAME_SAMPLES == 0 and context_samples == 150 * FRAME_SAMPLES
    assert round(short.start_s * SAMPLE_RATE) + context_samples == round(3.013 * SAMPLE_RATE)


def test_a_clip_shorter_than_one_frame_cannot_be_continued() -> None:
    with pytest.raises(RequestError, match="too short"):
        context_window(0.01, 8, 10.0)


def test_the_piece_is_the_untouched_original_then_the_new_seconds_at_the_originals_level() -> None:
    original = tone(12.0, 220, 0.1)
    # The model re-decodes the last 10 s and adds 4 s; the job's normalization made it all 5x louder.
    redecoded = tone(10.0, 220, 0.5, start_s=2.0)
    new = tone(4.0, 330, 0.5)
    generated = np.concatenate([redecoded, new])

    piece = stitch_continuation(original, generated, new.shape[0])

    assert piece.shape == (original.shape[0] + new.shape[0], 1)
    fade = round(0.02 * SAMPLE_RATE)
    join = original.shape[0]
    np.testing.assert_array_equal(piece[: join - fade], original[: join - fade])
    assert rms(piece[join:]) == pytest.approx(rms(original[-new.shape[0] :]), rel=0.02)
    # No click: the step across the join is no larger than the tone's own steps.
    steps = np.abs(np.diff(piece[join - fade - 10 : join + 10, 0]))
    assert steps.max() < 1.5 * np.abs(np.diff(original[:, 0])).max()


def test_a_silent_original_leaves_the_new_part_as_the_model_made_it() -> None:
    original = np.zeros((SAMPLE_RATE, 1), dtype=np.float32)
    generated = np.concatenate([original, tone(2.0, 440, 0.3)])
    piece = stitch_continuation(original, generated, 2 * SAMPLE_RATE)
    np.testing.assert_allclose(piece[SAMPLE_RATE:], generated[SAMPLE_RATE:], atol=1e-6)


def test_stitching_files_writes_the_piece_and_the_new_part(tmp_path: Path) -> None:
    original = tone(3.0, 220, 0.2)
    generated = np.concatenate([tone(3.0, 220, 0.4), tone(2.0, 330, 0.4)])
    original_path = write_wav(original, tmp_path / "original.wav")
    generated_path = write_wav(generated, tmp_path / "out.wav")

    stitched = stitch_files(
        original_path,
        generated_path,
        tmp_path / "out-piece.wav",
        new_seconds=2,
        timeout_s=30,
        max_seconds=600,
    )

    piece = decode_clip(stitched.piece_path, channels=1, timeout_s=30, max_seconds=600)
    new_part = decode_clip(stitched.new_part_path, channels=1, timeout_s=30, max_seconds=600)
    assert piece.shape[0] == 5 * SAMPLE_RATE and new_part.shape[0] == 2 * SAMPLE_RATE
    assert (stitched.original_seconds, stitched.new_seconds) == (3.0, 2.0)
    # 16-bit WAV round trip: the original part is the original to within one quantization step.
    np.testing.assert_allclose(piece[: 2 * SAMPLE_RATE], original[: 2 * SAMPLE_RATE], atol=1 / 32767)


def test_a_wav_over_the_limit_becomes_an_mp3_at_a_bitrate_that_fits(tmp_path: Path) -> None:
    wav = write_wav(tone(20.0, 440, 0.3), tmp_path / "long.wav")  # 1.28 MB
    limit = 300_000  # 120 kbit/s for 20 s
    fitted = encode_to_fit(wav, limit)
    assert fitted is not None and fitted.format == "mp3" and fitted.path.stat().st_size <= limit
    assert fitted.bitrate_kbps == 96
    assert encode_to_fit(wav, 2_000_000) == type(fitted)(wav, "wav")
    assert encode_to_fit(wav, 10_000) is None  # not even 32 kbit/s fits


def test_a_context_that_was_not_whole_frames_still_lines_up_and_its_padding_is_left_out() -> None:
    original = tone(2.0, 220, 0.1)
    context_samples = SAMPLE_RATE + 3  # 1 s and 3 samples: EnCodec padded it to 51 frames
    padded = 51 * FRAME_SAMPLES
    redecoded = np.concatenate(
        [original[-context_samples:] * 4, np.zeros((padded - context_samples, 1), np.float32)]
    )
    new = tone(1.0, 330, 0.4)
    piece = stitch_continuation(
        original, np.concatenate([redecoded, new]), new.shape[0], context_samples=context_samples
    )
    assert piece.shape[0] == original.shape[0] + new.shape[0]
    fade = round(0.02 * SAMPLE_RATE)
    # Lined up: the crossfade mixes the same music, so it stays the original to within rounding.
    np.testing.assert_allclose(piece[: original.shape[0]], original, atol=1e-6)
    np.testing.assert_allclose(piece[original.shape[0] :], new / 4, atol=1e-6)
    assert fade > 0
