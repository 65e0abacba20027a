"""GenerationRequest checks that need the input clip's length (a continuation's clip and the window)."""

from __future__ import annotations

import pytest

from inference.request import GenerationRequest, RequestError

SAMPLE_RATE = 32_000


@pytest.mark.parametrize(("start", "extra_seconds"), [(3.02, 1), (3.2, 1), (0.3, 1), (1.1, 2)])
def test_a_trimmed_clip_just_shorter_than_the_window_is_accepted(start: float, extra_seconds: int) -> None:
    # A member trims the clip to just under the model's 30 s. The engine sees the clip end as
    # start + samples / rate, and floating point must not turn 29.98 s into 29.980000000000004.
    clip_seconds = 29.98
    end = start + clip_seconds
    request = GenerationRequest(
        model_version="small",
        input_audio="clip.wav",
        continuation=True,
        continuation_start=start,
        continuation_end=end,
        duration=extra_seconds,
    ).validate()
    samples = round(end * SAMPLE_RATE) - round(start * SAMPLE_RATE)
    request.check_input_length(start + samples / SAMPLE_RATE)


def test_a_clip_plus_new_seconds_past_the_window_is_accepted_and_a_whole_window_of_clip_is_not() -> None:
    # The piece is extended window by window past 30 s; the clip itself must leave room in the first.
    request = GenerationRequest(
        model_version="small", input_audio="clip.wav", continuation=True, duration=100
    )
    request.check_input_length(28.01)
    with pytest.raises(RequestError, match="shorter than 30 s"):
        request.check_input_length(30.0)
    with pytest.raises(RequestError, match="shorter than 2 s"):
        request.check_input_length(2.5, window_s=2.0)


def test_text_jobs_of_one_model_share_a_batch_whatever_their_settings() -> None:
    from inference.request import batch_key

    base = GenerationRequest(model_version="small", prompt="a")
    varied = base.replace(
        prompt="b", seed=3, duration=20, top_p=0.5, temperature=0, normalization_strategy="peak"
    )
    assert batch_key(base) is not None and batch_key(base) == batch_key(varied)
    assert batch_key(base) != batch_key(base.replace(model_version="medium"))
    assert batch_key(base) != batch_key(base, model_source="/models/other")


def test_melody_jobs_batch_with_melody_jobs_continuations_with_text_and_round_trips_run_alone() -> None:
    from inference.request import batch_key

    text = GenerationRequest(model_version="melody", prompt="a")
    melody = text.replace(input_audio="a.wav")
    assert batch_key(melody) == batch_key(melody.replace(input_audio="b.wav", seed=4))
    assert batch_key(melody) != batch_key(text)
    assert batch_key(melody.replace(continuation=True)) == batch_key(text)
    assert batch_key(GenerationRequest(model_version="encode-decode", input_audio="a.wav")) is None
