"""A corpus of hostile and broken uploads, generated on the spot (nothing binary is checked in).

Each entry is a file a member could attach, and what a correct decoder makes of it: a refusal
(`refused`, with words the member sees) or audio of a known length (`seconds`).
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.media.ffmpeg import ffmpeg_executable


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    refused: str | None = None  # words of the refusal; None: it decodes
    seconds: float | None = None  # its real length when it decodes
    tolerance_s: float = 0.06


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_executable(), "-nostdin", "-v", "error", "-y", *args], check=True)


def _tone(
    path: Path, seconds: float, *, rate: int = 16000, channels: int = 1, extra: tuple[str, ...] = ()
) -> Path:
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=330:duration={seconds}:sample_rate={rate}",
            "-ac", str(channels), "-ar", str(rate), *extra, str(path))  # fmt: skip
    return path


def wav_header(*, rate: int, channels: int, bits: int, data_bytes: int) -> bytes:
    """A canonical 44-byte PCM WAV header that says `data_bytes` of samples follow."""
    block = channels * bits // 8
    return (
        b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
        + b"data" + struct.pack("<I", data_bytes)
    )  # fmt: skip


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def build_corpus(folder: Path) -> dict[str, CorpusFile]:
    """Write every corpus file into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(8)
    corpus: dict[str, CorpusFile] = {}

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    unreadable = "Couldn't read that audio file"
    corpus["zero bytes"] = CorpusFile(write("empty.wav", b""), refused="empty (0 bytes)")
    corpus["a WAV header and no samples"] = CorpusFile(
        write("header-only.wav", wav_header(rate=16000, channels=1, bits=16, data_bytes=0)),
        refused="no audio",
    )
    good_mp3 = _tone(folder / "good.mp3", 2.0)
    corpus["a truncated MP3 (its first 40%)"] = CorpusFile(
        write("truncated.mp3", good_mp3.read_bytes()[: len(good_mp3.read_bytes()) * 2 // 5]),
        seconds=0.75,  # what its whole frames hold
        tolerance_s=0.1,
    )
    corpus["random bytes named .wav"] = CorpusFile(
        write("noise.wav", rng.integers(0, 256, 30_000, dtype=np.uint8).tobytes()), refused=unreadable
    )
    corpus["a PNG named .mp3"] = CorpusFile(write("picture.mp3", tiny_png()), refused=unreadable)
    corpus["a text file"] = CorpusFile(
        write("lyrics.mp3", b"la la la, here are my lyrics\n" * 100), refused=unreadable
    )
    one_second = (rng.standard_normal(16000) * 3000).astype("<i2").tobytes()
    corpus["a WAV whose header claims ten times its samples"] = CorpusFile(
        write(
            "lying.wav",
            wav_header(rate=16000, channels=1, bits=16, data_bytes=10 * len(one_second)) + one_second,
        ),
        seconds=1.0,
    )
    # Two hours of 8 kHz audio: the header says so and the file really is that long, but sparse
    # (zeros that take no disk space), so it costs nothing to make.
    two_hours = folder / "two-hours.wav"
    data_bytes = 2 * 3600 * 8000 * 2
    with two_hours.open("wb") as file:
        file.write(wav_header(rate=8000, channels=1, bits=16, data_bytes=data_bytes))
        file.truncate(44 + data_bytes)
    corpus["a two-hour WAV"] = CorpusFile(two_hours, seconds=7200.0)
    corpus["50 ms"] = CorpusFile(_tone(folder / "blip.wav", 0.05), seconds=0.05)
    corpus["8 channels"] = CorpusFile(_tone(folder / "surround.wav", 1.0, channels=8), seconds=1.0)
    corpus["8 kHz"] = CorpusFile(_tone(folder / "phone.wav", 1.0, rate=8000), seconds=1.0)
    corpus["96 kHz"] = CorpusFile(_tone(folder / "studio.flac", 1.0, rate=96000), seconds=1.0)
    silence = folder / "silence.wav"
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "1", str(silence))
    corpus["silence"] = CorpusFile(silence, seconds=1.0)
    # Playlists that point at a real, readable clip: following them would "work", and must not.
    secret = _tone(folder / "someone-elses-clip.wav", 1.0)
    corpus["an ffconcat playlist named .mp3"] = CorpusFile(
        write("playlist.mp3", f"ffconcat version 1.0\nfile '{secret}'\n".encode()), refused=unreadable
    )
    corpus["an HLS playlist named .mp3"] = CorpusFile(
        write("stream.mp3", f"#EXTM3U\n#EXTINF:1.0,\nfile://{secret}\n#EXT-X-ENDLIST\n".encode()),
        refused=unreadable,
    )
    return corpus
