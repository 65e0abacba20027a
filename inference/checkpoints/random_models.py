"""Random-weight MusicGen checkpoints for tests and benchmarks (there is no model hub here).

`make_test_model` builds the real architecture of a model version (the numbers of the published
facebook/musicgen-* configs, T5-base and EnCodec 32 kHz) or, with `tiny=True`, a few-layer version of
it that keeps everything the engine relies on: 32 kHz audio, 50 frames/s, 4 codebooks of 2048 codes,
the delay pattern, a T5 text encoder with a tokenizer, and (melody) 12-bin chroma conditioning.
With `stereo=True` it is the stereo model of that architecture, as facebook/musicgen-stereo-* are
made: the mono EnCodec, and a decoder that predicts 8 codebooks, left and right interleaved
(L0 R0 L1 R1 ...), with the stereo delay pattern (each pair delayed as its mono codebook).

Two on-disk formats:
- "transformers": a `from_pretrained` folder (MusicgenForConditionalGeneration or
  MusicgenMelodyForConditionalGeneration + tokenizer), with `text_encoder/` and `encodec/` beside the
  weights so a config can point `[models] text_encoder` / `compression` at them.
- "audiocraft": an audiocraft training export (`state_dict.bin` with `xp.cfg` + `best_state`, and
  `compression_state_dict.bin`), plus the `text_encoder/` and `encodec/` folders it needs.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from inference.checkpoints import layout
from inference.checkpoints.convert import (
    COMPRESSION_STATE_FILE,
    DEFAULT_COMPRESSION_ID,
    LM_STATE_FILE,
    WINDOW_CONFIG_ATTRIBUTE,
    delay_pattern,
    transformers_to_encodec_state,
    transformers_to_lm_state,
)

ModelArchitecture = Literal["small", "medium", "large", "melody", "melody-large"]
CheckpointFormat = Literal["transformers", "audiocraft"]

SAMPLE_RATE = 32_000
FRAME_RATE = 50
NUM_CODEBOOKS = 4  # of the mono EnCodec; a stereo decoder predicts twice as many
STEREO_CHANNELS = 2
CODEBOOK_SIZE = 2048
T5_VOCAB_SIZE = 32_128  # t5-base's embedding rows (its sentencepiece vocab plus 100 sentinels, padded)

TEXT_ENCODER_DIR = "text_encoder"
COMPRESSION_DIR = "encodec"
# Marks folders written by make_test_model (and says how they were built).
TEST_MODEL_MARKER = "test_model.json"


@dataclass(frozen=True)
class DecoderShape:
    """The decoder numbers of a MusicGen model version."""

    num_layers: int
    hidden_size: int
    num_heads: int
    ffn_dim: int


# facebook/musicgen-{small,medium,large,melody,melody-large} (the 1.5B melody model shares medium's
# decoder, the 3.3B melody-large large's); the stereo models share their mono model's numbers.
REAL_DECODERS: dict[str, DecoderShape] = {
    "small": DecoderShape(num_layers=24, hidden_size=1024, num_heads=16, ffn_dim=4096),
    "medium": DecoderShape(num_layers=48, hidden_size=1536, num_heads=24, ffn_dim=6144),
    "large": DecoderShape(num_layers=48, hidden_size=2048, num_heads=32, ffn_dim=8192),
    "melody": DecoderShape(num_layers=48, hidden_size=1536, num_heads=24, ffn_dim=6144),
    "melody-large": DecoderShape(num_layers=48, hidden_size=2048, num_heads=32, ffn_dim=8192),
}
MELODY_ARCHITECTURES = ("melody", "melody-large")
TINY_DECODER = DecoderShape(num_layers=2, hidden_size=64, num_heads=4, ffn_dim=128)
MELODY_NUM_CHROMA = 12
MELODY_CHROMA_LENGTH = 235  # 30 s of chroma frames, as in facebook/musicgen-melody
CHROMA_HOP = 2**14 // 4  # audiocraft's ChromaExtractor hops a quarter of its 2**14 window

# A small corpus for the test tokenizer: byte-level BPE never needs an unknown token, so every prompt
# maps to distinct ids (different prompts must condition the model differently).
_TOKENIZER_CORPUS = [
    "lofi hip hop beat with warm piano chords and vinyl crackle",
    "epic orchestral soundtrack with strings brass and choir",
    "upbeat electronic dance music with a heavy bass drop",
    "calm acoustic guitar melody for a rainy afternoon",
    "jazz trio with walking bass brushed drums and a saxophone solo",
    "80s synthwave with retro drums and arpeggiated synthesizers",
    "ambient drone pad slowly evolving texture",
    "rock anthem with distorted electric guitars and a driving drum groove",
    "happy ukulele tune with hand claps and whistling",
    "dark techno at 130 bpm with a pounding kick",
]


def t5_config(*, tiny: bool) -> Any:
    """T5-base's encoder numbers, or a 2-layer model with d_model 32."""
    from transformers import T5Config

    # What the two sizes share: T5-base's attention buckets, activation and special tokens.
    common = {
        "relative_attention_num_buckets": 32,
        "dropout_rate": 0.1,
        "feed_forward_proj": "relu",
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }
    if tiny:
        return T5Config(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, **common)
    return T5Config(
        vocab_size=T5_VOCAB_SIZE, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, **common
    )


def encodec_config(*, tiny: bool, audio_channels: int = 1) -> Any:
    """facebook/encodec_32khz's numbers; tiny keeps its rates and codebooks but few filters."""
    from transformers import EncodecConfig

    # hop = 8*5*4*4 = 640 samples -> 50 frames/s at 32 kHz; 2.2 kbps / (50 * 11 bits) = 4 codebooks.
    common: dict[str, Any] = dict(
        sampling_rate=SAMPLE_RATE,
        audio_channels=audio_channels,
        upsampling_ratios=[8, 5, 4, 4],
        target_bandwidths=[2.2],
        codebook_size=CODEBOOK_SIZE,
        norm_type="weight_norm",
        use_causal_conv=False,
        use_conv_shortcut=False,
        pad_mode="reflect",
        normalize=False,
        kernel_size=7,
        last_kernel_size=7,
        residual_kernel_size=3,
        dilation_growth_rate=2,
        compress=2,
        num_residual_layers=1,
        trim_right_ratio=1.0,
        chunk_length_s=None,
        overlap=None,
    )
    if tiny:
        return EncodecConfig(hidden_size=16, codebook_dim=16, num_filters=4, num_lstm_layers=1, **common)
    return EncodecConfig(hidden_size=128, codebook_dim=128, num_filters=64, num_lstm_layers=2, **common)


def decoder_shape(model_version: str, *, tiny: bool) -> DecoderShape:
    if model_version not in REAL_DECODERS:
        raise ValueError(f"unknown model version {model_version!r}; expected one of {sorted(REAL_DECODERS)}")
    return TINY_DECODER if tiny else REAL_DECODERS[model_version]


def is_melody_architecture(model_version: str) -> bool:
    return model_version in MELODY_ARCHITECTURES


def musicgen_config(model_version: str, *, tiny: bool = False, stereo: bool = False) -> Any:
    """The composite MusicgenConfig / MusicgenMelodyConfig of a model version (its stereo model with
    `stereo`: the same mono EnCodec, 8 interleaved codebooks in the decoder)."""
    shape = decoder_shape(model_version, tiny=tiny)
    melody = is_melody_architecture(model_version)
    channels = STEREO_CHANNELS if stereo else 1
    decoder = layout.decoder_config(
        melody=melody,
        codebook_size=CODEBOOK_SIZE,
        num_codebooks=NUM_CODEBOOKS * channels,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_heads=shape.num_heads,
        ffn_dim=shape.ffn_dim,
        audio_channels=channels,
    )
    return layout.musicgen_config(
        text_encoder=t5_config(tiny=tiny),
        audio_encoder=encodec_config(tiny=tiny),
        decoder=decoder,
        melody=melody,
        num_chroma=MELODY_NUM_CHROMA,
        chroma_length=MELODY_CHROMA_LENGTH,
    )


def build_tokenizer(*, vocab_size: int) -> Any:
    """A T5-like fast tokenizer built locally (pad 0, eos 1, unk 2, '</s>' appended to every text)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 400),
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>",
        pair="$A </s> $B </s>",
        special_tokens=[("</s>", eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        padding_side="right",
    )


def fill_random_codebooks(encodec: Any, generator: torch.Generator) -> None:
    """Give every quantizer codebook random codes, and scale the encoder's output to match them.

    Fresh codebooks are zeros (every code would sound alike). Random unit-variance codes alone are not
    enough either: a random encoder's outputs lie far from them, so every clip would encode to the same
    few codes and no test could tell two clips apart. So the encoder's last convolution is rescaled to
    give zero-mean, unit-variance embeddings (measured on a mix of noise and tones), the scale of the
    codes, as trained EnCodec encoders and codebooks share one.

    That measurement runs in float64, on a copy of the encoder: in float32 its last bits depend on
    the convolution kernels the CPU gets (oneDNN's AVX2 and AVX-512 ones round differently), and the
    checkpoint must be the same on every machine, since stored references name it by its digest.
    Rounded to float32, the float64 result no longer shows which kernels computed it.
    """
    with torch.no_grad():
        for layer in encodec.quantizer.layers:
            codebook = layer.codebook
            embed = torch.randn(codebook.embed.shape, generator=generator)
            codebook.embed.copy_(embed)
            codebook.embed_avg.copy_(embed)
            codebook.cluster_size.fill_(1.0)
            codebook.inited.fill_(1.0)

        mean, scale = _encoder_output_statistics(encodec, generator)
        last_conv = encodec.encoder.layers[-1].conv
        # Weight norm: weight = g * v / |v|, so scaling g scales the weight.
        if hasattr(last_conv, "parametrizations"):
            last_conv.parametrizations.weight.original0.div_(scale)
        else:
            last_conv.weight.div_(scale)
        last_conv.bias.sub_(mean).div_(scale)


def _encoder_output_statistics(encodec: Any, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """The per-channel mean and the overall standard deviation of the encoder's embeddings of a mix of
    noise and tones, measured in float64 and given back in float32 (the mean) and as a Python float
    rounded to float32 (the scale)."""
    sample_rate = int(encodec.config.sampling_rate)
    channels = int(encodec.config.audio_channels)
    t = torch.arange(sample_rate, dtype=torch.float64) / sample_rate
    clips = [level * torch.randn(sample_rate, generator=generator).double() for level in (0.05, 0.3, 1.0)]
    clips += [0.5 * torch.sin(2 * torch.pi * frequency * t) for frequency in (110.0, 440.0, 1760.0)]
    audio = torch.stack(clips)[:, None].expand(-1, channels, -1).contiguous()  # [clips, channels, T]
    embeddings = copy.deepcopy(encodec.encoder).double()(audio)  # [clips, dim, frames]
    mean = embeddings.mean(dim=(0, 2)).float()
    scale = embeddings.std().clamp_min(1e-6).float().item()
    return mean, scale


def randomize_layer_norms(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Move LayerNorms away from (1, 0) so that a checkpoint mapping which swaps two norms shows up."""
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.copy_(1.0 + 0.2 * torch.randn(norm.weight.shape, generator=generator))
                norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=generator))


def generation_defaults(model: Any, *, guidance_scale: float = 3.0) -> None:
    """The generation config of the published checkpoints: sampling, top-k 250, cfg 3, 30 s."""
    layout.set_generation_defaults(model, codebook_size=CODEBOOK_SIZE, guidance_scale=guidance_scale)


def build_random_musicgen(
    model_version: str, *, tiny: bool = False, seed: int = 0, stereo: bool = False
) -> Any:
    """A MusicGen model (decoder + T5 + EnCodec) of the given version with random weights, in eval mode.
    The weights are a function of the arguments alone (for the same torch and transformers, on any
    CPU with AVX2, whose random draws torch makes alike): every random draw comes from generators
    seeded here, and the one measurement (`fill_random_codebooks`) does not depend on the kernels."""
    config = musicgen_config(model_version, tiny=tiny, stereo=stereo)
    torch.manual_seed(seed)
    model = layout.model_class(is_melody_architecture(model_version))(config)
    generator = torch.Generator().manual_seed(seed + 1)
    fill_random_codebooks(model.audio_encoder, generator)
    randomize_layer_norms(model.decoder, generator)
    generation_defaults(model)
    return model.eval()


def make_test_model(
    model_version: ModelArchitecture,
    out_dir: str | Path,
    *,
    tiny: bool = False,
    fmt: CheckpointFormat = "transformers",
    seed: int = 0,
    embedded_compression: bool = False,
    stereo: bool = False,
    window_s: float | None = None,
) -> Path:
    """Write a random-weight checkpoint of `model_version` (its stereo model with `stereo`) to
    `out_dir` and return the folder. `window_s`: the window the model generates at once, when not a
    released model's 30 s (audiocraft's `dataset.segment_duration`; its conversion records it).

    fmt="transformers": a from_pretrained folder (+ `text_encoder/`, `encodec/` sub-folders); a stereo
    one is laid out as facebook/musicgen-stereo-* (decoder `audio_channels = 2`, 8 codebooks).
    fmt="audiocraft": `state_dict.bin` + `compression_state_dict.bin` (a pointer to the `encodec/`
    folder beside it, or with `embedded_compression=True` audiocraft's exported SEANet EnCodec),
    + `text_encoder/` and `encodec/`; a stereo one is what audiocraft's stereo recipe exports
    (`interleave_stereo_codebooks.use`, `channels = 2`, delays [0, 0, 1, 1, 2, 2, 3, 3]).
    """
    if fmt not in ("transformers", "audiocraft"):
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected 'transformers' or 'audiocraft'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_random_musicgen(model_version, tiny=tiny, seed=seed, stereo=stereo)
    tokenizer = build_tokenizer(vocab_size=model.config.text_encoder.vocab_size)

    save_text_encoder(model.text_encoder, tokenizer, out / TEXT_ENCODER_DIR)
    model.audio_encoder.save_pretrained(out / COMPRESSION_DIR)
    save_encodec_feature_extractor(
        out / COMPRESSION_DIR, audio_channels=model.config.audio_encoder.audio_channels
    )

    if window_s is not None:
        _set_window(model, window_s)
    if fmt == "transformers":
        model.save_pretrained(out)
        # The processor pads the model's audio: two channels for a stereo model (its EnCodec is mono).
        save_tokenizer_and_processor(
            out,
            tokenizer,
            melody=is_melody_architecture(model_version),
            audio_channels=model.config.decoder.audio_channels,
        )
    else:
        write_audiocraft_checkpoint(
            model,
            out,
            model_version=model_version,
            embedded_compression=embedded_compression,
            cfg_overrides=None if window_s is None else {"dataset.segment_duration": window_s},
        )
    (out / TEST_MODEL_MARKER).write_text(
        json.dumps(
            {
                "model_version": model_version,
                "tiny": tiny,
                "format": fmt,
                "seed": seed,
                "embedded_compression": embedded_compression,
                "stereo": stereo,
                "window_s": window_s,
            },
            indent=2,
        )
        + "\n"
    )
    return out


def _set_window(model: Any, window_s: float) -> None:
    """Record a window other than 30 s in the model's config, as a converted audiocraft checkpoint
    does (a melody model's chroma then spans that window too)."""
    setattr(model.config, WINDOW_CONFIG_ATTRIBUTE, window_s)
    if hasattr(model.config, "chroma_length"):
        model.config.chroma_length = math.ceil(window_s * SAMPLE_RATE / CHROMA_HOP)


def save_text_encoder(text_encoder: Any, tokenizer: Any, folder: Path) -> None:
    """Save the T5 encoder and its tokenizer as a folder usable as `[models] text_encoder`."""
    text_encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def save_encodec_feature_extractor(folder: Path, *, audio_channels: int) -> None:
    from transformers import EncodecFeatureExtractor

    EncodecFeatureExtractor(
        feature_size=audio_channels, sampling_rate=SAMPLE_RATE, padding_value=0.0
    ).save_pretrained(folder)


def save_tokenizer_and_processor(folder: Path, tokenizer: Any, *, melody: bool, audio_channels: int) -> None:
    """Save the tokenizer, and for text-only models the MusicgenProcessor (AutoProcessor works)."""
    layout.save_tokenizer_and_processor(
        folder, tokenizer, melody=melody, audio_channels=audio_channels, sample_rate=SAMPLE_RATE
    )


def write_audiocraft_checkpoint(
    model: Any,
    out: Path,
    *,
    model_version: str,
    embedded_compression: bool,
    guidance_scale: float = 3.0,
    cfg_overrides: dict[str, Any] | None = None,
) -> None:
    """Write `model`'s LM as audiocraft's `export_lm` does, and its EnCodec as a pointer or embedded.

    The pointer names facebook/encodec_32khz (as real fine-tunes do), so a config must point
    `[models] compression` at the `encodec/` folder beside it. `cfg_overrides` (dotted keys) edit the
    written `xp.cfg`, e.g. to produce a checkpoint with features the converter must refuse.
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        audiocraft_lm_cfg(model, model_version=model_version, guidance_scale=guidance_scale)
    )
    for dotted, value in (cfg_overrides or {}).items():
        OmegaConf.update(cfg, dotted, value, force_add=True)
    lm_state = transformers_to_lm_state(model)
    if is_melody_architecture(model_version):
        # audiocraft 1.3.0 saves its chroma extractor's spectrogram window with the LM (its filter bank
        # is a non-persistent buffer); the converter recomputes both.
        lm_state["condition_provider.conditioners.self_wav.chroma.spec.window"] = torch.hann_window(2**14)
    torch.save(
        {
            "best_state": lm_state,
            "xp.cfg": OmegaConf.to_yaml(cfg),
            "version": AUDIOCRAFT_VERSION,
            "exported": True,
        },
        out / LM_STATE_FILE,
    )
    if embedded_compression:
        compression = {
            "best_state": transformers_to_encodec_state(model.audio_encoder),
            "xp.cfg": OmegaConf.to_yaml(OmegaConf.create(audiocraft_encodec_cfg(model.config.audio_encoder))),
            "version": AUDIOCRAFT_VERSION,
            "exported": True,
        }
    else:
        compression = {"pretrained": DEFAULT_COMPRESSION_ID, "exported": True, "version": AUDIOCRAFT_VERSION}
    torch.save(compression, out / COMPRESSION_STATE_FILE)


AUDIOCRAFT_VERSION = "1.3.0"


def audiocraft_lm_cfg(model: Any, *, model_version: str, guidance_scale: float = 3.0) -> dict[str, Any]:
    """The parts of audiocraft's merged MusicGen training config (musicgen_base_32khz /
    musicgen_melody_32khz recipes, with the stereo recipe's overrides for a stereo model) that
    describe the LM and its conditioning."""
    decoder = model.config.decoder
    melody = is_melody_architecture(model_version)
    channels = int(decoder.audio_channels)
    conditioners: dict[str, Any] = {
        "description": {
            "model": "t5",
            "t5": {"name": "t5-base", "finetune": False, "word_dropout": 0.3, "normalize_text": False},
        },
    }
    if melody:
        conditioners["self_wav"] = {
            "model": "chroma_stem",
            "chroma_stem": {
                "sample_rate": SAMPLE_RATE,
                "n_chroma": MELODY_NUM_CHROMA,
                "radix2_exp": 14,
                "argmax": True,
                "match_len_on_eval": False,
                "eval_wavs": None,
                "n_eval_wavs": 100,
                "cache_path": None,
            },
        }
    return {
        "solver": "musicgen",
        "sample_rate": SAMPLE_RATE,
        "channels": channels,
        "compression_model_checkpoint": "//pretrained/" + "facebook/encodec_32khz",
        "compression_model_n_q": None,
        "dataset": {"segment_duration": 30, "batch_size": 192},
        # audiocraft's stereo recipe (grids/musicgen/musicgen_stereo_finetune_32khz.py): the mono
        # EnCodec codes each channel, interleaved per codebook, each pair delayed as its codebook.
        "interleave_stereo_codebooks": {"use": channels == STEREO_CHANNELS, "per_timestep": False},
        "lm_model": "transformer_lm",
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {
                "delays": delay_pattern(decoder.num_codebooks, channels),
                "flatten_first": 0,
                "empty_initial": 0,
            },
        },
        "transformer_lm": {
            "dim": decoder.hidden_size,
            "num_heads": decoder.num_attention_heads,
            "num_layers": decoder.num_hidden_layers,
            "hidden_scale": decoder.ffn_dim // decoder.hidden_size,
            "n_q": decoder.num_codebooks,
            "card": decoder.vocab_size,
            "dropout": 0.0,
            "emb_lr": None,
            "activation": "gelu",
            "norm_first": True,
            "bias_ff": False,
            "bias_attn": False,
            "bias_proj": False,
            "past_context": None,
            "causal": True,
            "custom": False,
            "memory_efficient": True,
            "attention_as_float32": False,
            "layer_scale": None,
            "positional_embedding": "sin",
            "xpos": False,
            "checkpointing": "none",
            "weight_init": "gaussian",
            "depthwise_init": "current",
            "zero_bias_init": True,
            "norm": "layer_norm",
            "cross_attention": False,
            "qk_layer_norm": False,
            "qk_layer_norm_cross": False,
            "attention_dropout": None,
            "kv_repeat": 1,
            "two_step_cfg": False,
        },
        "classifier_free_guidance": {
            "training_dropout": 0.2 if melody else 0.3,
            "inference_coef": guidance_scale,
        },
        "attribute_dropout": {},
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": ["self_wav", "description"] if melody else [],
            "cross": [] if melody else ["description"],
            "input_interpolate": [],
        },
        "conditioners": conditioners,
        "generate": {"lm": {"use_sampling": True, "top_k": 250, "top_p": 0.0}},
    }


def audiocraft_encodec_cfg(config: Any) -> dict[str, Any]:
    """audiocraft's compression training config (encodec_musicgen_32khz recipe) for an EncodecConfig."""
    return {
        "solver": "compression",
        "sample_rate": config.sampling_rate,
        "channels": config.audio_channels,
        "compression_model": "encodec",
        "encodec": {
            "autoencoder": "seanet",
            "quantizer": "rvq",
            "sample_rate": config.sampling_rate,
            "channels": config.audio_channels,
            "causal": config.use_causal_conv,
            "renormalize": False,
        },
        "seanet": {
            "dimension": config.hidden_size,
            "channels": config.audio_channels,
            "causal": config.use_causal_conv,
            "n_filters": config.num_filters,
            "n_residual_layers": config.num_residual_layers,
            "ratios": list(config.upsampling_ratios),
            "activation": "ELU",
            "activation_params": {"alpha": 1.0},
            "norm": "weight_norm",
            "norm_params": {},
            "kernel_size": config.kernel_size,
            "residual_kernel_size": config.residual_kernel_size,
            "last_kernel_size": config.last_kernel_size,
            "dilation_base": config.dilation_growth_rate,
            "pad_mode": config.pad_mode,
            "true_skip": not config.use_conv_shortcut,
            "compress": config.compress,
            "lstm": config.num_lstm_layers,
            "disable_norm_outer_blocks": 0,
            "decoder": {
                "trim_right_ratio": config.trim_right_ratio,
                "final_activation": None,
                "final_activation_params": None,
            },
            "encoder": {},
        },
        "rvq": {
            "n_q": config.num_quantizers,
            "q_dropout": False,
            "bins": config.codebook_size,
            "decay": 0.99,
            "kmeans_init": True,
            "kmeans_iters": 50,
            "threshold_ema_dead_code": 2,
            "orthogonal_reg_weight": 0.0,
            "orthogonal_reg_active_codes_only": False,
        },
    }
