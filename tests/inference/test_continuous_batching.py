"""Continuous batching in the engine (`MusicGenEngine.generate_batch(joining=..., on_outcome=...)`) on
the tiny CPU models: jobs that join a batch between two decoder steps make the music they make alone
and leave their neighbours' music as it was; every job is answered the moment it ends; rows of
different prompt lengths share one batch.

"The same music" is identical audio, as in test_batching.py (the same caveat on float32 near-ties
across batch shapes applies; it does not arise in these draws).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile

from inference.engine.musicgen_engine import EngineJob, GeneratedAudio, GenerationCancelled, MusicGenEngine
from inference.request import GenerationRequest, RequestError
from inference.settings import EngineSettings
from tests.inference.audio_checks import audio_of, continuation_clip, same

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def request(**changes: object) -> GenerationRequest:
    return GenerationRequest(
        model_version="small", prompt="calm acoustic guitar", duration=2, seed=11
    ).replace(**changes)


class Steps:
    """Counts the decoder steps of the batch's first job: `joining` hands over jobs at chosen steps."""

    def __init__(self, joins: dict[int, Sequence[EngineJob]]) -> None:
        self.done = 0
        self.joins = dict(joins)
        self.joined_at: dict[int, int] = {}

    def on_progress(self, done: int, total: int) -> None:
        self.done = done

    def joining(self) -> list[EngineJob]:
        jobs = list(self.joins.pop(self.done, ()))
        for job in jobs:
            self.joined_at[id(job)] = self.done
        return jobs


def run_with_joins(
    engine: MusicGenEngine, first: GenerationRequest, joins: dict[int, Sequence[EngineJob]]
) -> dict[int, GeneratedAudio | Exception]:
    """Run `first` as a batch that the `joins` jobs enter after the given steps of `first`; the
    outcome of every job by id(job), the first one under key 0."""
    steps = Steps(joins)
    lead = EngineJob(first, on_progress=steps.on_progress)
    outcomes: dict[int, GeneratedAudio | Exception] = {}

    def on_outcome(job: EngineJob, outcome: GeneratedAudio | Exception) -> None:
        assert id(job) not in outcomes, "a job was answered twice"
        outcomes[0 if job is lead else id(job)] = outcome

    (returned,) = engine.generate_batch([lead], joining=steps.joining, on_outcome=on_outcome)
    assert returned is outcomes[0]
    assert not steps.joins, "every join was offered"
    return outcomes


@pytest.mark.parametrize(
    "joiner",
    [
        request(prompt="jazz trio with a walking bass line and brushed drums", seed=1, temperature=0),
        request(prompt="techno", seed=2, top_p=0.9, duration=1),
        request(prompt="folk", seed=4, classifier_free_guidance=1, top_k=20, duration=3),
    ],
    ids=["greedy-longer-text", "nucleus-shorter-job", "no-guidance-longer-job"],
)
def test_a_job_that_joins_a_running_batch_makes_its_own_music_and_leaves_the_batch_unchanged(
    engine: MusicGenEngine, joiner: GenerationRequest
) -> None:
    first = request(seed=7)
    late = EngineJob(joiner)
    outcomes = run_with_joins(engine, first, {17: [late]})
    assert same(outcomes[id(late)], engine.generate(joiner))
    assert same(outcomes[0], engine.generate(first))


def test_jobs_join_at_several_steps_and_after_others_have_left(engine: MusicGenEngine) -> None:
    first = request(seed=21, duration=1)
    second = EngineJob(request(prompt="drum and bass", seed=22, duration=2))
    third = EngineJob(request(prompt="lofi hip hop with vinyl crackle", seed=23, duration=1, temperature=0))
    # The third joins once the first has left the batch (the first has 53 steps): the cache then
    # holds the second alone, with columns the third never wrote.
    outcomes = run_with_joins(engine, first, {5: [second], 53: [third]})
    for job in (second, third):
        assert same(outcomes[id(job)], engine.generate(job.request))
    assert same(outcomes[0], engine.generate(first))


def test_in_bfloat16_rows_that_join_make_the_music_they_make_alone(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    # On a CPU with AMX: oneDNN's bfloat16 products and a bfloat16 cache, whose join masks go to
    # SDPA's kernel; elsewhere fbgemm's products and a float32 cache.
    options = engine_settings.engine.model_copy(update={"dtype": "bfloat16"})
    engine = MusicGenEngine(engine_settings.model_copy(update={"engine": options}))
    first = request(seed=61)
    longer_text = EngineJob(request(prompt="a much longer description of a slow jazz ballad", seed=62))
    continuation = EngineJob(
        request(input_audio=continuation_clip(tmp_path, 0.5, 440), continuation=True, duration=1, seed=63)
    )
    outcomes = run_with_joins(engine, first, {5: [longer_text], 9: [continuation]})
    for job in (longer_text, continuation):
        assert same(outcomes[id(job)], engine.generate(job.request))
    assert same(outcomes[0], engine.generate(first))


def test_melody_jobs_join_a_melody_batch(engine: MusicGenEngine, tmp_path: Path) -> None:
    rate = 32_000
    t = np.arange(rate * 2) / rate
    clip = tmp_path / "melody.wav"
    soundfile.write(clip, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    first = request(model_version="melody", input_audio=str(clip), seed=31)
    # A different text length makes a different prefix length: the rows join all the same.
    joiner = request(model_version="melody", prompt="a much longer description of a string quartet", seed=32)
    late = EngineJob(joiner)
    outcomes = run_with_joins(engine, first, {9: [late]})
    assert same(outcomes[id(late)], engine.generate(joiner))
    assert same(outcomes[0], engine.generate(first))


def test_continuations_of_different_lengths_share_one_batch(engine: MusicGenEngine, tmp_path: Path) -> None:
    requests = [
        request(input_audio=continuation_clip(tmp_path, 1.0, 220), continuation=True, duration=1, seed=41),
        request(input_audio=continuation_clip(tmp_path, 0.5, 440), continuation=True, duration=1, seed=42),
        request(prompt="bright synth arpeggio", seed=43, duration=1),
    ]
    steps_in_order: list[int] = []

    def recorder(index: int) -> Callable[[int, int], None]:
        return lambda done, total: steps_in_order.append(index)

    outcomes = engine.generate_batch([EngineJob(r, on_progress=recorder(i)) for i, r in enumerate(requests)])
    # One batch: every job makes its first step before any makes its second.
    assert sorted(steps_in_order[:3]) == [0, 1, 2]
    assert steps_in_order[3:6] == [0, 1, 2]
    for made, alone in zip(outcomes, requests, strict=True):
        assert same(made, engine.generate(alone))


def test_each_job_is_answered_the_moment_it_ends(engine: MusicGenEngine) -> None:
    progress = {"long": 0}
    answered: list[tuple[str, int]] = []
    short = EngineJob(request(seed=51, duration=1))
    long = EngineJob(
        request(seed=52, duration=3), on_progress=lambda done, total: progress.__setitem__("long", done)
    )

    def on_outcome(job: EngineJob, outcome: GeneratedAudio | Exception) -> None:
        audio_of(outcome)
        answered.append(("short" if job is short else "long", progress["long"]))

    engine.generate_batch([short, long], on_outcome=on_outcome)
    # The 1 s job (53 steps) is answered in the step it ends, while the 3 s job (153 steps) still
    # decodes: the long job has reported 52 or 53 of its steps by then.
    (first, long_steps), second = answered
    assert first == "short" and 52 <= long_steps <= 53
    assert second == ("long", 153)


def test_a_joining_job_that_fails_or_is_cancelled_ends_alone(engine: MusicGenEngine) -> None:
    first = request(seed=61)
    bad = EngineJob(request(model_version="finetuned"))  # no fine-tune is configured
    steps_seen: list[int] = []
    doomed = EngineJob(
        request(seed=62, prompt="marching band"),
        on_progress=lambda done, total: steps_seen.append(done),
        is_cancelled=lambda: len(steps_seen) >= 4,
    )
    outcomes = run_with_joins(engine, first, {3: [bad], 10: [doomed]})
    assert isinstance(outcomes[id(bad)], RequestError)
    assert isinstance(outcomes[id(doomed)], GenerationCancelled)
    assert steps_seen == [1, 2, 3, 4]
    assert same(outcomes[0], engine.generate(first))


def test_a_joining_job_of_another_model_runs_after_the_batch(engine: MusicGenEngine) -> None:
    first = request(seed=71, duration=1)
    other = EngineJob(request(model_version="melody", seed=72, duration=1))
    order: list[str] = []
    lead_steps: list[int] = []
    lead = EngineJob(first, on_progress=lambda done, total: lead_steps.append(done))
    offered = [[other]]

    def joining() -> list[EngineJob]:
        return offered.pop() if offered and len(lead_steps) == 2 else []

    def on_outcome(job: EngineJob, outcome: GeneratedAudio | Exception) -> None:
        audio_of(outcome)
        order.append("lead" if job is lead else "other")

    engine.generate_batch([lead], joining=joining, on_outcome=on_outcome)
    assert order == ["lead", "other"]
