"""Several jobs decoded as one batch (`MusicGenEngine.generate_batch`) on the tiny CPU models: each
job keeps its own music, length, progress and cancellation, and a bad one fails alone.

"The same music alone or in a batch" is asserted as identical audio. Each job's codes go through
EnCodec alone, so identical audio means identical codes. A batch changes the shapes of the matrix
products, and float32 kernels of other shapes may round the last bit of a logit differently; that
can only change a code where two codes are within ~1e-6 of each other (a greedy near-tie, or a
sampled draw that lands on a boundary), which does not happen in these few hundred draws, and the
result is deterministic on a given machine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from inference.engine.musicgen_engine import (
    STATIC_CACHE_GRANULE,
    EngineJob,
    GenerationCancelled,
    MusicGenEngine,
)
from inference.request import GenerationRequest, RequestError
from inference.settings import EngineSettings
from tests.inference.audio_checks import audio_of, same

SAMPLE_RATE = 32_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def request(**changes: object) -> GenerationRequest:
    return GenerationRequest(
        model_version="small", prompt="calm acoustic guitar", duration=1, seed=11
    ).replace(**changes)


# Different prompts (and so text lengths), seeds, sampling settings and guidance, greedy included.
NEIGHBOURS = [
    request(prompt="jazz trio with a walking bass line and brushed drums", seed=1),
    request(prompt="techno", seed=2, top_p=0.9),
    request(prompt="ambient pads", seed=3, temperature=0),
    request(prompt="folk song", seed=4, classifier_free_guidance=1, top_k=20),
    request(prompt="piano ballad", seed=5, classifier_free_guidance=0.5, temperature=1.5),
]


@pytest.mark.parametrize(
    "job",
    [request(temperature=0), request(seed=99), request(top_k=0, seed=5), request(classifier_free_guidance=1)],
    ids=["greedy", "sampled", "whole-distribution", "no-guidance"],
)
def test_a_job_makes_the_same_music_alone_and_among_neighbours(
    engine: MusicGenEngine, job: GenerationRequest
) -> None:
    alone = engine.generate(job)
    batch = engine.generate_batch([EngineJob(r) for r in [NEIGHBOURS[0], job, *NEIGHBOURS[1:]]])
    assert same(batch[1], alone)
    # The neighbours too: each as it would be alone.
    for neighbour, outcome in zip(NEIGHBOURS, [batch[0], *batch[2:]], strict=True):
        assert same(outcome, engine.generate(neighbour))


def test_neighbours_with_the_same_seed_and_settings_still_differ_by_prompt_only(
    engine: MusicGenEngine,
) -> None:
    # Two identical requests in one batch make identical music (each has its own generator from the
    # same seed); transformers' one shared random stream would have made them differ.
    twin = request(seed=21)
    first, second, other = engine.generate_batch(
        [EngineJob(twin), EngineJob(twin), EngineJob(twin.replace(seed=22))]
    )
    assert same(first, second)
    assert not same(first, other)


def test_jobs_of_different_durations_share_a_batch_and_each_gets_its_exact_length(
    engine: MusicGenEngine,
) -> None:
    durations = [2, 1, 3]
    progress: dict[int, list[tuple[int, int]]] = {d: [] for d in durations}

    def recorder(duration: int) -> Callable[[int, int], None]:
        return lambda done, total: progress[duration].append((done, total))

    jobs = [EngineJob(request(duration=d, seed=d), on_progress=recorder(d)) for d in durations]
    outcomes = engine.generate_batch(jobs)
    for duration, outcome in zip(durations, outcomes, strict=True):
        generated = audio_of(outcome)
        assert generated.wav.shape == (1, duration * SAMPLE_RATE)
        assert generated.wav[:, -640:].abs().max() > 0  # generated to its end, not padded
        steps = 50 * duration + 3
        assert progress[duration] == [(step, steps) for step in range(1, steps + 1)]
        assert same(generated, engine.generate(request(duration=duration, seed=duration)))


def test_cancelling_one_job_drops_it_and_leaves_the_others_music_unchanged(engine: MusicGenEngine) -> None:
    steps_seen: list[int] = []
    doomed = EngineJob(
        request(seed=31, duration=2),
        on_progress=lambda done, total: steps_seen.append(done),
        is_cancelled=lambda: len(steps_seen) >= 10,
    )
    keepers = [request(seed=32), request(seed=33, duration=2, temperature=0)]
    outcomes = engine.generate_batch([EngineJob(keepers[0]), doomed, EngineJob(keepers[1])])
    assert isinstance(outcomes[1], GenerationCancelled)
    assert steps_seen[-1] == 10  # it left the batch at the next step boundary
    for keeper, outcome in zip(keepers, [outcomes[0], outcomes[2]], strict=True):
        assert same(outcome, engine.generate(keeper))


def test_a_job_cancelled_before_the_batch_starts_never_runs(engine: MusicGenEngine) -> None:
    outcomes = engine.generate_batch(
        [EngineJob(request(), is_cancelled=lambda: True), EngineJob(request(seed=3))]
    )
    assert isinstance(outcomes[0], GenerationCancelled)
    assert same(outcomes[1], engine.generate(request(seed=3)))


def test_a_bad_request_fails_alone_and_its_neighbours_are_unharmed(
    engine: MusicGenEngine, tmp_path: Path
) -> None:
    melody_clip = tmp_path / "a.wav"
    soundfile.write(str(melody_clip), np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"this is not an mp3 file" * 100)
    bad = [
        request(duration=121),  # invalid: over [limits] max_duration_s
        request(model_version="finetuned"),  # none configured
        request(input_audio=str(melody_clip)),  # small cannot follow a melody
        request(input_audio=str(garbage), continuation=True),  # not audio
    ]
    good = request(seed=41)
    # Not the person's fault (the bot always hands over a file), but still this job's failure alone.
    lost = request(input_audio=str(tmp_path / "missing.wav"), continuation=True)
    outcomes = engine.generate_batch([EngineJob(r) for r in bad] + [EngineJob(good), EngineJob(lost)])
    assert all(isinstance(outcome, RequestError) for outcome in outcomes[:4]), outcomes[:4]
    assert same(outcomes[4], engine.generate(good))
    assert isinstance(outcomes[5], FileNotFoundError)


def test_melody_jobs_batch_together_and_follow_their_own_melodies(
    engine: MusicGenEngine, tmp_path: Path
) -> None:
    def tone(name: str, frequency: float) -> str:
        t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
        path = tmp_path / name
        soundfile.write(str(path), (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), SAMPLE_RATE)
        return str(path)

    melody = request(model_version="melody", temperature=0)
    jobs = [
        melody.replace(input_audio=tone("a.wav", 440.0)),
        melody.replace(input_audio=tone("c.wav", 261.63), seed=5, temperature=1.0),
        # Another text length makes another prefix length: it shares the batch all the same.
        melody.replace(input_audio=tone("e.wav", 329.63), prompt="a much longer description of the song"),
        melody.replace(prompt="no melody at all"),
    ]
    outcomes = engine.generate_batch([EngineJob(r) for r in jobs])
    for job, outcome in zip(jobs, outcomes, strict=True):
        assert same(outcome, engine.generate(job))
    assert not same(outcomes[0], outcomes[3])


def test_a_continuation_in_a_batch_is_the_same_as_alone(engine: MusicGenEngine, tmp_path: Path) -> None:
    clip = tmp_path / "clip.wav"
    noise = 0.3 * np.random.default_rng(1).standard_normal(SAMPLE_RATE // 2)
    soundfile.write(str(clip), noise.astype(np.float32), SAMPLE_RATE)
    continuation = request(input_audio=str(clip), continuation=True, seed=8)
    outcomes = engine.generate_batch([EngineJob(request(seed=7)), EngineJob(continuation)])
    assert audio_of(outcomes[1]).wav.shape == (1, (25 + 50) * 640)
    assert same(outcomes[1], engine.generate(continuation))
    assert same(outcomes[0], engine.generate(request(seed=7)))


def test_encode_decode_in_a_batch_runs_on_its_own(engine: MusicGenEngine, tmp_path: Path) -> None:
    clip = tmp_path / "clip.wav"
    soundfile.write(str(clip), np.zeros(SAMPLE_RATE // 2, dtype=np.float32), SAMPLE_RATE)
    round_trip = GenerationRequest(model_version="encode-decode", input_audio=str(clip), seed=1)
    outcomes = engine.generate_batch([EngineJob(round_trip), EngineJob(request(seed=9))])
    assert audio_of(outcomes[0]).wav.shape == (1, SAMPLE_RATE // 2)
    assert same(outcomes[1], engine.generate(request(seed=9)))


# -- [engine] static_cache and compile -------------------------------------------------------------
def test_the_static_cache_gives_the_same_tokens_as_the_dynamic_one(
    engine: MusicGenEngine, engine_settings: EngineSettings
) -> None:
    options = engine_settings.engine.model_copy(update={"static_cache": True})
    static = MusicGenEngine(engine_settings.model_copy(update={"engine": options}), engine.cache)
    steps_seen: list[int] = []
    jobs = [
        EngineJob(request(temperature=0, duration=2)),
        EngineJob(request(temperature=0, prompt="dark techno with a long description", duration=1)),
        # Leaves the batch early: with a fixed-size cache it stays on as an idle row.
        EngineJob(
            request(seed=5, duration=2),
            on_progress=lambda done, total: steps_seen.append(done),
            is_cancelled=lambda: len(steps_seen) >= 20,
        ),
        EngineJob(request(seed=6, top_p=0.8, classifier_free_guidance=1)),
    ]
    plain = engine.generate_batch(jobs[:2] + jobs[3:])
    steps_seen.clear()
    fixed = static.generate_batch(jobs)
    assert isinstance(fixed[2], GenerationCancelled)
    for want, got in zip(plain, [fixed[0], fixed[1], fixed[3]], strict=True):
        assert same(got, want)
    melody = request(model_version="melody", temperature=0)
    assert same(static.generate(melody), engine.generate(melody))


def test_the_static_cache_grows_a_short_position_table_to_its_size_before_the_step_reads_it(
    engine: MusicGenEngine, engine_settings: EngineSettings
) -> None:
    # The step reads positions from the table without growing it (a growth check inside the step is
    # a data-dependent branch that breaks torch.compile's graph): the cache factory grows it first.
    options = engine_settings.engine.model_copy(update={"static_cache": True})
    static = MusicGenEngine(engine_settings.model_copy(update={"engine": options}))  # its own models
    table = static.cache.get("small").model.decoder.model.decoder.embed_positions
    table.make_weights(8, table.embedding_dim)  # a 1 s job needs 50 positions and more
    job = request(temperature=0)
    assert same(static.generate(job), engine.generate(job))
    assert table.weights.shape[0] == STATIC_CACHE_GRANULE


def has_cxx_compiler() -> bool:
    """Whether there is a C++ compiler for torch.compile's CPU backend (inductor) to build with."""
    return any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "clang++"))


@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on a CPU needs a C++ compiler")
def test_the_compiled_step_on_the_static_cache_gives_the_plain_paths_greedy_tokens(
    engine: MusicGenEngine, engine_settings: EngineSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a GPU runs as CUDA graphs ("reduce-overhead"); on a CPU the same compiled graph without
    # them. Compiling the tiny model takes about 35 s on a 2-core machine with a cold inductor cache.
    # Its kernels are built in this process: a pool of compile workers, each importing torch, cost
    # about 8 s of CPU more for the same build time (while the other modules keep both cores busy).
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    options = engine_settings.engine.model_copy(update={"static_cache": True, "compile": True})
    compiled = MusicGenEngine(engine_settings.model_copy(update={"engine": options}), engine.cache)
    jobs = [
        EngineJob(request(temperature=0, duration=2)),
        EngineJob(request(temperature=0, prompt="dark techno with a long description")),
    ]
    for got, want in zip(compiled.generate_batch(jobs), engine.generate_batch(jobs), strict=True):
        assert same(got, want)
    decoder = compiled._decoder_for(compiled.cache.get("small"))
    assert isinstance(decoder.forward, torch._dynamo.eval_frame.OptimizedModule)
