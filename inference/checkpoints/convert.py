"""Convert an audiocraft MusicGen training export into a transformers MusicGen folder.

An audiocraft export (`audiocraft.utils.export.export_lm`) is a folder with
- `state_dict.bin`: {'best_state': LM state dict, 'xp.cfg': OmegaConf YAML, 'version', 'exported'}.
  It holds the decoder and the conditioners' output projections, not the T5 text encoder.
- `compression_state_dict.bin`: a pointer {'pretrained': 'facebook/encodec_32khz', ...} (the usual
  case) or an embedded EnCodec (`export_encodec`: SEANet weights with weight norm + 'xp.cfg').

The decoder maps one to one onto transformers' MusicgenForCausalLM when the training config uses
only what that decoder can express; everything else is refused with `UnsupportedCheckpoint`.
The key mapping is kept here in both directions (the test checkpoints are written with the inverse).

Stereo checkpoints (audiocraft's stereo recipe: `interleave_stereo_codebooks.use`, `channels = 2`,
`transformer_lm.n_q = 8`, delays [0, 0, 1, 1, 2, 2, 3, 3]) convert as they are: audiocraft's
`InterleaveStereoCompressionModel` codes each channel with the mono EnCodec and interleaves the
codebooks as `(k c)` (L0 R0 L1 R1 ...), which is the order transformers' stereo MusicGen
(decoder `audio_channels = 2`) predicts, delays and decodes them in, so the codebook embeddings and
heads keep their indices. Interleaving over time (`per_timestep`) has no transformers counterpart.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference.checkpoints import layout

logger = logging.getLogger(__name__)

LM_STATE_FILE = "state_dict.bin"
COMPRESSION_STATE_FILE = "compression_state_dict.bin"
# The compression model audiocraft's MusicGen recipes train with; `[models] compression` stands in
# for it (a hub id or a local copy).
DEFAULT_COMPRESSION_ID = "facebook/encodec_32khz"

# The converted config's record of the checkpoint's training segment, in seconds (`dataset.segment_duration`).
WINDOW_CONFIG_ATTRIBUTE = "segment_duration"

_PRETRAINED_PREFIX = "//pretrained/"
_DESCRIPTION_PROJ = "condition_provider.conditioners.description.output_proj."
_CHROMA_PROJ = "condition_provider.conditioners.self_wav.output_proj."
_FINETUNED_T5 = "condition_provider.conditioners.description.t5."


class UnsupportedCheckpoint(ValueError):
    """An audiocraft checkpoint that cannot be converted; the message says exactly why."""


@dataclass(frozen=True)
class AudiocraftLMSpec:
    """What the converter needs from an audiocraft LM's `xp.cfg`, already validated."""

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    n_q: int
    card: int
    guidance_scale: float
    top_k: int
    top_p: float
    use_sampling: bool
    melody: bool
    num_chroma: int
    chroma_length: int
    sample_rate: int
    channels: int
    text_encoder_name: str
    # The training segment (`dataset.segment_duration`): the window the model generates at once.
    segment_duration: float = 30.0


# ---------------------------------------------------------------------------------------------
# Detection and loading


def is_audiocraft_checkpoint(path: str | Path) -> bool:
    """True for an audiocraft export: a folder holding `state_dict.bin`, or that file itself."""
    p = Path(path)
    if p.is_file():
        return p.name == LM_STATE_FILE
    return (p / LM_STATE_FILE).is_file()


def _checkpoint_folder(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.is_file() else p


def _load_package(file: Path) -> dict[str, Any]:
    # weights_only: an export holds tensors, strings and numbers; nothing in it needs to run code.
    try:
        package = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UnsupportedCheckpoint(
            f"{file} is not an exported audiocraft checkpoint that can be read safely ({error}). "
            "Export it with audiocraft.utils.export.export_lm / export_encodec first."
        ) from error
    if not isinstance(package, dict):
        raise UnsupportedCheckpoint(f"{file} does not hold an audiocraft checkpoint dictionary")
    return package


def _lm_state(package: dict[str, Any], file: Path) -> dict[str, torch.Tensor]:
    state = package.get("best_state")
    # A raw training checkpoint nests the model's state one level deeper.
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise UnsupportedCheckpoint(f"{file} has no 'best_state' model weights")
    return state


def _xp_cfg(package: dict[str, Any], file: Path) -> Any:
    from omegaconf import OmegaConf

    raw = package.get("xp.cfg")
    if raw is None:
        raise UnsupportedCheckpoint(f"{file} has no 'xp.cfg' training configuration")
    return OmegaConf.create(raw)


# ---------------------------------------------------------------------------------------------
# Training config -> what transformers can express


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, dotted, default=default)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def read_lm_spec(cfg: Any) -> AudiocraftLMSpec:
    """Validate an LM `xp.cfg` against transformers' MusicGen decoder and extract its numbers.

    Raises UnsupportedCheckpoint naming every feature that transformers cannot express.
    """
    problems: list[str] = []

    def expect(dotted: str, allowed: Any, default: Any, why: str) -> None:
        value = _get(cfg, dotted, default)
        ok = value in allowed if isinstance(allowed, (tuple, list, set)) else value == allowed
        if not ok:
            problems.append(f"{dotted}={value!r} ({why})")

    lm = "transformer_lm"
    expect(
        "lm_model",
        "transformer_lm",
        "transformer_lm",
        "only the autoregressive MusicGen LM converts, not MAGNeT/JASCO",
    )
    expect(f"{lm}.positional_embedding", "sin", "sin", "transformers uses sinusoidal positions only")
    expect(f"{lm}.positional_scale", (1, 1.0), 1.0, "positional embeddings must be added unscaled")
    expect(f"{lm}.max_period", (10000, 10000.0), 10000, "the sinusoid period is fixed at 10000")
    expect(f"{lm}.layer_scale", None, None, "transformers has no LayerScale")
    expect(f"{lm}.qk_layer_norm", False, False, "transformers has no query/key layer norm")
    expect(f"{lm}.qk_layer_norm_cross", False, False, "transformers has no query/key layer norm")
    expect(f"{lm}.kv_repeat", 1, 1, "transformers has no grouped key/value heads in MusicGen")
    expect(f"{lm}.bias_ff", False, False, "the feed-forward layers have no biases in transformers")
    expect(f"{lm}.bias_attn", False, False, "the attention projections have no biases in transformers")
    expect(f"{lm}.bias_proj", False, False, "the output heads have no biases in transformers")
    expect(f"{lm}.norm_first", True, True, "transformers' decoder is pre-norm")
    expect(f"{lm}.norm", "layer_norm", "layer_norm", "transformers uses LayerNorm")
    expect(f"{lm}.activation", "gelu", "gelu", "transformers' MusicGen config uses exact GELU")
    expect(f"{lm}.past_context", None, None, "transformers attends to the whole past")
    expect(
        f"{lm}.two_step_cfg", False, False, "transformers batches the conditional and unconditional passes"
    )
    expect(
        "fuser.cross_attention_pos_emb",
        False,
        False,
        "transformers adds no positions to cross-attention inputs",
    )
    channels = int(_get(cfg, "channels", 1))
    n_q = int(_get(cfg, f"{lm}.n_q", 4))
    problems += _channel_problems(cfg, channels, n_q)
    pattern = _get(cfg, "codebooks_pattern.modeling")
    delays = _get(cfg, "codebooks_pattern.delay.delays")
    expected_delays = delay_pattern(n_q, channels)
    if pattern != "delay" or list(delays or []) != expected_delays:
        problems.append(
            f"codebooks_pattern={pattern!r} with delays {delays!r} (transformers implements only the "
            f"delay pattern with delays {expected_delays})"
        )
    if _get(cfg, "codebooks_pattern.delay.flatten_first", 0) or _get(
        cfg, "codebooks_pattern.delay.empty_initial", 0
    ):
        problems.append("codebooks_pattern.delay.flatten_first/empty_initial must be 0")

    conditioners = _get(cfg, "conditioners", {}) or {}
    conditioners = {k: v for k, v in conditioners.items() if k != "args"}
    kinds = {name: (value or {}).get("model") for name, value in conditioners.items()}
    melody = kinds == {"description": "t5", "self_wav": "chroma_stem"}
    fuse = {
        op: list(_get(cfg, f"fuser.{op}", []) or [])
        for op in ("sum", "prepend", "cross", "input_interpolate")
    }
    if kinds == {"description": "t5"}:
        if fuse["cross"] != ["description"] or fuse["prepend"] or fuse["sum"] or fuse["input_interpolate"]:
            problems.append(f"fuser={fuse} (a text model must cross-attend to the description only)")
    elif melody:
        if (
            sorted(fuse["prepend"]) != ["description", "self_wav"]
            or fuse["cross"]
            or fuse["sum"]
            or fuse["input_interpolate"]
        ):
            problems.append(f"fuser={fuse} (a melody model must prepend the chroma and the description)")
    else:
        problems.append(
            f"conditioners={kinds} (transformers supports a T5 'description', plus a 'self_wav' chroma_stem "
            "for melody models)"
        )

    if problems:
        raise UnsupportedCheckpoint(
            "This audiocraft checkpoint uses features the transformers MusicGen decoder cannot express: "
            + "; ".join(problems)
        )

    dim = int(_get(cfg, f"{lm}.dim"))
    sample_rate = int(_get(cfg, "sample_rate", 32000))
    segment_s = float(_get(cfg, "dataset.segment_duration", 30) or 30)
    radix2_exp = int(_get(cfg, "conditioners.self_wav.chroma_stem.radix2_exp", 14) or 14)
    chroma_hop = 2**radix2_exp // 4  # audiocraft's ChromaExtractor hops a quarter window
    return AudiocraftLMSpec(
        dim=dim,
        num_heads=int(_get(cfg, f"{lm}.num_heads")),
        num_layers=int(_get(cfg, f"{lm}.num_layers")),
        ffn_dim=int(dim * float(_get(cfg, f"{lm}.hidden_scale", 4))),
        n_q=n_q,
        card=int(_get(cfg, f"{lm}.card", 2048)),
        guidance_scale=float(_get(cfg, "classifier_free_guidance.inference_coef", 3.0)),
        top_k=int(_get(cfg, "generate.lm.top_k", 250)),
        top_p=float(_get(cfg, "generate.lm.top_p", 0.0)),
        use_sampling=bool(_get(cfg, "generate.lm.use_sampling", True)),
        melody=melody,
        num_chroma=int(_get(cfg, "conditioners.self_wav.chroma_stem.n_chroma", 12) or 12),
        chroma_length=math.ceil(segment_s * sample_rate / chroma_hop),
        segment_duration=segment_s,
        sample_rate=sample_rate,
        channels=channels,
        text_encoder_name=str(_get(cfg, "conditioners.description.t5.name", "t5-base")),
    )


def delay_pattern(n_q: int, channels: int) -> list[int]:
    """The codebook delays transformers' MusicGen applies: 0..n_q-1 for mono; for stereo each
    left/right pair of the interleaved codebooks shares its mono codebook's delay."""
    return [k // channels for k in range(n_q)]


def _channel_problems(cfg: Any, channels: int, n_q: int) -> list[str]:
    """What stops a checkpoint's channel layout from converting (mono, or audiocraft's stereo)."""
    stereo = bool(_get(cfg, "interleave_stereo_codebooks.use", False))
    if channels == 1 and not stereo:
        return []
    if channels != 2 or not stereo:
        return [
            f"channels={channels!r} with interleave_stereo_codebooks.use={stereo!r} (a MusicGen is mono, or "
            "stereo with interleaved codebooks: channels=2 and interleave_stereo_codebooks.use=true)"
        ]
    problems = []
    if _get(cfg, "interleave_stereo_codebooks.per_timestep", False):
        problems.append(
            "interleave_stereo_codebooks.per_timestep=True (transformers interleaves left and right "
            "per codebook, not per time step)"
        )
    if n_q % 2:
        problems.append(f"transformer_lm.n_q={n_q} (a stereo LM predicts left and right codebooks in pairs)")
    compression_n_q = _get(cfg, "compression_model_n_q")
    if compression_n_q is not None and int(compression_n_q) * 2 != n_q:
        problems.append(
            f"compression_model_n_q={compression_n_q!r} (each channel must have n_q / 2 = {n_q // 2} codebooks)"
        )
    return problems


# ---------------------------------------------------------------------------------------------
# LM weights: audiocraft <-> transformers

_LAYER_RENAMES = {
    "linear1.weight": "fc1.weight",
    "linear2.weight": "fc2.weight",
    "norm1.weight": "self_attn_layer_norm.weight",
    "norm1.bias": "self_attn_layer_norm.bias",
    "norm2.weight": "final_layer_norm.weight",
    "norm2.bias": "final_layer_norm.bias",
    "norm_cross.weight": "encoder_attn_layer_norm.weight",
    "norm_cross.bias": "encoder_attn_layer_norm.bias",
    "self_attn.out_proj.weight": "self_attn.out_proj.weight",
    "cross_attention.out_proj.weight": "encoder_attn.out_proj.weight",
}
_FUSED_ATTENTION = {"self_attn": "self_attn", "cross_attention": "encoder_attn"}
_DECODER = "decoder.model.decoder."


def lm_state_to_transformers(
    state: dict[str, torch.Tensor], spec: AudiocraftLMSpec
) -> dict[str, torch.Tensor]:
    """Rename/split an audiocraft LM state dict into MusicgenForConditionalGeneration keys.

    Returns the decoder (`decoder.*`) and the conditioning projections (`enc_to_dec_proj.*`,
    melody: `audio_enc_to_dec_proj.*`). Unknown weights are an error (they would be silently lost).
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    layer_key = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")
    for raw_key, tensor in state.items():
        # torch.nn.MultiheadAttention (audiocraft's non-custom attention) nests the projections in .mha.
        key = raw_key.replace(".mha.", ".")
        if m := re.fullmatch(r"emb\.(\d+)\.weight", key):
            out[f"{_DECODER}embed_tokens.{m.group(1)}.weight"] = tensor
        elif m := re.fullmatch(r"linears\.(\d+)\.weight", key):
            out[f"decoder.lm_heads.{m.group(1)}.weight"] = tensor
        elif m := re.fullmatch(r"out_norm\.(weight|bias)", key):
            out[f"{_DECODER}layer_norm.{m.group(1)}"] = tensor
        elif key.startswith(_DESCRIPTION_PROJ):
            out["enc_to_dec_proj." + key[len(_DESCRIPTION_PROJ) :]] = tensor
        elif key.startswith(_CHROMA_PROJ):
            out["audio_enc_to_dec_proj." + key[len(_CHROMA_PROJ) :]] = tensor
        elif key.startswith(_FINETUNED_T5) or key.startswith(
            "condition_provider.conditioners.self_wav.chroma."
        ):
            continue  # a fine-tuned T5 is handled with the text encoder; chroma filter banks are recomputed
        elif m := layer_key.match(key):
            index, rest = m.group(1), m.group(2)
            prefix = f"{_DECODER}layers.{index}."
            attention = rest.split(".", 1)[0]
            if rest.endswith("in_proj_weight") and attention in _FUSED_ATTENTION:
                q, k, v = tensor.chunk(3, dim=0)
                target = _FUSED_ATTENTION[attention]
                out[f"{prefix}{target}.q_proj.weight"] = q.clone()
                out[f"{prefix}{target}.k_proj.weight"] = k.clone()
                out[f"{prefix}{target}.v_proj.weight"] = v.clone()
            elif rest in _LAYER_RENAMES:
                out[prefix + _LAYER_RENAMES[rest]] = tensor
            else:
                unknown.append(raw_key)
        else:
            unknown.append(raw_key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise UnsupportedCheckpoint(
            f"the checkpoint holds weights transformers' MusicGen has no place for: {shown}"
        )
    return out


def transformers_to_lm_state(model: Any) -> dict[str, torch.Tensor]:
    """The inverse of `lm_state_to_transformers`: audiocraft LM keys from a transformers MusicGen model."""
    inverse_renames = {v: k for k, v in _LAYER_RENAMES.items()}
    inverse_attention = {v: k for k, v in _FUSED_ATTENTION.items()}
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    layer_key = re.compile(r"^" + re.escape(_DECODER) + r"layers\.(\d+)\.(.+)$")
    for key, tensor in state.items():
        if m := re.fullmatch(re.escape(_DECODER) + r"embed_tokens\.(\d+)\.weight", key):
            out[f"emb.{m.group(1)}.weight"] = tensor.clone()
        elif m := re.fullmatch(r"decoder\.lm_heads\.(\d+)\.weight", key):
            out[f"linears.{m.group(1)}.weight"] = tensor.clone()
        elif m := re.fullmatch(re.escape(_DECODER) + r"layer_norm\.(weight|bias)", key):
            out[f"out_norm.{m.group(1)}"] = tensor.clone()
        elif key.startswith("enc_to_dec_proj."):
            out[_DESCRIPTION_PROJ + key[len("enc_to_dec_proj.") :]] = tensor.clone()
        elif key.startswith("audio_enc_to_dec_proj."):
            out[_CHROMA_PROJ + key[len("audio_enc_to_dec_proj.") :]] = tensor.clone()
        elif m := layer_key.match(key):
            index, rest = m.group(1), m.group(2)
            prefix = f"transformer.layers.{index}."
            attention, _, leaf = rest.partition(".")
            if attention in inverse_attention and leaf == "q_proj.weight":
                fused = torch.cat(
                    [state[f"{_DECODER}layers.{index}.{attention}.{p}_proj.weight"] for p in "qkv"], dim=0
                )
                out[f"{prefix}{inverse_attention[attention]}.in_proj_weight"] = fused
            elif attention in inverse_attention and leaf in ("k_proj.weight", "v_proj.weight"):
                continue
            elif rest in inverse_renames:
                out[prefix + inverse_renames[rest]] = tensor.clone()
            else:
                raise KeyError(f"no audiocraft name for {key}")
    return out


# ---------------------------------------------------------------------------------------------
# EnCodec weights: audiocraft SEANet <-> transformers EncodecModel
#
# Both build the same nn.Sequential of (conv | resnet block | ELU | LSTM), so layer indices agree;
# only the wrapper names and the weight-norm spelling differ.


def encodec_config_from_cfg(cfg: Any) -> Any:
    """transformers EncodecConfig for an audiocraft EnCodec `xp.cfg` (refusing what it cannot express)."""
    from transformers import EncodecConfig

    problems: list[str] = []
    if _get(cfg, "compression_model") != "encodec":
        problems.append(f"compression_model={_get(cfg, 'compression_model')!r}")
    if _get(cfg, "encodec.autoencoder") != "seanet" or _get(cfg, "encodec.quantizer") != "rvq":
        problems.append("encodec must be a SEANet autoencoder with an RVQ quantizer")
    if _get(cfg, "encodec.renormalize", False):
        problems.append("encodec.renormalize=True")
    seanet = _get(cfg, "seanet", {}) or {}
    if (
        seanet.get("activation", "ELU") != "ELU"
        or (seanet.get("activation_params") or {}).get("alpha", 1.0) != 1.0
    ):
        problems.append("seanet.activation must be ELU(alpha=1)")
    if seanet.get("norm", "weight_norm") != "weight_norm":
        problems.append(f"seanet.norm={seanet.get('norm')!r} (only weight_norm converts)")
    if seanet.get("disable_norm_outer_blocks", 0):
        problems.append("seanet.disable_norm_outer_blocks must be 0")
    if (seanet.get("decoder") or {}).get("final_activation"):
        problems.append("seanet.decoder.final_activation must be null")
    if seanet.get("encoder") or any(
        k != "trim_right_ratio" and v is not None
        for k, v in (seanet.get("decoder") or {}).items()
        if k not in ("final_activation_params",)
    ):
        problems.append("seanet encoder/decoder overrides are not supported")
    if problems:
        raise UnsupportedCheckpoint("The embedded EnCodec cannot be converted: " + "; ".join(problems))

    sample_rate = int(_get(cfg, "sample_rate"))
    ratios = [int(r) for r in seanet.get("ratios", [8, 5, 4, 2])]
    hop = math.prod(ratios)
    frame_rate = math.ceil(sample_rate / hop)
    bins = int(_get(cfg, "rvq.bins", 1024))
    n_q = int(_get(cfg, "rvq.n_q", 8))
    bandwidth_kbps = n_q * math.ceil(math.log2(bins)) * frame_rate / 1000
    return EncodecConfig(
        sampling_rate=sample_rate,
        audio_channels=int(_get(cfg, "channels", 1)),
        normalize=False,
        target_bandwidths=[round(bandwidth_kbps, 6)],
        hidden_size=int(seanet.get("dimension", 128)),
        num_filters=int(seanet.get("n_filters", 32)),
        num_residual_layers=int(seanet.get("n_residual_layers", 1)),
        upsampling_ratios=ratios,
        norm_type="weight_norm",
        kernel_size=int(seanet.get("kernel_size", 7)),
        last_kernel_size=int(seanet.get("last_kernel_size", 7)),
        residual_kernel_size=int(seanet.get("residual_kernel_size", 3)),
        dilation_growth_rate=int(seanet.get("dilation_base", 2)),
        use_causal_conv=bool(_get(cfg, "encodec.causal", False)),
        pad_mode=str(seanet.get("pad_mode", "reflect")),
        compress=int(seanet.get("compress", 2)),
        num_lstm_layers=int(seanet.get("lstm", 2)),
        trim_right_ratio=float((seanet.get("decoder") or {}).get("trim_right_ratio", 1.0)),
        codebook_size=bins,
        codebook_dim=int(seanet.get("dimension", 128)),
        use_conv_shortcut=not bool(seanet.get("true_skip", True)),
    )


def encodec_state_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an audiocraft EncodecModel state dict to transformers EncodecModel keys."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        new = key
        new = re.sub(r"^(encoder|decoder)\.model\.", r"\1.layers.", new)
        new = new.replace(".conv.conv.", ".conv.").replace(".convtr.convtr.", ".conv.")
        new = new.replace(".weight_g", ".parametrizations.weight.original0")
        new = new.replace(".weight_v", ".parametrizations.weight.original1")
        new = re.sub(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook.", new)
        if new == key and not key.startswith(("encoder.layers.", "decoder.layers.", "quantizer.layers.")):
            unknown.append(key)
        out[new] = tensor
    if unknown:
        raise UnsupportedCheckpoint(
            f"the embedded EnCodec holds unexpected weights: {', '.join(unknown[:8])}"
        )
    return out


def transformers_to_encodec_state(model: Any) -> dict[str, torch.Tensor]:
    """audiocraft EncodecModel keys (weight_g/weight_v weight norm) from a transformers EncodecModel."""
    out: dict[str, torch.Tensor] = {}
    transposed = {
        name for name, module in model.named_modules() if isinstance(module, torch.nn.ConvTranspose1d)
    }
    for key, tensor in model.state_dict().items():
        new = key
        # "decoder.layers.3.conv.parametrizations.weight.original0" belongs to module "decoder.layers.3.conv".
        module_name = (
            key.rsplit(".parametrizations", 1)[0] if ".parametrizations" in key else key.rsplit(".", 1)[0]
        )
        wrapper = "convtr" if module_name in transposed else "conv"
        new = re.sub(r"\.conv\.(parametrizations|bias|weight)", rf".{wrapper}.{wrapper}.\1", new)
        new = new.replace(".parametrizations.weight.original0", ".weight_g")
        new = new.replace(".parametrizations.weight.original1", ".weight_v")
        new = re.sub(r"^(encoder|decoder)\.layers\.", r"\1.model.", new)
        new = re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.", new)
        out[new] = tensor.clone()
    return out


# ---------------------------------------------------------------------------------------------
# The conversion


def _load_compression(folder: Path, compression: str) -> Any:
    """The EnCodec of an audiocraft checkpoint: the pointer's model, or the embedded SEANet weights."""
    from transformers import EncodecModel

    file = folder / COMPRESSION_STATE_FILE
    if not file.is_file():
        logger.info(
            "%s has no %s; using [models] compression = %s", folder, COMPRESSION_STATE_FILE, compression
        )
        return EncodecModel.from_pretrained(compression)
    package = _load_package(file)
    if "pretrained" in package:
        pointer = str(package["pretrained"]).removeprefix(_PRETRAINED_PREFIX)
        # A pointer that is a folder on this machine wins; a hub name is served by the configured
        # compression source (which may be a local copy of it).
        source = pointer if Path(pointer).is_dir() else compression
        if source != pointer and pointer != DEFAULT_COMPRESSION_ID:
            logger.warning(
                "checkpoint points at compression model %r; using [models] compression = %r",
                pointer,
                compression,
            )
        return EncodecModel.from_pretrained(source)
    cfg = _xp_cfg(package, file)
    config = encodec_config_from_cfg(cfg)
    model = EncodecModel(config)
    state = encodec_state_to_transformers(_lm_state(package, file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UnsupportedCheckpoint(
            f"the embedded EnCodec does not match its own config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()


def _load_text_encoder(
    text_encoder: str, state: dict[str, torch.Tensor], spec: AudiocraftLMSpec
) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, T5EncoderModel

    model = T5EncoderModel.from_pretrained(text_encoder)
    tokenizer = AutoTokenizer.from_pretrained(text_encoder)
    finetuned = {k[len(_FINETUNED_T5) :]: v for k, v in state.items() if k.startswith(_FINETUNED_T5)}
    if finetuned:
        # Trained with conditioners.description.t5.finetune=true: the checkpoint carries its own T5.
        missing, unexpected = model.load_state_dict(finetuned, strict=False)
        if unexpected or [k for k in missing if k != "encoder.embed_tokens.weight"]:
            raise UnsupportedCheckpoint(
                f"the checkpoint's fine-tuned T5 does not fit [models] text_encoder = {text_encoder!r}"
            )
    projection = state.get(_DESCRIPTION_PROJ + "weight")
    if projection is not None and projection.shape[1] != model.config.d_model:
        raise UnsupportedCheckpoint(
            f"the checkpoint was trained with {spec.text_encoder_name} ({projection.shape[1]}-dim), but "
            f"[models] text_encoder = {text_encoder!r} has d_model {model.config.d_model}"
        )
    return model.eval(), tokenizer


def _check_compression(codec: Any, spec: AudiocraftLMSpec) -> None:
    """The EnCodec must code what the LM predicts: per channel (a stereo LM's EnCodec is mono and
    codes each channel alone) n_q / channels codebooks of `card` codes, at the LM's rate."""
    per_channel = spec.n_q // spec.channels
    if (
        codec.codebook_size != spec.card
        or codec.sampling_rate != spec.sample_rate
        or codec.num_quantizers < per_channel
        or codec.audio_channels != 1
    ):
        raise UnsupportedCheckpoint(
            f"the compression model ({codec.audio_channels} channel(s), {codec.num_quantizers} codebooks of "
            f"{codec.codebook_size} codes at {codec.sampling_rate} Hz) does not match the checkpoint "
            f"(a mono EnCodec with {per_channel} codebooks of {spec.card} codes at {spec.sample_rate} Hz, "
            f"for {spec.channels} channel(s))"
        )


def convert_audiocraft_checkpoint(
    src: str | Path, dst: str | Path, *, text_encoder: str, compression: str
) -> Path:
    """Convert the audiocraft export at `src` into a transformers MusicGen folder at `dst`.

    `text_encoder` (hub id or folder) supplies T5 and its tokenizer; `compression` supplies EnCodec when
    the checkpoint only points at a pretrained one. The folder is written atomically: `dst` appears
    only once complete. Raises UnsupportedCheckpoint for what transformers cannot express.
    """
    folder = _checkpoint_folder(src)
    lm_file = folder / LM_STATE_FILE
    package = _load_package(lm_file)
    state = _lm_state(package, lm_file)
    spec = read_lm_spec(_xp_cfg(package, lm_file))

    encodec = _load_compression(folder, compression)
    _check_compression(encodec.config, spec)
    t5, tokenizer = _load_text_encoder(text_encoder, state, spec)

    decoder = layout.decoder_config(
        melody=spec.melody,
        codebook_size=spec.card,
        num_codebooks=spec.n_q,
        num_layers=spec.num_layers,
        hidden_size=spec.dim,
        num_heads=spec.num_heads,
        ffn_dim=spec.ffn_dim,
        audio_channels=spec.channels,
    )
    config = layout.musicgen_config(
        text_encoder=t5.config,
        audio_encoder=encodec.config,
        decoder=decoder,
        melody=spec.melody,
        num_chroma=spec.num_chroma,
        chroma_length=spec.chroma_length,
    )
    # Kept in the converted config: the engine makes longer pieces window by window (audiocraft's
    # `max_duration` is this segment too).
    setattr(config, WINDOW_CONFIG_ATTRIBUTE, spec.segment_duration)
    model = layout.model_class(spec.melody)(config)

    full_state = {f"text_encoder.{k}": v for k, v in t5.state_dict().items()}
    full_state.update({f"audio_encoder.{k}": v for k, v in encodec.state_dict().items()})
    full_state.update(lm_state_to_transformers(state, spec))
    missing, unexpected = model.load_state_dict(full_state, strict=False)
    # T5's tied input embedding is saved once as shared.weight.
    missing = [k for k in missing if not k.endswith("encoder.embed_tokens.weight")]
    if missing or unexpected:
        raise UnsupportedCheckpoint(
            f"the checkpoint does not fill a {spec.num_layers}-layer MusicGen decoder: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}"
        )

    layout.set_generation_defaults(
        model,
        codebook_size=spec.card,
        do_sample=spec.use_sampling,
        top_k=spec.top_k,
        top_p=spec.top_p,
        guidance_scale=spec.guidance_scale,
    )

    destination = Path(dst)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=destination.name + ".partial-", dir=destination.parent))
    try:
        model.eval().save_pretrained(staging)
        layout.save_tokenizer_and_processor(
            staging, tokenizer, melody=spec.melody, audio_channels=spec.channels, sample_rate=spec.sample_rate
        )
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination
