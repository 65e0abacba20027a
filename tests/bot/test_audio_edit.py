"""Stitching a continuation: the context window, the level match, the join, and fitting an upload."""

from __future__ import annotations

import itertools
import subprocess
import threading
import tracemalloc
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest

from bot.audio.editing import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    FittedFile,
    StitchedPiece,
    clip_seconds,
    context_window,
    decode_clip,
    encode_to_fit,
    stitch_continuation,
    stitch_files,
    write_wav,
)
from bot.audio.files import MAX_CONCURRENT_DECODES
from inference.media.ffmpeg import bundled_ffmpeg, decode_audio_file, ffmpeg_executable, read_wav_layout
from inference.request import RequestError
from tests.ffmpeg_binaries import running_with


def tone(seconds: float, frequency: float, amplitude: float, *, start_s: float = 0.0) -> np.ndarray:
    t = start_s + np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)[:, None]


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def stitch_written(
    original: np.ndarray,
    generated: np.ndarray,
    folder: Path,
    *,
    new_seconds: int,
    original_name: str = "original.wav",
) -> StitchedPiece:
    """Write the member's clip (as `original_name`) and the model's output (as out.wav) into `folder`,
    and stitch them as the bot does, into out-piece.wav."""
    original_path = write_wav(original, folder / original_name)
    generated_path = write_wav(generated, folder / "out.wav")
    return stitch_files(
        original_path,
        generated_path,
        folder / "out-piece.wav",
        new_seconds=new_seconds,
        timeout_s=30,
        max_seconds=600,
    )


def decoded(path: Path, *, channels: int) -> np.ndarray:
    return decode_clip(path, channels=channels, timeout_s=30, max_seconds=600)


def test_a_long_source_is_continued_from_its_last_ten_seconds() -> None:
    window = context_window(45.0, 10.0)
    assert (window.start_s, window.seconds, window.source_seconds) == (35.0, 10.0, 45.0)


def test_the_context_is_whole_frames_of_the_clip_however_many_seconds_are_added() -> None:
    # The new seconds no longer have to fit in the model's 30 s with it: past the window the piece
    # is made window by window, so the context keeps its length.
    assert context_window(60.0, 10.0).seconds == pytest.approx(10.0)
    short = context_window(3.013, 10.0)  # the whole clip, cut to whole 20 ms frames
    context_samples = round(short.seconds * SAMPLE_RATE)
    assert context_samples % FRAME_SAMPLES == 0 and context_samples == 150 * FRAME_SAMPLES
    assert round(short.start_s * SAMPLE_RATE) + context_samples == round(3.013 * SAMPLE_RATE)


def test_a_clip_shorter_than_one_frame_cannot_be_continued() -> None:
    with pytest.raises(RequestError, match="too short"):
        context_window(0.01, 10.0)


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

    stitched = stitch_written(original, generated, tmp_path, new_seconds=2)

    piece = decoded(stitched.piece_path, channels=1)
    new_part = decoded(stitched.new_part_path, channels=1)
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


# -- stereo originals (finding 9) ---------------------------------------------------------------


def stereo(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.concatenate([left, right], axis=1)


def test_a_stereo_clip_whose_channels_cancel_out_is_posted_in_stereo_as_it_was(tmp_path: Path) -> None:
    left = tone(3.0, 220, 0.3)
    original = stereo(left, -left)  # its mono mixdown is silence
    # A mono model heard that silence; what it adds is its own.
    new = tone(2.0, 330, 0.4)
    generated = np.concatenate([np.zeros_like(left), new])

    stitched = stitch_written(original, generated, tmp_path, new_seconds=2)

    piece = decoded(stitched.piece_path, channels=2)
    assert piece.shape == (5 * SAMPLE_RATE, 2)
    before_fade = 3 * SAMPLE_RATE - round(0.02 * SAMPLE_RATE)
    np.testing.assert_allclose(piece[:before_fade], original[:before_fade], atol=1 / 32768)
    # The new part goes to both channels, and (the mixdown being silent) at the model's level.
    np.testing.assert_array_equal(piece[3 * SAMPLE_RATE :, 0], piece[3 * SAMPLE_RATE :, 1])
    np.testing.assert_allclose(piece[3 * SAMPLE_RATE :, :1], new, atol=1 / 32768)
    new_part = decoded(stitched.new_part_path, channels=2)
    np.testing.assert_array_equal(new_part, piece[3 * SAMPLE_RATE :])


def test_the_new_part_of_a_stereo_clip_is_matched_to_the_level_of_its_mixdown() -> None:
    left, right = tone(3.0, 220, 0.2), tone(3.0, 277, 0.1)
    original = stereo(left, right)
    mixdown = (left + right) / 2
    # The model was given the mixdown; its normalization made everything 4x louder.
    new = tone(1.0, 330, 0.4)
    generated = np.concatenate([4 * mixdown, new])

    piece = stitch_continuation(original, generated, new.shape[0])

    join = original.shape[0]
    fade = round(0.02 * SAMPLE_RATE)
    np.testing.assert_array_equal(piece[: join - fade], original[: join - fade])
    np.testing.assert_allclose(piece[join:], stereo(new / 4, new / 4), atol=1e-6)


def test_a_mono_clip_continued_by_a_stereo_model_goes_to_both_channels_unchanged(tmp_path: Path) -> None:
    original = tone(2.0, 220, 0.3)
    new = stereo(tone(1.0, 330, 0.3), tone(1.0, 440, 0.2))
    generated = np.concatenate([stereo(original, original), new])

    stitched = stitch_written(original, generated, tmp_path, new_seconds=1, original_name="mono.wav")

    piece = decoded(stitched.piece_path, channels=2)
    before_fade = 2 * SAMPLE_RATE - round(0.02 * SAMPLE_RATE)
    # Not ffmpeg's up-mix, which lowers a mono signal by 3 dB on each side.
    np.testing.assert_allclose(piece[:before_fade], stereo(original, original)[:before_fade], atol=1 / 32768)
    np.testing.assert_allclose(piece[2 * SAMPLE_RATE :], new, atol=1 / 32768)


def test_a_stereo_model_continuing_a_stereo_clip_is_level_matched_channel_by_channel() -> None:
    left = tone(3.0, 220, 0.3)
    original = stereo(left, -left)  # its mixdown is silence; its channels are not
    # A stereo model heard each channel; its normalization made everything 4x louder.
    new = stereo(tone(1.0, 330, 0.4), tone(1.0, 440, 0.2))
    generated = np.concatenate([4 * original, new])

    piece = stitch_continuation(original, generated, new.shape[0])

    join, fade = original.shape[0], round(0.02 * SAMPLE_RATE)
    np.testing.assert_array_equal(piece[: join - fade], original[: join - fade])
    # One gain for both channels: the new part keeps the model's own left and right, at the clip's level.
    np.testing.assert_allclose(piece[join:], new / 4, atol=1e-6)
    # The crossfade runs per channel from the clip into the re-decoded tail (the same music).
    np.testing.assert_allclose(piece[join - fade : join], original[join - fade :], atol=1e-6)


# -- memory (finding 8) ---------------------------------------------------------------------------


def traced_peak_bytes(work: Callable[[], object]) -> int:
    """The most memory Python and numpy held at once while `work` ran (tracemalloc)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def four_minute_stereo_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 s of stereo: 61 MB as float32 samples, 31 MB as this WAV."""
    seconds = 240.0
    clip = stereo(tone(seconds, 220, 0.2), tone(seconds, 330, 0.2))
    return write_wav(clip, tmp_path_factory.mktemp("long") / "four-minutes.wav")


def test_the_length_of_a_long_clip_is_counted_exactly_without_holding_its_samples(
    four_minute_stereo_clip: Path, tmp_path: Path
) -> None:
    seconds: list[float] = []
    peak = traced_peak_bytes(
        lambda: seconds.append(clip_seconds(four_minute_stereo_clip, timeout_s=30, max_seconds=600))
    )
    assert seconds == [240.0]
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MiB"  # decoded whole: 61 MB
    # Exactly what the worker decodes, also for a clip at another rate, in another format.
    short = tmp_path / "short.m4a"
    subprocess.run(
        [ffmpeg_executable(), "-nostdin", "-v", "error", "-f", "lavfi",
         "-i", "sine=frequency=220:duration=3.013:sample_rate=44100", "-ac", "2", "-c:a", "aac", str(short)],
        check=True,
    )  # fmt: skip
    decoded = decode_audio_file(short, sample_rate=SAMPLE_RATE)
    assert clip_seconds(short, timeout_s=30, max_seconds=600) * SAMPLE_RATE == decoded.shape[0]


def test_stitching_a_long_stereo_clip_holds_its_tail_not_the_clip(
    four_minute_stereo_clip: Path, tmp_path: Path
) -> None:
    generated = np.concatenate([tone(10.0, 220, 0.4, start_s=230.0), tone(2.0, 330, 0.4)])
    generated_path = write_wav(generated, tmp_path / "out.wav")
    stitched: list[StitchedPiece] = []

    peak = traced_peak_bytes(
        lambda: stitched.append(
            stitch_files(
                four_minute_stereo_clip,
                generated_path,
                tmp_path / "out-piece.wav",
                new_seconds=2,
                timeout_s=30,
                max_seconds=600,
            )
        )
    )

    # The clip decoded whole would be 61 MB; its last 12 s and the model's output are about 5 MB.
    assert peak < 16 << 20, f"{peak / 2**20:.1f} MiB"
    piece = read_wav_layout(stitched[0].piece_path)
    assert (piece.channels, piece.frames) == (2, 242 * SAMPLE_RATE)
    assert stitched[0].original_seconds == 240.0
    with wave.open(str(stitched[0].piece_path)) as reader:  # a WAV any reader takes
        assert (reader.getnchannels(), reader.getnframes()) == (2, 242 * SAMPLE_RATE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-new.wav", "out-piece.wav", "out.wav"]


def test_the_bot_runs_at_most_two_decodes_at_once(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    slow = tmp_path / "ffmpeg"
    slow.write_text(
        "#!/bin/sh\n"
        f'echo "$$ start $(date +%s.%N)" >> "{log}"\n'
        "sleep 0.3\n"
        f'"{bundled_ffmpeg()}" "$@"\nstatus=$?\n'
        f'echo "$$ end $(date +%s.%N)" >> "{log}"\n'
        "exit $status\n"
    )
    slow.chmod(0o755)
    clip = write_wav(tone(1.0, 220, 0.3), tmp_path / "clip.wav")

    with running_with(str(slow)), ThreadPoolExecutor(5) as pool:
        lengths = list(pool.map(lambda _: clip_seconds(clip, timeout_s=30, max_seconds=600), range(5)))

    assert lengths == [1.0] * 5
    events = sorted(
        (float(time), 1 if what == "start" else -1)
        for _, what, time in (line.split() for line in log.read_text().splitlines())
    )
    running = list(itertools.accumulate(change for _, change in events))
    assert max(running) == MAX_CONCURRENT_DECODES == 2


# -- concurrent MP3 encodes (finding 10) ---------------------------------------------------------


def mp3_bitrate(path: Path) -> int:
    with av.open(str(path)) as container:
        return int(container.streams.audio[0].bit_rate)


def test_a_turn_post_and_an_export_fitting_the_same_piece_at_once_each_get_their_own_mp3(
    tmp_path: Path,
) -> None:
    wav = write_wav(tone(20.0, 440, 0.3), tmp_path / "piece.wav")  # 1.28 MB
    limits = (900_000, 130_000)  # 320 kbit/s fits the first, 48 kbit/s the second
    for _ in range(3):
        start_together = threading.Barrier(len(limits))

        def fit(limit: int, start_together: threading.Barrier = start_together) -> FittedFile | None:
            start_together.wait()
            return encode_to_fit(wav, limit)

        with ThreadPoolExecutor(len(limits)) as pool:
            fitted = list(pool.map(fit, limits))

        assert [f.bitrate_kbps if f else None for f in fitted] == [320, 48]
        for limit, mp3 in zip(limits, fitted, strict=True):
            assert mp3 is not None and mp3.bitrate_kbps is not None and mp3.path.stat().st_size <= limit
            assert mp3_bitrate(mp3.path) == mp3.bitrate_kbps * 1000  # the file is the one it measured
    # One file per bitrate beside the WAV, no drafts left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["piece-320k.mp3", "piece-48k.mp3", "piece.wav"]
