"""GenerationRequest checks that need the input clip's length (the 30 s budget of a continuation)."""

from __future__ import annotations

import pytest

from inference.request import GenerationRequest, RequestError

SAMPLE_RATE = 32_000


@pytest.mark.parametrize(("start", "extra_seconds"), [(3.02, 1), (3.2, 1), (0.3, 1), (1.1, 2)])
def test_a_trimmed_clip_plus_new_seconds_of_exactly_30_s_is_accepted(
    start: float, extra_seconds: int
) -> None:
    # A member trims the clip so that it and the continuation fill the 30 s exactly. The engine sees
    # the clip end as start + samples / rate, and floating point must not turn 30 s into 30.000000000000004.
    clip_seconds = 30 - extra_seconds
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


def test_a_clip_plus_new_seconds_over_30_s_is_still_refused() -> None:
    request = GenerationRequest(model_version="small", input_audio="clip.wav", continuation=True, duration=2)
    with pytest.raises(RequestError, match="30 s"):
        request.check_input_length(28.01)
