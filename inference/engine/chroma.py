"""Chroma features for melody conditioning, computed as audiocraft's `ChromaExtractor` does.

transformers' `MusicgenMelodyFeatureExtractor` needs torchaudio (no build exists for current torch), so
the same computation is done here with `torch.stft` and transformers' librosa-equivalent chroma filter
bank. audiocraft's melody model uses radix2_exp=14 (window and FFT of 2^14 samples, hop of a quarter
window), a power-2 spectrogram normalised by the window's energy, 12 chroma bins, inf-norm
normalisation and an argmax one-hot per frame.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers.audio_utils import chroma_filter_bank

CHROMA_N_FFT = 2**14
CHROMA_HOP_LENGTH = CHROMA_N_FFT // 4
NUM_CHROMA = 12
# Bin order of the chroma features (librosa's base_c=True starts at C).
CHROMA_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@functools.lru_cache(maxsize=4)
def _chroma_filters(sample_rate: int, n_fft: int, num_chroma: int) -> torch.Tensor:
    # librosa.filters.chroma(sr, n_fft, tuning=0, n_chroma) as audiocraft builds it.
    bank = chroma_filter_bank(
        num_frequency_bins=n_fft, num_chroma=num_chroma, sampling_rate=sample_rate, tuning=0.0
    )
    return torch.from_numpy(bank).float()


def power_spectrogram(
    wav: torch.Tensor, *, n_fft: int = CHROMA_N_FFT, hop_length: int = CHROMA_HOP_LENGTH
) -> torch.Tensor:
    """|STFT|^2 of `wav` [..., T] -> [..., n_fft // 2 + 1, frames], as torchaudio's
    `Spectrogram(n_fft, win_length=n_fft, hop_length, power=2, center=True, normalized=True)`."""
    window = torch.hann_window(n_fft, device=wav.device, dtype=wav.dtype)
    leading = wav.shape[:-1]
    spec = torch.stft(
        wav.reshape(-1, wav.shape[-1]),
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    # torchaudio's normalized=True divides by the window's L2 norm (not torch.stft's 1/sqrt(n_fft)).
    spec = spec / window.pow(2).sum().sqrt()
    power = spec.abs().pow(2)
    return power.reshape(*leading, power.shape[-2], power.shape[-1])


def extract_chroma(wav: torch.Tensor, sample_rate: int, *, argmax: bool = True) -> torch.Tensor:
    """Chroma of a mono waveform.

    wav: [T] or [1, T] (or [B, 1, T]) float audio at `sample_rate`.
    Returns [B, frames, 12] float32 (B = 1 for unbatched input): per frame, one-hot on the dominant
    pitch class when `argmax` (audiocraft's melody conditioner), else inf-normalised energies.
    """
    if wav.dim() == 1:
        wav = wav[None, None]
    elif wav.dim() == 2:
        wav = wav[None]
    if wav.shape[1] != 1:
        raise ValueError(f"extract_chroma expects mono audio, got {wav.shape[1]} channels")
    wav = wav.float()
    length = wav.shape[-1]
    if length < CHROMA_N_FFT:
        # Centre short clips in one FFT window, as audiocraft does.
        pad = CHROMA_N_FFT - length
        wav = F.pad(wav, (pad // 2, pad // 2 + pad % 2))
    spec = power_spectrogram(wav[:, 0])  # [B, freqs, frames]
    filters = _chroma_filters(sample_rate, CHROMA_N_FFT, NUM_CHROMA).to(spec.device)
    raw_chroma = torch.einsum("cf,bft->bct", filters, spec)
    norm_chroma = F.normalize(raw_chroma, p=float("inf"), dim=-2, eps=1e-6)
    chroma = norm_chroma.transpose(1, 2).contiguous()  # [B, frames, chroma]
    if argmax:
        index = chroma.argmax(-1, keepdim=True)
        chroma = torch.zeros_like(chroma).scatter_(-1, index, 1.0)
    return chroma
