"""Typed settings for the inference side, read from the `[models]`, `[engine]` and `[melody]`
tables of config.toml. The bot reads the same file (bot/config.py) and hands these to the worker."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CONFIG_ENV_VAR = "MUSICGEN_BOT_CONFIG"
DEFAULT_CONFIG_PATH = Path("config.toml")


class _Section(BaseModel):
    # A typo in config.toml should be an error at start-up, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSources(_Section):
    """Where each model version's weights come from: a hub id or a local folder."""

    small: str = "facebook/musicgen-small"
    medium: str = "facebook/musicgen-medium"
    large: str = "facebook/musicgen-large"
    melody: str = "facebook/musicgen-melody"
    # A transformers folder/hub id, or an audiocraft training checkpoint folder (state_dict.bin +
    # compression_state_dict.bin). Empty: no fine-tune configured, and "finetuned" is refused.
    finetuned: str = ""
    # What an audiocraft checkpoint does not contain: the T5 text encoder and (usually) EnCodec.
    text_encoder: str = "t5-base"
    compression: str = "facebook/encodec_32khz"
    # Converted audiocraft checkpoints are cached here (converted once, reused afterwards).
    conversion_cache: str = "data/converted"

    def source_for(self, model_version: str) -> str:
        """The configured hub id or folder of a model version ('' when not configured)."""
        if model_version == "encode-decode":
            return self.compression
        return str(getattr(self, model_version))


class EngineOptions(_Section):
    # "auto" picks cuda when torch sees a GPU, else cpu. "cuda:1" pins a card.
    device: str = "auto"
    # "auto": float16 on CUDA; on CPU bfloat16 where the CPU has native bf16 (avx512_bf16 or AMX),
    # else float32.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # torch intra-op threads in the worker; 0 leaves torch's default.
    cpu_threads: int = Field(default=0, ge=0)
    # Memory budget of the model cache (LRU), per worker and so per device; models that do not fit
    # evict older ones.
    model_cache_gb: float = Field(default=16.0, gt=0)
    # The decoder's forward pass: "own" (ours: a cache written in place, fused products, fbgemm's
    # half-precision kernel on CPU; about 2x faster per bfloat16 step there) or "transformers" (the
    # reference). static_cache and compile below always run transformers' pass.
    decoder: Literal["own", "transformers"] = "own"
    # The decoder's matrix products on a CPU: "auto" runs bfloat16 weights through oneDNN's bfloat16
    # GEMM on AMX tiles where the CPU has them (a batch costs little more than one job there), other
    # float16/bfloat16 weights through fbgemm's float16 GEMM with float32 activations (x86 with AVX2;
    # bfloat16 weights are exact in float16), and float32 weights through torch's linear for one job
    # (up to 3 rows) and oneDNN's GEMM for a batch; "fbgemm" is "auto" without AMX (float32
    # activations: more precise, slower for batches); "torch" is torch's linear in the model's dtype.
    cpu_matmul: Literal["auto", "fbgemm", "torch"] = "auto"
    # A fixed-size key/value cache: every decoder step has the same shapes (what CUDA graphs need).
    static_cache: bool = False
    # torch.compile the decoder step; on CUDA with static_cache the steps replay as CUDA graphs.
    # Compiling takes minutes on a CPU for a few percent there: meant for GPUs.
    compile: bool = False
    # Decoding of uploads runs in a subprocess with this timeout (hostile or broken files).
    decode_timeout_s: float = Field(default=30.0, gt=0)
    # The ffmpeg every decode and encode runs: "" = the bundled imageio-ffmpeg binary (the tested
    # one), else a path or a command looked up on PATH ("ffmpeg"). Applied with
    # `inference.media.ffmpeg.use_ffmpeg` by the bot and each worker at start-up.
    ffmpeg: str = ""
    # Longest input clip, in seconds. Not an [engine] key: it is `[limits] max_input_seconds`, copied
    # here (by `load_engine_settings` and the bot's config) so the worker and the bot use one limit.
    max_input_seconds: float = Field(default=600.0, gt=0)

    @property
    def runs_our_decoder(self) -> bool:
        """Whether the decoder runs our pass, which alone lets jobs join a running batch
        (static_cache and compile need transformers' pass, whose shapes can be fixed)."""
        return self.decoder == "own" and not (self.static_cache or self.compile)


class MelodyOptions(_Section):
    # audiocraft removes drums and bass with demucs before taking the chroma; false uses the full mix.
    stem_separation: bool = True
    # A demucs pretrained name (needs its weights in the torch hub cache) or a path to a saved model.
    demucs_model: str = "htdemucs"


class EngineSettings(_Section):
    models: ModelSources = ModelSources()
    engine: EngineOptions = EngineOptions()
    melody: MelodyOptions = MelodyOptions()


def resolve_config_path(path: str | os.PathLike[str] | None) -> Path | None:
    """The config file to read: an explicit path, else $MUSICGEN_BOT_CONFIG, else ./config.toml if present."""
    if path is not None:
        return Path(path)
    env = os.environ.get(CONFIG_ENV_VAR)
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def read_config_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The raw TOML tables of the config file; {} when there is none (embedded defaults apply)."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return {}
    with open(resolved, "rb") as f:
        return tomllib.load(f)


def with_input_limit(engine_tables: Mapping[str, Any], limits: Mapping[str, Any] | None) -> dict[str, Any]:
    """The engine tables with `[limits] max_input_seconds` copied into `engine` (when it is set)."""
    if not limits or "max_input_seconds" not in limits:
        return dict(engine_tables)
    engine = {**engine_tables.get("engine", {}), "max_input_seconds": limits["max_input_seconds"]}
    return {**engine_tables, "engine": engine}


def load_engine_settings(path: str | os.PathLike[str] | None = None) -> EngineSettings:
    raw = read_config_file(path)
    tables: dict[str, Any] = {k: raw[k] for k in ("models", "engine", "melody") if k in raw}
    return EngineSettings(**with_input_limit(tables, raw.get("limits")))
