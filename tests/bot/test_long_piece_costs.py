"""What the bot counts for a piece longer than the model's 30 s window: its deadline grows with every
second it makes (and a melody with every window it reads), and in a batch it holds one window at a time.
"""

from __future__ import annotations

from bot.pipeline.deadlines import DeadlinePolicy
from bot.pipeline.dispatcher import audio_seconds
from inference.request import GenerationRequest


def test_a_long_piece_s_deadline_grows_with_every_second_and_a_melody_with_every_window() -> None:
    policy = DeadlinePolicy(base_s=600, per_audio_second_s=60, stall_s=300, extend_stride_s=18)
    long_text = GenerationRequest(model_version="small", prompt="a", duration=120, seed=1)
    assert policy.deadline_s(long_text) == 600 + 120 * 60
    # A 120 s melody is six windows of 30 s (18 s apart), each separating and reading its own stretch.
    long_melody = long_text.replace(model_version="melody", input_audio="tune.wav")
    assert policy.deadline_s(long_melody) == 600 + (120 + 6 * 30) * 60
    # A continuation reads a clip shorter than one window, however many seconds it adds.
    assert (
        policy.deadline_s(long_text.replace(input_audio="clip.wav", continuation=True))
        == 600 + (120 + 30) * 60
    )


def test_a_long_piece_holds_one_window_in_a_batch() -> None:
    """The batch budget counts what a job holds in the decoder at once: its windows come one at a time."""
    assert audio_seconds(GenerationRequest(model_version="small", prompt="a", duration=8)) == 8
    assert audio_seconds(GenerationRequest(model_version="small", prompt="a", duration=120)) == 30
    assert (
        audio_seconds(GenerationRequest(model_version="small", input_audio="a.wav", continuation=True)) == 30
    )
