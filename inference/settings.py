"""Typed settings for the inference side, read from the `[models]`, `[engine]` and `[melody]`
tables of config.toml. The bot reads the same file (bot/config.py) and hands these to the worker."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from inference.request import DEFAULT_MAX_DURATION_S
from inference.windows import DEFAULT_EXTEND_STRIDE_S

CONFIG_ENV_VAR = "MUSICGEN_BOT_CONFIG"
DEFAULT_CONFIG_PATH = Path("config.toml")


class _Section(BaseModel):
    # A typo in config.toml should be an error at start-up, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _version_key(field_name: str) -> AliasChoices:
    """A `[models]` key may be written as its model version is (`stereo-small`) or as the
    field is named (`stereo_small`, what the shipped config.toml uses)."""
    return AliasChoices(field_name, field_name.replace("_", "-"))


class ModelSources(_Section):
    """Where each model version's weights come from: a hub id, a transformers folder or an audiocraft
    checkpoint folder (converted once, see `weights_folder` in inference.checkpoints.loading)."""

    small: str = "facebook/musicgen-small"
    medium: str = "facebook/musicgen-medium"
    large: str = "facebook/musicgen-large"
    melody: str = "facebook/musicgen-melody"
    melody_large: str = Field(
        default="facebook/musicgen-melody-large", validation_alias=_version_key("melody_large")
    )
    stereo_small: str = Field(
        default="facebook/musicgen-stereo-small", validation_alias=_version_key("stereo_small")
    )
    stereo_medium: str = Field(
        default="facebook/musicgen-stereo-medium", validation_alias=_version_key("stereo_medium")
    )
    stereo_large: str = Field(
        default="facebook/musicgen-stereo-large", validation_alias=_version_key("stereo_large")
    )
    stereo_melody: str = Field(
        default="facebook/musicgen-stereo-melody", validation_alias=_version_key("stereo_melody")
    )
    stereo_melody_large: str = Field(
        default="facebook/musicgen-stereo-melody-large", validation_alias=_version_key("stereo_melody_large")
    )
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
        return str(getattr(self, model_version.replace("-", "_")))


class EngineOptions(_Section):
    # "auto" picks cuda when torch sees a GPU, else cpu. "cuda:1" pins a card.
    device: str = "auto"
    # "auto": float16 on CUDA; on CPU bfloat16 where the CPU has native bf16 (avx512_bf16 or AMX),
    # else float32.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # torch intra-op threads in the worker; 0 leaves torch's default.
    cpu_threads: int = Field(default=0, ge=0)
    # The scheduling priority ("nice") a worker process lowers itself to. The bot's event loop runs at
    # the normal priority, so on a machine whose cores a busy model fills, the bot still answers
    # Discord at once (its acknowledgement deadline is 3 s) and the model gets every cycle the bot
    # does not use. 0 keeps the worker at the bot's priority.
    worker_nice: int = Field(default=10, ge=0, le=19)
    # Memory budget of the model cache (LRU), per worker and so per device; models that do not fit
    # evict older ones.
    model_cache_gb: float = Field(default=16.0, gt=0)
    # The decoder's forward pass: "own" (ours: a cache written in place, fused products, fbgemm's
    # half-precision kernel on CPU; about 2x faster per bfloat16 step there) or "transformers" (the
    # reference). static_cache and compile below always run transformers' pass.
    decoder: Literal["own", "transformers"] = "own"
    # The decoder's matrix products on a CPU. "auto": the first time a worker runs a model, it times
    # every kernel valid for the model's dtype on the model's own products, at one job's rows and at
    # the batch sizes up to `[worker] max_batch_size`, and keeps the fastest (cached in `kernel_cache`;
    # logged, and shown in /musicgen-status). float32 weights: torch's linear (MKL), oneDNN's GEMM,
    # oneDNN's GEMM on packed weights; bfloat16: fbgemm's float16 GEMM with float32 activations (exact
    # for bfloat16 weights), oneDNN's bfloat16 GEMM on AMX tiles where the CPU has them; float16:
    # fbgemm's. The others force a choice: "rules" is what "auto" was before it measured (AMX for
    # bfloat16 where there is AMX, else fbgemm for float16/bfloat16; for float32, torch's linear up to
    # 3 rows, oneDNN's GEMM from 4); "fbgemm" is "rules" without AMX; "onednn" and "onednn-packed" put
    # float32 weights through oneDNN's GEMM at every row count (other dtypes: "fbgemm"); "torch" is
    # torch's linear in the model's dtype.
    cpu_matmul: Literal["auto", "rules", "fbgemm", "onednn", "onednn-packed", "torch"] = "auto"
    # Where "auto" keeps what it measured, per CPU model, torch version, threads, dtype and model
    # shape (a small JSON file), so that a restart does not measure again; "" measures at every load.
    kernel_cache: str = "data/cpu-kernels.json"
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
    # Pieces longer than a model's window (30 s for the released models) are made window by window,
    # as audiocraft extends them: each next window is prompted with the last `window - extend_stride_s`
    # seconds made so far and adds `extend_stride_s` new ones (audiocraft's `extend_stride`, 18 s).
    # It must be shorter than the window of every model that makes such pieces.
    extend_stride_s: float = Field(default=DEFAULT_EXTEND_STRIDE_S, gt=0)
    # Longest input clip, in seconds. Not an [engine] key: it is `[limits] max_input_seconds`, copied
    # here (by `load_engine_settings` and the bot's config) so the worker and the bot use one limit.
    max_input_seconds: float = Field(default=600.0, gt=0)
    # Longest `duration`, in seconds. Not an [engine] key either: `[limits] max_duration_s`, copied here
    # the same way, so the engine and the CLI accept what the bot does.
    max_duration_s: int = Field(default=DEFAULT_MAX_DURATION_S, ge=1)
    # The most jobs a batch holds. Not an [engine] key either: `[worker] max_batch_size`, copied here
    # the same way, so that `cpu_matmul = "auto"` times the row counts the worker's batches have.
    max_batch_size: int = Field(default=4, ge=1)

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


# The `[limits]` keys the engine reads too, copied into `[engine]` so that both sides use one value.
LIMITS_SHARED_WITH_ENGINE = ("max_input_seconds", "max_duration_s")


def with_limits(engine_tables: Mapping[str, Any], limits: Mapping[str, Any] | None) -> dict[str, Any]:
    """The engine tables with the `[limits]` keys the engine shares (`LIMITS_SHARED_WITH_ENGINE`)
    copied into `engine`, those that are set."""
    given = limits or {}
    shared = {key: given[key] for key in LIMITS_SHARED_WITH_ENGINE if key in given}
    if not shared:
        return dict(engine_tables)
    return {**engine_tables, "engine": {**engine_tables.get("engine", {}), **shared}}


def with_batch_size(engine_tables: Mapping[str, Any], worker: Mapping[str, Any] | None) -> dict[str, Any]:
    """The engine tables with `[worker] max_batch_size`, where it is set, copied into `engine`."""
    if not worker or "max_batch_size" not in worker:
        return dict(engine_tables)
    engine = {**engine_tables.get("engine", {}), "max_batch_size": worker["max_batch_size"]}
    return {**engine_tables, "engine": engine}


def load_engine_settings(path: str | os.PathLike[str] | None = None) -> EngineSettings:
    raw = read_config_file(path)
    tables: dict[str, Any] = {k: raw[k] for k in ("models", "engine", "melody") if k in raw}
    return EngineSettings(**with_batch_size(with_limits(tables, raw.get("limits")), raw.get("worker")))
