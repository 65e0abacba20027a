"""audiocraft 1.3.0's own MusicGen, loaded from the tiny exports our tests write (tier venv only).

audiocraft loads an export with its own loaders and builders; the only thing adapted is where the T5
text encoder comes from (there is no model hub here): the export's `conditioners.description.t5.name`
names the local tiny T5 folder, which is registered with audiocraft's T5Conditioner, and its
tokenizer is loaded with AutoTokenizer (the tiny T5 has a BPE tokenizer, not t5-base's sentencepiece
one). The export's EnCodec pointer (facebook/encodec_32khz) is served by the export's local EnCodec
folder through audiocraft's own HF EnCodec wrapper, which is what `CompressionModel.get_pretrained`
does with the hub copy; `MusicGen` then wraps it for stereo as its LM's config says
(`get_wrapped_compression_model`: `InterleaveStereoCompressionModel`).

Used by the tier's tests and by scripts/make-audiocraft-references.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer, EncodecModel, T5Config

from inference.checkpoints.convert import LM_STATE_FILE
from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR


def audiocraft_view(export: Path, destination: Path) -> Path:
    """A copy of `export` whose xp.cfg names the local tiny T5 instead of t5-base (nothing else changes)."""
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(export, destination)
    package = torch.load(export / LM_STATE_FILE, map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(package["xp.cfg"])
    cfg.conditioners.description.t5.name = str(export / TEXT_ENCODER_DIR)
    package["xp.cfg"] = OmegaConf.to_yaml(cfg)
    torch.save(package, destination / LM_STATE_FILE)
    return destination


@contextmanager
def local_t5(text_encoder: str) -> Iterator[None]:
    """audiocraft's T5Conditioner accepts the local tiny T5 folder while the block runs."""
    from audiocraft.modules import conditioners

    t5 = conditioners.T5Conditioner
    saved = (t5.MODELS, t5.MODELS_DIMS, conditioners.T5Tokenizer)
    t5.MODELS = [*t5.MODELS, text_encoder]
    t5.MODELS_DIMS = {**t5.MODELS_DIMS, text_encoder: T5Config.from_pretrained(text_encoder).d_model}
    conditioners.T5Tokenizer = AutoTokenizer
    try:
        yield
    finally:
        t5.MODELS, t5.MODELS_DIMS, conditioners.T5Tokenizer = saved


@contextmanager
def demucs_stand_in(separator: torch.nn.Module) -> Iterator[None]:
    """audiocraft's ChromaStemConditioner gets `separator` where it loads demucs' pretrained htdemucs
    (its weights cannot be fetched here) while the block runs."""
    from demucs import pretrained

    saved = pretrained.get_model
    pretrained.get_model = lambda *args, **kwargs: separator
    try:
        yield
    finally:
        pretrained.get_model = saved


def load_audiocraft_lm(export: Path, workdir: Path, *, separator: torch.nn.Module | None = None) -> Any:
    """The export's LM through audiocraft's `loaders.load_lm_model` (builders + strict state dict)."""
    from audiocraft.models import loaders

    view = audiocraft_view(export, workdir / f"{export.name}-audiocraft-view")
    with local_t5(str(export / TEXT_ENCODER_DIR)):
        if separator is None:
            return loaders.load_lm_model(str(view / LM_STATE_FILE), device="cpu")
        with demucs_stand_in(separator):
            return loaders.load_lm_model(str(view / LM_STATE_FILE), device="cpu")


def load_audiocraft_musicgen(
    export: Path, workdir: Path, *, separator: torch.nn.Module | None = None, max_duration: float = 30
) -> Any:
    """audiocraft's MusicGen for an export, set up as `MusicGen.get_pretrained` sets up a released
    model (a melody model's chroma matches the generated length, without masking)."""
    from audiocraft.models import MusicGen
    from audiocraft.models.encodec import HFEncodecCompressionModel

    lm = load_audiocraft_lm(export, workdir, separator=separator)
    compression = HFEncodecCompressionModel(EncodecModel.from_pretrained(export / COMPRESSION_DIR)).eval()
    model = MusicGen("tier-test", compression, lm, max_duration=max_duration)
    if "self_wav" in lm.condition_provider.conditioners:
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False
    return model


def audiocraft_generates(
    musicgen: Any,
    *,
    prompt: str | None,
    new_seconds: float,
    guidance: float,
    melody: torch.Tensor | None = None,
    continued: torch.Tensor | None = None,
    sample_rate: int = 32_000,
    extend_stride: float = 18.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy generation with audiocraft's MusicGen API as the Cog predictor calls it: `generate`,
    `generate_with_chroma` (a melody [channels, samples]) or `generate_continuation` (a clip
    [channels, samples] continued by `new_seconds`); past the model's window, extended by
    `extend_stride` seconds a window. Returns its codes [codebooks, frames] and audio [channels, samples]."""
    descriptions = [prompt]
    prompt_seconds = 0.0 if continued is None else continued.shape[-1] / sample_rate
    musicgen.set_generation_params(
        use_sampling=False,
        duration=prompt_seconds + new_seconds,
        cfg_coef=guidance,
        extend_stride=extend_stride,
    )
    with torch.no_grad():
        if continued is not None:
            wav, codes = musicgen.generate_continuation(
                continued[None], sample_rate, descriptions, progress=False, return_tokens=True
            )
        elif melody is not None:
            wav, codes = musicgen.generate_with_chroma(
                descriptions, melody[None], sample_rate, progress=False, return_tokens=True
            )
        else:
            wav, codes = musicgen.generate(descriptions, progress=False, return_tokens=True)
    return codes[0], wav[0]
