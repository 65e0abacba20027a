"""Pieces longer than the model's window, made window by window as audiocraft's MusicGen makes them.

The engine runs a tiny audiocraft export whose window (its training segment) is 2 s, extended with a
1 s stride (`[engine] extend_stride_s`), so a 5 s piece is four windows: the first whole, each next
one prompted with the last second of the one before. Greedy output equals what audiocraft 1.3.0 made
with the same checkpoint (tests/inference/references/long_piece_greedy.pt, made by
scripts/make-audiocraft-references.py; the tier compares live:
tests/audiocraft_tier/test_long_pieces_against_audiocraft.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile
import torch

from inference.engine.decoding import DecodingRow, MusicGenDecoder
from inference.engine.musicgen_engine import EngineJob, GenerationCancelled, MusicGenEngine
from inference.request import GenerationRequest, RequestError
from inference.settings import EngineOptions
from inference.windows import Window, decoder_steps, plan_windows, window_count
from tests.inference.audio_checks import audio_of
from tests.inference.references import checkpoint_digest, kept_samples, load_reference, long_pieces
from tests.inference.references.stereo import recording_codes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES_PER_S = 50
DELAY_STEPS = 3  # 4 codebooks: the last one is 3 steps behind the first


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference's checkpoint, rebuilt here bit for bit (seeded)."""
    return long_pieces.build_checkpoint(tmp_path_factory.mktemp("window-2s") / "export")


@pytest.fixture(scope="module")
def long_engine(export: Path, tmp_path_factory: pytest.TempPathFactory) -> MusicGenEngine:
    return MusicGenEngine(long_pieces.engine_settings_for(export, tmp_path_factory.mktemp("converted")))


def text(**changes: Any) -> GenerationRequest:
    return long_pieces.LongCase(duration=5).request(None).replace(**changes)


@pytest.fixture
def entering_rows(monkeypatch: pytest.MonkeyPatch) -> list[DecodingRow]:
    """Every row that enters the decoding loop, in order."""
    rows: list[DecodingRow] = []
    start = MusicGenDecoder._start

    def recording_start(self: MusicGenDecoder, row: DecodingRow) -> Any:
        rows.append(row)
        return start(self, row)

    monkeypatch.setattr(MusicGenDecoder, "_start", recording_start)
    return rows


@pytest.fixture
def batch_rows(monkeypatch: pytest.MonkeyPatch) -> list[list[DecodingRow]]:
    """The rows of the batch at every decoder step."""
    steps: list[list[DecodingRow]] = []
    step = MusicGenDecoder._step

    def recording_step(self: MusicGenDecoder, batch: Any, *, first: bool = False) -> None:
        steps.append([state.row for state in batch.states if not state.done])
        step(self, batch, first=first)

    monkeypatch.setattr(MusicGenDecoder, "_step", recording_step)
    return steps


@pytest.fixture
def codes_made() -> Iterator[list[torch.Tensor]]:
    with recording_codes() as recorded:
        yield recorded


# -- the windows -----------------------------------------------------------------------------------


def test_the_windows_are_audiocraft_s_first_whole_then_prompted_with_the_end_of_the_last() -> None:
    # 5 s from a 2 s window, 1 s stride (in frames): audiocraft's _generate_tokens loop.
    assert plan_windows(prompt_frames=0, new_frames=250, window=100, stride=50) == (
        Window(offset=0, prompt_frames=0, frames=100),
        Window(offset=50, prompt_frames=50, frames=100),
        Window(offset=100, prompt_frames=50, frames=100),
        Window(offset=150, prompt_frames=50, frames=100),
    )
    # A continuation's clip counts in the first window; the last window adds what is left.
    assert plan_windows(prompt_frames=25, new_frames=200, window=100, stride=50) == (
        Window(offset=0, prompt_frames=25, frames=100),
        Window(offset=50, prompt_frames=50, frames=100),
        Window(offset=100, prompt_frames=50, frames=100),
        Window(offset=150, prompt_frames=50, frames=75),
    )
    # What fits in the window is one window, whatever the stride.
    assert plan_windows(prompt_frames=10, new_frames=90, window=100, stride=500) == (
        Window(offset=0, prompt_frames=10, frames=100),
    )
    # 120 s from a released model (30 s window, 18 s stride): six windows, 6000 frames.
    released = plan_windows(prompt_frames=0, new_frames=6000, window=1500, stride=900)
    assert [w.offset for w in released] == [0, 900, 1800, 2700, 3600, 4500]
    assert sum(w.new_frames for w in released) == 6000
    assert decoder_steps(released, delay_steps=DELAY_STEPS) == 6000 + 6 * DELAY_STEPS
    assert [window_count(s) for s in (8, 30, 31, 48, 49, 120)] == [1, 1, 2, 2, 3, 6]


def test_a_stride_as_long_as_the_window_or_a_prompt_filling_it_cannot_extend_a_piece() -> None:
    with pytest.raises(ValueError, match="stride"):
        plan_windows(prompt_frames=0, new_frames=250, window=100, stride=100)
    with pytest.raises(ValueError, match="prompt"):
        plan_windows(prompt_frames=100, new_frames=50, window=100, stride=50)


# -- the engine ------------------------------------------------------------------------------------


def test_the_model_records_its_window_from_the_audiocraft_checkpoint(long_engine: MusicGenEngine) -> None:
    assert long_engine.cache.get("finetuned").window_s == long_pieces.WINDOW_S


def test_each_window_is_a_row_prompted_with_the_last_window_minus_stride_of_codes(
    long_engine: MusicGenEngine, entering_rows: list[DecodingRow], codes_made: list[torch.Tensor]
) -> None:
    progress: list[tuple[int, int]] = []
    generated = long_engine.generate(text(), on_progress=lambda done, total: progress.append((done, total)))

    assert generated.wav.shape == (1, 5 * long_pieces.SAMPLE_RATE)
    (piece,) = codes_made
    assert piece.shape == (4, 250)
    # The first window makes 2 s; each next one is prompted with the last second made and adds one.
    assert [row.new_steps for row in entering_rows] == [100 + DELAY_STEPS] + [50 + DELAY_STEPS] * 3
    assert entering_rows[0].prompt_codes is None
    for index, row in enumerate(entering_rows[1:], start=1):
        assert row.prompt_codes is not None
        assert torch.equal(row.prompt_codes.cpu(), piece[:, 50 * index : 50 * index + 50])
    # Progress counts every window's steps: one total, reached once, step by step.
    total = 250 + 4 * DELAY_STEPS
    assert {t for _, t in progress} == {total}
    assert [done for done, _ in progress] == list(range(1, total + 1))


def test_a_melody_is_followed_from_each_windows_time_on_repeating_a_short_clip(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """audiocraft's slicing: window k follows a whole window of the clip from k x stride on, the clip
    repeated where the piece outlasts it (tier: the same samples as audiocraft's windows)."""
    from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR, make_test_model
    from inference.settings import EngineSettings, MelodyOptions, ModelSources

    folder = make_test_model(
        "melody", tmp_path_factory.mktemp("melody-2s") / "m", tiny=True, seed=5, window_s=2.0
    )
    settings = EngineSettings(
        models=ModelSources(
            melody=str(folder),
            text_encoder=str(folder / TEXT_ENCODER_DIR),
            compression=str(folder / COMPRESSION_DIR),
            conversion_cache=str(tmp_path / "converted"),
        ),
        engine=EngineOptions(device="cpu", dtype="float32", cpu_threads=1, extend_stride_s=1.0),
        melody=MelodyOptions(stem_separation=False),
    )
    engine = MusicGenEngine(settings)
    rate = long_pieces.SAMPLE_RATE
    t = torch.arange(int(3.3 * rate)) / rate
    melody = 0.4 * torch.sin(2 * torch.pi * (220.0 + 60.0 * t) * t)
    path = tmp_path / "melody.wav"
    soundfile.write(path, melody.numpy(), rate, subtype="FLOAT")
    followed: list[torch.Tensor] = []
    chroma_of = engine.inputs.melody_chroma

    def following(loaded: Any, clip: torch.Tensor, separator: Any) -> torch.Tensor:
        followed.append(clip)
        return chroma_of(loaded, clip, separator)

    monkeypatch.setattr(engine.inputs, "melody_chroma", following)

    request = GenerationRequest(model_version="melody", prompt="a", input_audio=str(path), duration=5, seed=3)
    assert engine.generate(request).wav.shape == (1, 5 * rate)

    clip = torch.from_numpy(soundfile.read(path, dtype="float32")[0])
    expected = [clip[(torch.arange(2 * rate) + k * rate) % clip.shape[-1]] for k in range(4)]
    assert len(followed) == 4
    for ours, theirs in zip(followed, expected, strict=True):
        assert ours.shape == (1, 2 * rate) and torch.equal(ours[0], theirs)


def test_a_continuation_adds_seconds_past_the_window_after_its_clip(
    long_engine: MusicGenEngine,
    entering_rows: list[DecodingRow],
    codes_made: list[torch.Tensor],
    tmp_path: Path,
) -> None:
    case = long_pieces.CASES["continuation"]
    clip_path = long_pieces.write_clip(0.5, tmp_path)
    generated = long_engine.generate(case.request(clip_path))

    (piece,) = codes_made
    assert generated.wav.shape == (1, int(4.5 * long_pieces.SAMPLE_RATE))
    # The 25 frames of the clip open the first window, which adds 75; the last window adds 25.
    assert [row.new_steps - DELAY_STEPS for row in entering_rows] == [75, 50, 50, 25]
    assert entering_rows[0].prompt_codes is not None and entering_rows[0].prompt_codes.shape[-1] == 25
    assert torch.equal(piece[:, :25], entering_rows[0].prompt_codes.cpu())


def test_a_clip_that_fills_the_window_cannot_be_continued(
    long_engine: MusicGenEngine, tmp_path: Path
) -> None:
    clip_path = long_pieces.write_clip(2.5, tmp_path)
    with pytest.raises(RequestError, match="shorter than 2 s"):
        long_engine.generate(long_pieces.LongCase(duration=4, clip_seconds=2.5).request(clip_path))


@pytest.mark.parametrize(
    ("cancel_after", "says"),
    [(100 + DELAY_STEPS, f"after 103 of {250 + 4 * DELAY_STEPS} decoder steps (between two windows)"),
     (120, f"after 120 of {250 + 4 * DELAY_STEPS} decoder steps")],
    ids=["between-windows", "in-the-second-window"],
)  # fmt: skip
def test_a_long_piece_is_cancelled_between_windows_and_between_steps(
    long_engine: MusicGenEngine, entering_rows: list[DecodingRow], cancel_after: int, says: str
) -> None:
    progress: list[int] = []
    with pytest.raises(GenerationCancelled, match=f"^cancelled {re.escape(says)}$"):
        long_engine.generate(
            text(),
            on_progress=lambda done, total: progress.append(done),
            is_cancelled=lambda: bool(progress) and progress[-1] >= cancel_after,
        )
    assert progress[-1] == cancel_after
    # The second window's row entered (and left at once, or after some steps); no third one came.
    assert len(entering_rows) == 2


def test_a_long_piece_s_next_window_enters_the_running_batch_and_nobody_s_music_changes(
    long_engine: MusicGenEngine, batch_rows: list[list[DecodingRow]], codes_made: list[torch.Tensor]
) -> None:
    long_job, neighbour = text(seed=1), text(duration=3, seed=2, prompt="dark techno at 130 bpm")
    alone = [long_engine.generate(long_job), long_engine.generate(neighbour)]
    alone_codes = list(codes_made)
    codes_made.clear()
    batch_rows.clear()

    together = long_engine.generate_batch([EngineJob(long_job), EngineJob(neighbour)])

    assert [audio_of(each).wav.shape for each in together] == [each.wav.shape for each in alone]
    # Outcomes are reported as each ends: the 3 s neighbour (three windows) before the 5 s piece.
    assert [c.shape[-1] for c in codes_made] == [150, 250]
    assert torch.equal(codes_made[0], alone_codes[1]) and torch.equal(codes_made[1], alone_codes[0])
    # The long piece's later windows ran beside the neighbour, in the same batch, as new rows.
    shared = [rows for rows in batch_rows if len(rows) == 2]
    assert any(any(row.steps_before > 0 for row in rows) for rows in shared)


def test_transformers_pass_makes_the_same_long_piece_one_window_batch_after_another(
    long_engine: MusicGenEngine, codes_made: list[torch.Tensor]
) -> None:
    settings = long_engine.settings
    theirs = MusicGenEngine(
        settings.model_copy(update={"engine": settings.engine.model_copy(update={"decoder": "transformers"})})
    )
    ours = long_engine.generate(text())
    via_transformers = theirs.generate(text())
    assert torch.equal(codes_made[0], codes_made[1])
    assert torch.allclose(ours.wav, via_transformers.wav, atol=1e-5)


def test_the_engine_refuses_durations_over_its_limit_and_pieces_its_stride_cannot_extend(
    long_engine: MusicGenEngine,
) -> None:
    settings = long_engine.settings
    limited = MusicGenEngine(
        settings.model_copy(update={"engine": settings.engine.model_copy(update={"max_duration_s": 4})}),
        long_engine.cache,
    )
    with pytest.raises(RequestError, match="between 1 and 4 seconds"):
        limited.generate(text())
    striding = MusicGenEngine(
        settings.model_copy(update={"engine": settings.engine.model_copy(update={"extend_stride_s": 2.0})}),
        long_engine.cache,
    )
    with pytest.raises(RequestError, match="extend_stride_s"):
        striding.generate(text())
    assert striding.generate(text(duration=2)).wav.shape[-1] == 2 * long_pieces.SAMPLE_RATE  # one window


def test_the_cli_takes_durations_up_to_the_configured_limit_and_makes_them_window_by_window(
    long_engine: MusicGenEngine, tmp_path: Path
) -> None:
    from tests.inference.test_cli import run_cli, write_config

    config = write_config(long_engine.settings, tmp_path / "config.toml")
    config.write_text(config.read_text() + "[limits]\nmax_duration_s = 6\n")
    flags = [
        "generate",
        "--config",
        str(config),
        "--model-version",
        "finetuned",
        "--prompt",
        "x",
        "--no-progress",
    ]
    code, text = run_cli(*flags, "--duration", "7")
    assert code == 2 and "Duration must be between 1 and 6" in text
    code, text = run_cli(*flags, "--duration", "5", "--output", str(tmp_path / "long.wav"))
    assert code == 0, text
    assert soundfile.info(tmp_path / "long.wav").frames == 5 * long_pieces.SAMPLE_RATE


# -- against audiocraft ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(long_pieces.CASES))
def test_greedy_long_pieces_are_audiocraft_s_codes_and_samples(
    case: str, long_engine: MusicGenEngine, export: Path, codes_made: list[torch.Tensor], tmp_path: Path
) -> None:
    """The stored reference audiocraft made from this very checkpoint (its digest says so)."""
    reference = load_reference(long_pieces.NAME)
    assert checkpoint_digest(export) == reference["checkpoints"][long_pieces.CHECKPOINT]
    spec = long_pieces.CASES[case]
    clip = None if spec.clip_seconds is None else long_pieces.write_clip(spec.clip_seconds, tmp_path)
    generated = long_engine.generate(spec.request(clip))

    expected = reference["cases"][case]
    (codes,) = codes_made
    assert torch.equal(codes.to(torch.int16), expected["codes"])
    assert list(generated.wav.shape) == expected["shape"]
    assert (kept_samples(generated.wav) - expected["samples"]).abs().max().item() < 1e-5
