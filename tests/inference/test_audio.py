"""Audio in and out: uploads of any format decode safely, generated audio is normalized like
audiocraft and written as 16-bit wav or 320 kbps mp3.

Every signal is synthesized here; format fixtures are encoded from it with the ffmpeg binary.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pyloudnorm
import pytest
import soundfile
import torch

from inference.engine.audio import (
    AudioDecodeError,
    ffmpeg_executable,
    load_audio,
    normalize_audio,
    probe_duration,
    use_ffmpeg,
    write_audio,
)
from inference.media.ffmpeg import bundled_ffmpeg
from inference.request import RequestError
from tests.ffmpeg_binaries import BINARIES, running_binary, running_with

SOURCE_RATE = 44100
SOURCE_SECONDS = 2.5
MODEL_RATE = 32000
MINUS_1_DBFS = 10 ** (-1 / 20)
# Left and right differ in pitch and level so a channel mix-up or a wrong down-mix shows.
LEFT_HZ, LEFT_AMPLITUDE = 440.0, 0.5
RIGHT_HZ, RIGHT_AMPLITUDE = 660.0, 0.3

ENCODER_ARGS = {
    "wav": [],
    "flac": ["-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "ogg": ["-c:a", "libvorbis"],
    "opus": ["-c:a", "libopus"],
    "m4a": ["-c:a", "aac"],
    "webm": ["-c:a", "libopus"],
}
LOSSLESS = {"wav", "flac"}


def stereo_tone(seconds_from: float, samples: int, rate: int) -> np.ndarray:
    """The reference signal [2, samples] starting `seconds_from` into the clip."""
    t = seconds_from + np.arange(samples) / rate
    return np.stack(
        [
            LEFT_AMPLITUDE * np.sin(2 * np.pi * LEFT_HZ * t),
            RIGHT_AMPLITUDE * np.sin(2 * np.pi * RIGHT_HZ * t),
        ]
    )


def encode_with_ffmpeg(source: Path, target: Path, *args: str) -> Path:
    subprocess.run(
        [ffmpeg_executable(), "-nostdin", "-v", "error", "-y", "-i", str(source), *args, str(target)],
        check=True,
    )
    return target


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 2.5 s, 44.1 kHz stereo tone as every common upload format, plus a voice message."""
    folder = tmp_path_factory.mktemp("uploads")
    source = folder / "source.wav"
    samples = int(SOURCE_SECONDS * SOURCE_RATE)
    soundfile.write(
        source, stereo_tone(0.0, samples, SOURCE_RATE).T.astype(np.float32), SOURCE_RATE, subtype="FLOAT"
    )
    files = {
        fmt: encode_with_ffmpeg(source, folder / f"tone.{fmt}", *args) for fmt, args in ENCODER_ARGS.items()
    }
    # What Discord records for a voice message: Ogg Opus, 48 kHz mono.
    files["voice-message"] = encode_with_ffmpeg(
        source, folder / "voice-message.ogg", "-c:a", "libopus", "-ar", "48000", "-ac", "1", "-b:a", "32k"
    )
    return files


def best_alignment(decoded: np.ndarray, seconds_from: float, rate: int) -> int:
    """The shift (in samples) of the reference that best matches `decoded`; 0 means exactly aligned."""
    errors = {}
    for shift in range(-40, 41):
        reference = stereo_tone(seconds_from + shift / rate, decoded.shape[-1], rate)
        errors[shift] = float(np.abs(decoded - reference)[:, 200:-200].max())
    return min(errors, key=errors.__getitem__)


# -- loading uploads ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(ENCODER_ARGS))
def test_a_member_uploads_a_44k_stereo_clip_and_the_model_gets_32k_mono_trimmed_to_the_sample(
    uploads: dict[str, Path], fmt: str
) -> None:
    mono = load_audio(uploads[fmt], sample_rate=MODEL_RATE, channels=1, start_s=0.5, end_s=1.25)

    assert mono.dtype == torch.float32
    assert mono.shape == (1, round(0.75 * MODEL_RATE))
    # audiocraft down-mixes to mono by averaging the channels.
    expected_mono = stereo_tone(0.5, mono.shape[-1], MODEL_RATE).mean(axis=0)
    if fmt in LOSSLESS:
        # The window starts at exactly sample 16000 of the 32 kHz signal: one sample off would be
        # an error of ~0.04 here.
        assert np.abs(mono[0].numpy() - expected_mono)[50:-50].max() < 2e-3
    else:
        stereo = load_audio(uploads[fmt], sample_rate=MODEL_RATE, channels=2, start_s=0.5, end_s=1.25)
        assert best_alignment(stereo.numpy(), 0.5, MODEL_RATE) == 0
        assert np.corrcoef(mono[0].numpy(), expected_mono)[0, 1] > 0.99


@pytest.fixture(params=BINARIES)
def ffmpeg_binary(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test runs with the bundled ffmpeg, then with a system one (skipped where none is installed)."""
    with running_binary(request.param) as executable:
        yield executable


@pytest.mark.parametrize("fmt", ["flac", "mp3", "m4a"])
def test_a_whole_clip_keeps_both_channels_and_its_exact_length(
    uploads: dict[str, Path], fmt: str, ffmpeg_binary: str
) -> None:
    # With Debian 12's ffmpeg 5.1 the m4a came out 249 samples long: the AAC encoder's padding of
    # its last packet was decoded, where the container says the clip ends before it.
    stereo = load_audio(uploads[fmt], sample_rate=MODEL_RATE, channels=2)

    assert stereo.shape == (2, int(SOURCE_SECONDS * MODEL_RATE))
    # Left is the louder channel in the source; a swap or a mix would change these levels.
    left_rms, right_rms = stereo.pow(2).mean(dim=1).sqrt().tolist()
    assert left_rms == pytest.approx(LEFT_AMPLITUDE / math.sqrt(2), rel=0.03)
    assert right_rms == pytest.approx(RIGHT_AMPLITUDE / math.sqrt(2), rel=0.03)


def test_a_discord_voice_message_loads_and_is_copied_to_both_channels_of_a_stereo_model(
    uploads: dict[str, Path],
) -> None:
    stereo = load_audio(uploads["voice-message"], sample_rate=MODEL_RATE, channels=2, start_s=1.0)

    assert stereo.shape == (2, round(1.5 * MODEL_RATE))
    assert torch.equal(stereo[0], stereo[1])
    assert stereo.abs().max() > 0.1


def test_a_trim_window_running_past_the_end_stops_at_the_end(uploads: dict[str, Path]) -> None:
    tail = load_audio(uploads["wav"], sample_rate=MODEL_RATE, channels=1, start_s=2.0, end_s=9.0)

    assert tail.shape == (1, round(0.5 * MODEL_RATE))


def test_a_trim_window_outside_the_clip_is_refused_with_a_clear_message(uploads: dict[str, Path]) -> None:
    with pytest.raises(RequestError, match="past the end of the clip"):
        load_audio(uploads["wav"], sample_rate=MODEL_RATE, channels=1, start_s=3.0)
    with pytest.raises(RequestError, match="must come after the start"):
        load_audio(uploads["wav"], sample_rate=MODEL_RATE, channels=1, start_s=1.0, end_s=0.5)


def test_an_upload_longer_than_the_limit_is_refused_but_its_opening_can_still_be_used(
    uploads: dict[str, Path],
) -> None:
    with pytest.raises(AudioDecodeError, match="longer than 2 s"):
        load_audio(uploads["mp3"], sample_rate=MODEL_RATE, channels=1, max_seconds=2.0)

    opening = load_audio(uploads["mp3"], sample_rate=MODEL_RATE, channels=1, end_s=1.0, max_seconds=2.0)
    assert opening.shape == (1, MODEL_RATE)


def _write_bytes(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_files_that_are_not_audio_are_refused_with_a_friendly_message(
    uploads: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    not_audio = {
        "garbage bytes": _write_bytes(
            tmp_path, "noise.mp3", rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
        ),
        "a text file renamed .mp3": _write_bytes(tmp_path, "notes.mp3", b"shopping list: eggs, milk\n" * 200),
        "a truncated flac": _write_bytes(tmp_path, "cut.flac", uploads["flac"].read_bytes()[:200]),
        "a truncated m4a": _write_bytes(tmp_path, "cut.m4a", uploads["m4a"].read_bytes()[:1000]),
        "a truncated ogg": _write_bytes(tmp_path, "cut.ogg", uploads["ogg"].read_bytes()[:200]),
    }
    for description, path in not_audio.items():
        with pytest.raises(AudioDecodeError, match=r"^Couldn't read that audio file: ") as caught:
            load_audio(path, sample_rate=MODEL_RATE, channels=1)
        assert "ffmpeg" not in str(caught.value), description  # the person sees no decoder internals
        assert isinstance(caught.value, RequestError)


def test_empty_files_and_zero_length_audio_are_refused_clearly(tmp_path: Path) -> None:
    empty = _write_bytes(tmp_path, "empty.wav", b"")
    zero_length = tmp_path / "zero.wav"
    soundfile.write(zero_length, np.zeros((0, 2), dtype=np.float32), SOURCE_RATE)

    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(empty, sample_rate=MODEL_RATE, channels=1)
    with pytest.raises(AudioDecodeError, match="contains no audio"):
        load_audio(zero_length, sample_rate=MODEL_RATE, channels=1)
    with pytest.raises(AudioDecodeError, match="contains no audio"):
        probe_duration(zero_length)


def test_a_video_without_sound_is_refused_as_having_no_audio_track(tmp_path: Path) -> None:
    silent_video = tmp_path / "clip.mkv"
    subprocess.run(
        [ffmpeg_executable(), "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=black:s=16x16:d=0.2",
         "-c:v", "ffv1", str(silent_video)],
        check=True,
    )  # fmt: skip

    with pytest.raises(AudioDecodeError, match="no audio track"):
        load_audio(silent_video, sample_rate=MODEL_RATE, channels=1)


def test_a_decoder_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    # A named pipe nobody writes to: ffmpeg blocks on it forever, like a decoder stuck on a file.
    stuck = tmp_path / "stuck.mp3"
    os.mkfifo(stuck)

    with pytest.raises(AudioDecodeError, match=r"took longer than 0\.5 s"):
        load_audio(stuck, sample_rate=MODEL_RATE, channels=1, timeout_s=0.5)
    with pytest.raises(AudioDecodeError, match=r"took longer than 0\.5 s"):
        probe_duration(stuck, timeout_s=0.5)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "m4a", "voice-message"])
def test_probe_duration_counts_the_seconds_of_audio(uploads: dict[str, Path], fmt: str) -> None:
    assert probe_duration(uploads[fmt]) == pytest.approx(SOURCE_SECONDS, abs=0.01)


def test_probe_duration_stops_early_for_a_long_upload_when_given_a_limit(uploads: dict[str, Path]) -> None:
    measured = probe_duration(uploads["wav"], max_seconds=0.5)

    assert 0.5 < measured < SOURCE_SECONDS


# -- normalization -----------------------------------------------------------------------------


def tone(frequency_hz: float, amplitude: float, seconds: float = 3.0, rate: int = MODEL_RATE) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * frequency_hz * t)).float()


def test_peak_normalization_puts_the_loudest_sample_at_minus_1_dbfs() -> None:
    quiet_stereo = torch.stack([tone(440, 0.1), tone(660, 0.05)])

    normalized = normalize_audio(quiet_stereo, "peak", MODEL_RATE)

    assert normalized.abs().max().item() == pytest.approx(MINUS_1_DBFS, rel=1e-6)
    # One gain for both channels: the balance between them is kept.
    assert torch.allclose(normalized[1] / normalized[0].abs().max(), quiet_stereo[1] / 0.1, atol=1e-5)


def test_clip_normalization_clamps_only_the_samples_above_minus_1_dbfs() -> None:
    too_loud = tone(440, 1.5)[None]

    clipped = normalize_audio(too_loud, "clip", MODEL_RATE)

    assert clipped.abs().max().item() == pytest.approx(MINUS_1_DBFS)
    untouched = too_loud.abs() < MINUS_1_DBFS
    assert torch.equal(clipped[untouched], too_loud[untouched])


def test_rms_normalization_sets_the_channel_mean_to_minus_18_db() -> None:
    # The right channel partly cancels the left: the rms of the mono mix, not of all samples, counts.
    left = tone(440, 0.2)
    stereo = torch.stack([left, -0.5 * left])

    normalized = normalize_audio(stereo, "rms", MODEL_RATE)

    mono_rms = normalized.mean(dim=0).pow(2).mean().sqrt().item()
    assert 20 * math.log10(mono_rms) == pytest.approx(-18.0, abs=1e-3)


def test_rms_normalization_clamps_what_the_gain_pushes_past_full_scale() -> None:
    # Mostly near-silence with one click: matching -18 dB rms sends the click far past 1.
    sparse = torch.full((1, MODEL_RATE), 1e-3)
    sparse[0, 1000] = 0.5

    normalized = normalize_audio(sparse, "rms", MODEL_RATE)

    assert normalized.max().item() == 1.0
    assert normalized[0, 0].item() > 1e-3  # the quiet part was still raised


def test_loudness_normalization_brings_quiet_and_loud_music_to_minus_14_lufs() -> None:
    meter = pyloudnorm.Meter(MODEL_RATE)
    rng = np.random.default_rng(1)
    noise = torch.from_numpy(rng.normal(0, 1, (2, 3 * MODEL_RATE))).float()
    chord = torch.stack([tone(220, 1.0) + tone(330, 0.5), tone(277, 0.8) + tone(440, 0.3)])
    for level in (0.01, 0.3):  # about -40 LUFS and -10 LUFS
        music = level * (chord / chord.abs().max() + 0.05 * noise)

        normalized = normalize_audio(music, "loudness", MODEL_RATE)

        measured = meter.integrated_loudness(normalized.double().numpy().T)
        assert measured == pytest.approx(-14.0, abs=0.5), level
        assert normalized.abs().max().item() <= 1.0


def test_loudness_normalization_clamps_after_the_gain() -> None:
    # A quiet bed with loud spikes: reaching -14 LUFS pushes the spikes past full scale.
    spiky = tone(440, 0.02)[None].clone()
    spiky[0, ::4000] = 0.9

    normalized = normalize_audio(spiky, "loudness", MODEL_RATE)

    assert normalized.abs().max().item() == 1.0


def test_loudness_normalization_does_not_amplify_near_silence() -> None:
    hiss = torch.from_numpy(np.random.default_rng(2).normal(0, 1e-3, (2, 2 * MODEL_RATE))).float()

    assert torch.equal(normalize_audio(hiss, "loudness", MODEL_RATE), hiss)


@pytest.mark.parametrize("strategy", ["peak", "rms", "loudness", "clip"])
def test_digital_silence_stays_silent_with_every_strategy(strategy: str) -> None:
    silence = torch.zeros(2, MODEL_RATE)

    assert torch.equal(normalize_audio(silence, strategy, MODEL_RATE), silence)


def test_loudness_normalization_works_on_clips_shorter_than_a_gating_block() -> None:
    blip = tone(440, 0.05, seconds=0.25)[None]

    normalized = normalize_audio(blip, "loudness", MODEL_RATE)

    assert pyloudnorm.Meter(MODEL_RATE, block_size=0.25).integrated_loudness(
        normalized.double().numpy().T
    ) == pytest.approx(-14.0, abs=0.5)


@pytest.mark.parametrize("samples", [2007, 2011, 9999])
def test_loudness_normalization_of_a_short_clip_never_fails_on_its_sample_count(samples: int) -> None:
    # An encode-decode of a tightly trimmed upload can be this short. samples / rate * rate comes
    # out one ulp above `samples` for some counts, which pyloudnorm took for "shorter than a block".
    blip = tone(440, 0.05, seconds=1.0)[None, :samples]

    normalized = normalize_audio(blip, "loudness", MODEL_RATE)

    assert normalized.abs().max().item() > blip.abs().max().item()  # it was measured and raised


# -- writing results ---------------------------------------------------------------------------


def test_a_wav_result_is_16_bit_pcm_with_every_sample(tmp_path: Path) -> None:
    stereo = torch.stack([tone(440, 0.5, seconds=1.5), tone(660, 1.5, seconds=1.5)])  # right clips

    path = write_audio(stereo, MODEL_RATE, tmp_path / "job-1", "wav")

    assert path == tmp_path / "job-1.wav"
    info = soundfile.info(path)
    assert (info.format, info.subtype) == ("WAV", "PCM_16")
    assert (info.samplerate, info.channels, info.frames) == (MODEL_RATE, 2, stereo.shape[-1])
    written, _ = soundfile.read(path, dtype="int16")
    assert written[:, 1].max() == 32767 and written[:, 1].min() == -32767  # clamped, not wrapped
    assert np.abs(written[:, 0] / 32767 - stereo[0].numpy()).max() < 1e-4


@pytest.mark.parametrize("channels", [1, 2])
def test_an_mp3_result_is_320_kbps_and_as_long_as_the_audio(tmp_path: Path, channels: int) -> None:
    music = torch.stack([tone(440, 0.5, seconds=4.0), tone(660, 0.5, seconds=4.0)])[:channels]

    path = write_audio(music, MODEL_RATE, tmp_path / "job-2.mp3", "mp3")

    assert path == tmp_path / "job-2.mp3"
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert container.format.name == "mp3"
        assert stream.bit_rate == 320_000
        assert stream.channels == channels
        assert stream.sample_rate == MODEL_RATE
        decoded_samples = sum(frame.samples for frame in container.decode(stream))
    assert abs(decoded_samples / MODEL_RATE - 4.0) <= 0.03
    assert probe_duration(path) == pytest.approx(4.0, abs=0.03)


def _fake_ffmpeg(folder: Path, script: str) -> Path:
    folder.mkdir(exist_ok=True)
    fake = folder / "ffmpeg"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    # Writes a stub of its output file (the last argument), then fails like a crashed encoder.
    broken_ffmpeg = _fake_ffmpeg(
        tmp_path / "bin",
        'for last; do :; done\necho partial > "$last"\necho "encoder exploded" >&2\nexit 1\n',
    )
    with running_with(str(broken_ffmpeg)), pytest.raises(RuntimeError, match="encoder exploded"):
        write_audio(tone(440, 0.5, seconds=0.5)[None], MODEL_RATE, tmp_path / "job-3", "mp3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]  # neither the mp3 nor its draft


def test_an_encoder_that_exits_0_without_writing_the_file_whole_fails_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    # What ffmpeg 5.1 does on a full disk: the file stops short, the exit status is 0 (and here,
    # unlike 5.1, not even a message says so: the size of the file alone must tell).
    quiet_failure = _fake_ffmpeg(tmp_path / "bin", 'for last; do :; done\nprintf ID3 > "$last"\nexit 0\n')
    with running_with(str(quiet_failure)), pytest.raises(RuntimeError, match="incomplete mp3"):
        write_audio(tone(440, 0.5, seconds=2.0)[None], MODEL_RATE, tmp_path / "job-4", "mp3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


# -- which ffmpeg, and pydub without a system ffmpeg ---------------------------------------------


def test_the_bundled_ffmpeg_is_used_even_with_another_on_path_unless_one_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = _fake_ffmpeg(tmp_path / "bin", "exit 0\n")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ['PATH']}")
    assert ffmpeg_executable() == bundled_ffmpeg()  # imageio-ffmpeg's own binary

    with running_with("ffmpeg") as by_name:  # [engine] ffmpeg = "ffmpeg": looked up on PATH
        assert by_name == ffmpeg_executable() == str(on_path)
    with running_with(str(on_path)) as by_path:
        assert by_path == ffmpeg_executable() == str(on_path)
    assert ffmpeg_executable() == bundled_ffmpeg()  # "" again: the bundled one


def test_a_configured_ffmpeg_that_does_not_exist_is_refused_with_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[engine\] ffmpeg = '/nowhere/ffmpeg': no such executable"):
        use_ffmpeg("/nowhere/ffmpeg")
    assert ffmpeg_executable() == bundled_ffmpeg()  # the setting in force is unchanged


def test_configure_pydub_lets_pydub_open_mp3_and_ogg_without_a_system_ffmpeg(
    uploads: dict[str, Path], tmp_path: Path
) -> None:
    # A fresh interpreter on a machine with neither ffmpeg nor ffprobe on PATH: pydub as it starts
    # there (this process's pydub may already have been configured by other tests).
    script = """
import json, sys, warnings
warnings.simplefilter("ignore")
from pydub import AudioSegment
paths = json.loads(sys.argv[1])
try:
    AudioSegment.from_file(paths["mp3"])
    print("opened-before-configure")
except FileNotFoundError:
    print("refused-before-configure")
from inference.media.ffmpeg import configure_pydub
configure_pydub()
for fmt in ("mp3", "ogg", "flac", "voice-message"):
    segment = AudioSegment.from_file(paths[fmt])
    print(fmt, len(segment), segment.channels, segment.frame_rate)
"""
    env = {**os.environ, "PATH": str(tmp_path)}
    completed = subprocess.run(
        [sys.executable, "-c", script, json.dumps({k: str(v) for k, v in uploads.items()})],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "refused-before-configure"
    opened = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in lines[1:]}
    for fmt in ("mp3", "ogg", "flac", "voice-message"):
        assert opened[fmt][0] == pytest.approx(SOURCE_SECONDS * 1000, abs=10), fmt
    assert opened["mp3"][1:] == [2, SOURCE_RATE]


def test_the_shipped_config_documents_the_ffmpeg_key_with_the_bundled_default(tmp_path: Path) -> None:
    from inference.settings import load_engine_settings

    shipped = Path(__file__).resolve().parents[2] / "config.toml"
    assert load_engine_settings(shipped).engine.ffmpeg == ""
    assert '\nffmpeg = ""\n' in shipped.read_text()
    config = tmp_path / "config.toml"
    config.write_text('[engine]\nffmpeg = "/usr/bin/ffmpeg"\n')
    assert load_engine_settings(config).engine.ffmpeg == "/usr/bin/ffmpeg"
