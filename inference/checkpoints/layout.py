"""How a transformers MusicGen checkpoint is laid out: its configs, generation defaults and the
tokenizer/processor files beside the weights. Built in one place for the two writers of such folders:
the audiocraft converter (`inference.checkpoints.convert`) and the random test models (`inference.checkpoints.random_models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# 30 s at 50 frames/s plus the 3 steps the delay pattern consumes.
MAX_GENERATION_LENGTH = 1503
MAX_POSITIONS = 2048


def decoder_config(
    *,
    melody: bool,
    codebook_size: int,
    num_codebooks: int,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    ffn_dim: int,
    audio_channels: int = 1,
) -> Any:
    """A MusicGen (or MusicGen-melody) decoder config; the special pad/bos id is one past the codebook."""
    from transformers import MusicgenDecoderConfig, MusicgenMelodyDecoderConfig

    decoder_class = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    return decoder_class(
        vocab_size=codebook_size,
        max_position_embeddings=MAX_POSITIONS,
        num_hidden_layers=num_layers,
        ffn_dim=ffn_dim,
        num_attention_heads=num_heads,
        hidden_size=hidden_size,
        activation_function="gelu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        num_codebooks=num_codebooks,
        audio_channels=audio_channels,
        pad_token_id=codebook_size,
        bos_token_id=codebook_size,
        tie_word_embeddings=False,
    )


def musicgen_config(
    *,
    text_encoder: Any,
    audio_encoder: Any,
    decoder: Any,
    melody: bool,
    num_chroma: int = 12,
    chroma_length: int = 235,
) -> Any:
    """The composite MusicgenConfig / MusicgenMelodyConfig of the three parts' configs."""
    from transformers import MusicgenConfig, MusicgenMelodyConfig

    parts: dict[str, Any] = dict(
        text_encoder=text_encoder.to_dict(), audio_encoder=audio_encoder.to_dict(), decoder=decoder.to_dict()
    )
    config: Any
    if melody:
        config = MusicgenMelodyConfig(num_chroma=num_chroma, chroma_length=chroma_length, **parts)
    else:
        config = MusicgenConfig(**parts)
    # Models composed by hand otherwise keep _attn_implementation=None and compute wrong logits;
    # sdpa is what from_pretrained would pick.
    set_attn_implementation(config, "sdpa")
    return config


def model_class(melody: bool) -> Any:
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    return MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration


def set_attn_implementation(config: Any, implementation: str) -> None:
    """Set the attention implementation on a composite config's decoder and text encoder."""
    # EnCodec has no attention and refuses any setting, so it is left out by name.
    config._attn_implementation = {
        "": implementation,
        "text_encoder": implementation,
        "decoder": implementation,
    }


def set_generation_defaults(
    model: Any,
    *,
    codebook_size: int,
    do_sample: bool = True,
    top_k: int = 250,
    top_p: float = 0.0,
    guidance_scale: float = 3.0,
) -> None:
    """The generation config a checkpoint ships with (the published ones: sampling, top-k 250, cfg 3, 30 s)."""
    gc = model.generation_config
    gc.do_sample = do_sample
    gc.top_k = top_k
    gc.top_p = top_p if top_p > 0 else 1.0
    gc.guidance_scale = guidance_scale
    gc.max_length = MAX_GENERATION_LENGTH
    gc.decoder_start_token_id = codebook_size
    gc.pad_token_id = codebook_size
    gc.bos_token_id = codebook_size


def save_tokenizer_and_processor(
    folder: Path, tokenizer: Any, *, melody: bool, audio_channels: int, sample_rate: int
) -> None:
    """Save the tokenizer, and for text-only models the MusicgenProcessor (AutoProcessor works)."""
    tokenizer.save_pretrained(folder)
    if melody:
        # MusicgenMelodyFeatureExtractor cannot even be built without torchaudio (no build exists for
        # current torch); the engine computes the chroma itself, so the folder holds the tokenizer only.
        return
    from transformers import EncodecFeatureExtractor, MusicgenProcessor

    feature_extractor = EncodecFeatureExtractor(
        feature_size=audio_channels, sampling_rate=sample_rate, padding_value=0.0
    )
    MusicgenProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
