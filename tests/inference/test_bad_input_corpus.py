"""Every file of the bad-input corpus through the decoder: a clear refusal or a correct result,
never a crash or a hang."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

from inference.engine.audio import load_audio
from inference.media.ffmpeg import AudioDecodeError, probe_duration
from inference.request import RequestError
from tests.bad_input_corpus import CorpusFile, build_corpus

RATE = 32000
# Built at collection, because the parametrization lists its entries; removed when pytest exits.
_CORPUS_DIR = Path(tempfile.mkdtemp(prefix="bad-input-corpus-"))
atexit.register(shutil.rmtree, _CORPUS_DIR, ignore_errors=True)
CORPUS = build_corpus(_CORPUS_DIR)


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_file_is_refused_clearly_or_decoded_correctly(name: str) -> None:
    entry: CorpusFile = CORPUS[name]
    if entry.refused is not None:
        for decode in (
            lambda: probe_duration(entry.path, timeout_s=10, max_seconds=600),
            lambda: load_audio(entry.path, sample_rate=RATE, channels=1, timeout_s=10),
        ):
            with pytest.raises(AudioDecodeError, match=r"^Couldn't read that audio file") as caught:
                decode()
            assert entry.refused in str(caught.value)
            assert "ffmpeg" not in str(caught.value)  # no decoder internals for the member
        return

    assert entry.seconds is not None
    measured = probe_duration(entry.path, timeout_s=10, max_seconds=600)
    if entry.seconds > 600:
        assert measured > 600  # counting stopped just past the limit: "too long", without decoding 2 h
    else:
        assert measured == pytest.approx(entry.seconds, abs=entry.tolerance_s)
    # The model only ever reads a 30 s window, whatever the file's length.
    for channels in (1, 2):
        clip = load_audio(entry.path, sample_rate=RATE, channels=channels, timeout_s=10)
        assert clip.shape[0] == channels
        assert clip.shape[1] / RATE == pytest.approx(min(entry.seconds, 30.0), abs=entry.tolerance_s)


def test_a_start_past_the_end_of_a_short_clip_is_refused_with_its_length() -> None:
    with pytest.raises(RequestError, match=r"past the end of the clip \(0\.05 s long\)"):
        load_audio(CORPUS["50 ms"].path, sample_rate=RATE, channels=1, start_s=1.0)
    with pytest.raises(RequestError, match="must be 0 s or later"):
        load_audio(CORPUS["50 ms"].path, sample_rate=RATE, channels=1, start_s=float("nan"))


@pytest.fixture(scope="module")
def cli_config(engine_settings: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.inference.test_cli import write_config

    return write_config(engine_settings, tmp_path_factory.mktemp("cli") / "config.toml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt", "x", "--temperature", "nan"], "temperature must be a finite number"),
        (["--prompt", "x", "--top-p", "inf"], "top_p must be a finite number"),
        (
            ["--prompt", "x", "--classifier-free-guidance", "-inf"],
            "classifier_free_guidance must be a finite number",
        ),
        (["--prompt", "x", "--top-k", "2.5"], "'2.5' is not a valid integer"),
        (["--prompt", "x", "--duration", "2.5"], "'2.5' is not a valid integer"),
        (["--prompt", "x" * 10_000], "The prompt is too long (10000 characters"),
        (
            ["--input-audio", "{clip}", "--continuation", "--continuation-start", "nan"],
            "continuation_start must be a finite",
        ),
        (
            ["--input-audio", "{clip}", "--continuation", "--continuation-start", "1e9"],
            "past the end of the clip",
        ),
        (
            ["--input-audio", "{clip}", "--continuation", "--continuation-end", "inf"],
            "continuation_end must be a finite",
        ),
    ],
)
def test_the_cli_answers_out_of_range_numbers_in_one_line(
    cli_config: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    from tests.inference.test_cli import run_cli

    clip = str(CORPUS["silence"].path)
    args = [flag.format(clip=clip) for flag in flags]
    code, text = run_cli(
        "generate",
        "--config",
        str(cli_config),
        "--duration",
        "1",
        *args,
        "--output",
        str(tmp_path / "out.wav"),
    )
    assert code == 2 and message in text and "Traceback" not in text
