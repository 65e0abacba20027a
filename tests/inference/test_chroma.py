"""The melody chroma matches audiocraft's ChromaExtractor on signals whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.engine.chroma import (
    CHROMA_HOP_LENGTH,
    CHROMA_N_FFT,
    CHROMA_NOTE_NAMES,
    extract_chroma,
    power_spectrogram,
)

SAMPLE_RATE = 32_000


def tone(frequency: float, seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * SAMPLE_RATE), dtype=torch.float64) / SAMPLE_RATE
    return (0.5 * torch.sin(2 * torch.pi * frequency * t)).float()


@pytest.mark.parametrize(
    ("frequency", "note"), [(440.0, "A"), (261.63, "C"), (392.0, "G"), (880.0, "A"), (311.13, "D#")]
)
def test_a_pure_tone_lights_its_pitch_class_in_every_frame(frequency: float, note: str) -> None:
    chroma = extract_chroma(tone(frequency, 2.0), SAMPLE_RATE)
    frames = 2 * SAMPLE_RATE // CHROMA_HOP_LENGTH + 1  # centred STFT frames
    assert chroma.shape == (1, frames, 12)
    expected = torch.zeros(12)
    expected[CHROMA_NOTE_NAMES.index(note)] = 1
    assert torch.equal(chroma[0], expected.expand(frames, 12))


def test_a_melody_changes_bin_when_the_note_changes() -> None:
    melody = torch.cat([tone(440.0, 2.0), tone(261.63, 2.0)])
    bins = extract_chroma(melody, SAMPLE_RATE)[0].argmax(-1)
    assert bins[1] == CHROMA_NOTE_NAMES.index("A")
    assert bins[-2] == CHROMA_NOTE_NAMES.index("C")


def test_without_argmax_the_chroma_is_inf_normalised_energy() -> None:
    chroma = extract_chroma(tone(440.0, 1.0) + 0.5 * tone(261.63, 1.0), SAMPLE_RATE, argmax=False)[0]
    assert torch.allclose(chroma.max(-1).values, torch.ones(chroma.shape[0]))
    assert (chroma[:, CHROMA_NOTE_NAMES.index("A")] == 1).all()
    assert (chroma[:, CHROMA_NOTE_NAMES.index("C")] > 0.1).all()


def test_a_clip_shorter_than_one_window_is_padded_not_refused() -> None:
    chroma = extract_chroma(tone(440.0, 0.1), SAMPLE_RATE)
    assert chroma.shape == (1, CHROMA_N_FFT // CHROMA_HOP_LENGTH + 1, 12)
    assert chroma[0, 2].argmax() == CHROMA_NOTE_NAMES.index("A")


def test_the_spectrogram_is_torchaudios_window_normalised_power_stft() -> None:
    # A direct numpy reimplementation: reflect-pad n_fft/2, periodic Hann frames, rfft,
    # divide by the window's L2 norm (torchaudio's normalized=True), squared magnitude.
    signal = np.random.default_rng(0).standard_normal(SAMPLE_RATE).astype(np.float64)
    padded = np.pad(signal, CHROMA_N_FFT // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(CHROMA_N_FFT) / CHROMA_N_FFT)
    starts = range(0, len(padded) - CHROMA_N_FFT + 1, CHROMA_HOP_LENGTH)
    frames = np.stack([padded[s : s + CHROMA_N_FFT] * window for s in starts], axis=1)
    expected = np.abs(np.fft.rfft(frames, axis=0) / np.sqrt((window**2).sum())) ** 2
    ours = power_spectrogram(torch.from_numpy(signal))
    assert ours.shape == expected.shape
    assert np.allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_stereo_input_must_be_mixed_down_first() -> None:
    with pytest.raises(ValueError, match="mono"):
        extract_chroma(torch.zeros(2, SAMPLE_RATE), SAMPLE_RATE)
