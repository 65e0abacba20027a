"""Loading MusicGen and EnCodec models, with an LRU cache bounded by a memory budget.

Sources come from `[models]` in config.toml: a hub id or a local folder per model version. A source
that is an audiocraft training export (see inference.checkpoints.convert) is converted once into
`[models] conversion_cache/<key>` and that copy is loaded afterwards, also by later processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from inference.catalogue import ModelCatalogue
from inference.checkpoints.convert import (
    COMPRESSION_STATE_FILE,
    LM_STATE_FILE,
    WINDOW_CONFIG_ATTRIBUTE,
    convert_audiocraft_checkpoint,
    is_audiocraft_checkpoint,
)
from inference.cpu_features import cpu_flags, has_native_bfloat16
from inference.request import RequestError
from inference.settings import EngineOptions, EngineSettings
from inference.windows import RELEASED_MODEL_WINDOW_S

logger = logging.getLogger(__name__)


class _CodebookSpecialTokenFilter(logging.Filter):
    """Drops transformers' warning that MusicGen's pad/bos token (2048) is outside its 2048-code
    vocabulary: that id is audiocraft's special token, one past the codebook by design, and the
    generic config check would print the false alarm on every model load."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith(("Model config: pad_token_id", "Model config: bos_token_id"))
            and "(between 0 and 2047), got 2048" in message
        )


logging.getLogger("transformers.configuration_utils").addFilter(_CodebookSpecialTokenFilter())

BYTES_PER_GB = 1_000_000_000
# Bump when the converter's output changes, so stale conversions are not reused.
CONVERTER_REVISION = 2
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# EnCodec always runs in float32, whatever `[engine] dtype` says, as in audiocraft (which autocasts
# only the language model): its quantizer's squared distances overflow float16, and it is small.
CODEC_DTYPE = torch.float32
_SAFETENSORS_ELEMENT_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def model_window_s(config: Any) -> float:
    """The window of a MusicGen config: a converted audiocraft checkpoint records its training segment;
    every other one is a released model's (or made like one), whose window is 30 s."""
    return float(getattr(config, WINDOW_CONFIG_ATTRIBUTE, None) or RELEASED_MODEL_WINDOW_S)


class ModelLoadError(RuntimeError):
    """A configured model could not be loaded; the message names the source and the config key."""


def resolve_device(options: EngineOptions) -> torch.device:
    """The torch device from `[engine] device`: "auto" is cuda when torch sees a GPU, else cpu."""
    name = options.device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"[engine] device = {options.device!r} is not a torch device ({error})") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"[engine] device = {options.device!r}, but torch sees no CUDA GPU on this machine"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"[engine] device = {options.device!r}, but only {torch.cuda.device_count()} CUDA GPU(s) are visible"
            )
    return device


def resolve_dtype(options: EngineOptions, device: torch.device) -> torch.dtype:
    """The weights' dtype from `[engine] dtype`. "auto": float16 on CUDA; on a CPU, bfloat16 where it
    computes bfloat16 natively (avx512_bf16 or AMX), else float32 (emulated bfloat16 is slower)."""
    if options.dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    return _DTYPES[options.dtype]


def cpu_has_native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (from /proc/cpuinfo; False where it is unreadable)."""
    return has_native_bfloat16(cpu_flags(cpuinfo))


def module_size_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class LoadedMusicGen:
    """A MusicGen model ready to generate, with what the engine needs to know about it."""

    version: str
    source: str
    model: Any  # MusicgenForConditionalGeneration | MusicgenMelodyForConditionalGeneration, in eval mode
    tokenizer: Any
    sample_rate: int
    audio_channels: int
    frame_rate: int
    supports_melody: bool
    device: torch.device
    dtype: torch.dtype
    size_bytes: int
    # The folder the weights were read from: the source itself, or its converted copy.
    weights_path: str = ""
    # The most it generates at once, in seconds (longer pieces are made window by window): 30 s for
    # the released models, an audiocraft checkpoint's own training segment.
    window_s: float = RELEASED_MODEL_WINDOW_S


@dataclass
class LoadedCompression:
    """An EnCodec model for the encode-decode mode. `audio_channels` are the clip's: 2 with a mono
    EnCodec is a stereo MusicGen's, which codes each channel alone."""

    source: str
    model: Any  # EncodecModel, in eval mode
    sample_rate: int
    audio_channels: int
    frame_rate: int
    device: torch.device
    dtype: torch.dtype
    size_bytes: int


class ModelCache:
    """Loads models on demand and keeps the most recently used ones within `[engine] model_cache_gb`.

    Entries are keyed by source, so versions that share a checkpoint share one copy in memory.
    A model larger than the whole budget is still loaded, alone.
    """

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.catalogue = ModelCatalogue(settings.models)
        self.device = resolve_device(settings.engine)
        self.dtype = resolve_dtype(settings.engine, self.device)
        self.budget_bytes = int(settings.engine.model_cache_gb * BYTES_PER_GB)
        self._entries: OrderedDict[tuple[str, str], LoadedMusicGen | LoadedCompression] = OrderedDict()
        self._lock = threading.RLock()

    # -- public API -------------------------------------------------------------------------

    def get(self, model_version: str, source: str | None = None) -> LoadedMusicGen:
        """The MusicGen model of `model_version` (or of `source`, which overrides `[models]`)."""
        if model_version == "encode-decode":
            raise ValueError("encode-decode has no MusicGen model; use get_compression()")
        chosen = source if source else self.settings.models.source_for(model_version)
        if not chosen:
            reason = self.catalogue.unavailable_reason(model_version)
            if reason is not None:
                raise RequestError(reason)
            raise ModelLoadError(
                f"no source is configured for model version {model_version!r} ([models] {model_version})"
            )
        key = ("musicgen", chosen)
        with self._lock:
            entry = self._lookup(key)
            if entry is None:
                weights = self.weights_folder(chosen)
                self._make_room(self._estimate_bytes(weights))
                entry = self._load_musicgen(model_version, chosen, weights)
                self._insert(key, entry)
            assert isinstance(entry, LoadedMusicGen)
            return dataclasses.replace(entry, version=model_version)

    def get_compression(self, source: str | None = None) -> LoadedCompression:
        """The compression model (EnCodec) encode-decode runs through: that of `source`, else of the
        model the bot serves (`ModelCatalogue.compression_source`). A MusicGen source (transformers
        or audiocraft) gives its own EnCodec, so a fine-tune round-trips through the one it was
        trained with; an EnCodec source is used as is."""
        chosen = source if source else self.catalogue.compression_source()
        if _is_musicgen_source(chosen):
            return self._compression_of(self.get("finetuned", chosen))
        key = ("compression", chosen)
        with self._lock:
            entry = self._lookup(key)
            if entry is None:
                self._make_room(self._estimate_bytes(chosen))
                entry = self._load_compression(chosen)
                self._insert(key, entry)
            assert isinstance(entry, LoadedCompression)
            return entry

    @staticmethod
    def _compression_of(loaded: LoadedMusicGen) -> LoadedCompression:
        """A MusicGen's own EnCodec (shared with it in the cache, so it takes no memory of its own),
        with the MusicGen's channels: a stereo model's mono EnCodec codes each channel alone."""
        codec = loaded.model.audio_encoder
        return LoadedCompression(
            source=loaded.source,
            model=codec,
            sample_rate=int(codec.config.sampling_rate),
            audio_channels=loaded.audio_channels,
            frame_rate=int(codec.config.frame_rate),
            device=loaded.device,
            dtype=CODEC_DTYPE,
            size_bytes=0,
        )

    @property
    def cached_sources(self) -> list[tuple[str, str]]:
        """(kind, source) of the cached models, least recently used first."""
        with self._lock:
            return list(self._entries)

    def holds(self, model: Any) -> bool:
        """Whether `model` is (still) one of the cached models."""
        with self._lock:
            return any(entry.model is model for entry in self._entries.values())

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return sum(entry.size_bytes for entry in self._entries.values())

    def clear(self) -> None:
        """Drop every cached model."""
        with self._lock:
            self._entries.clear()
        self._release_memory()

    # -- conversion ---------------------------------------------------------------------------

    def conversion_folder(self, source: str) -> Path:
        """Where the converted copy of an audiocraft checkpoint lives (changes when the checkpoint does)."""
        folder = Path(source).expanduser().resolve()
        if folder.is_file():
            folder = folder.parent
        fingerprint: dict[str, Any] = {
            "source": str(folder),
            "revision": CONVERTER_REVISION,
            "text_encoder": self.settings.models.text_encoder,
            "compression": self.settings.models.compression,
        }
        for name in (LM_STATE_FILE, COMPRESSION_STATE_FILE):
            file = folder / name
            if file.exists():
                stat = file.stat()
                fingerprint[name] = [stat.st_mtime_ns, stat.st_size]
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:20]
        return Path(self.settings.models.conversion_cache).expanduser() / f"{folder.name}-{digest}"

    def weights_folder(self, source: str) -> str:
        """The folder/id to load: the source, or the converted copy of an audiocraft checkpoint."""
        if not is_audiocraft_checkpoint(source):
            return source
        target = self.conversion_folder(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Worker processes that meet a new checkpoint at the same time: one converts, the others wait
        # for it and load its copy (two conversions would replace the folder under each other).
        with FileLock(f"{target}.lock"):
            if (target / "config.json").is_file():
                logger.info("using the converted copy of %s at %s", source, target)
                return str(target)
            logger.info("converting audiocraft checkpoint %s into %s", source, target)
            convert_audiocraft_checkpoint(
                source,
                target,
                text_encoder=self.settings.models.text_encoder,
                compression=self.settings.models.compression,
            )
        return str(target)

    # -- loading ------------------------------------------------------------------------------

    def _load_musicgen(self, version: str, source: str, weights: str) -> LoadedMusicGen:
        from transformers import (
            AutoConfig,
            AutoTokenizer,
            MusicgenForConditionalGeneration,
            MusicgenMelodyForConditionalGeneration,
        )

        try:
            config = AutoConfig.from_pretrained(weights)
            melody = config.model_type == "musicgen_melody"
            if config.model_type not in ("musicgen", "musicgen_melody"):
                raise ModelLoadError(f"it is a {config.model_type!r} model, not MusicGen")
            model_class = (
                MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
            )
            model = model_class.from_pretrained(weights, dtype=self.dtype)
            # The tokenizer alone: the melody processor's feature extractor needs torchaudio.
            tokenizer = AutoTokenizer.from_pretrained(weights)
        except Exception as error:
            raise ModelLoadError(self._load_failure(version, source, error)) from error
        model = model.to(self.device).eval()
        model.audio_encoder.to(CODEC_DTYPE)
        audio_encoder = model.config.audio_encoder
        return LoadedMusicGen(
            version=version,
            source=source,
            model=model,
            tokenizer=tokenizer,
            sample_rate=int(audio_encoder.sampling_rate),
            audio_channels=int(model.config.decoder.audio_channels),
            frame_rate=int(audio_encoder.frame_rate),
            supports_melody=melody,
            device=self.device,
            dtype=self.dtype,
            size_bytes=module_size_bytes(model),
            weights_path=weights,
            window_s=model_window_s(model.config),
        )

    def _load_compression(self, source: str) -> LoadedCompression:
        from transformers import EncodecModel

        try:
            model = EncodecModel.from_pretrained(source, dtype=CODEC_DTYPE)
        except Exception as error:
            raise ModelLoadError(self._load_failure("compression", source, error)) from error
        model = model.to(self.device).eval()
        return LoadedCompression(
            source=source,
            model=model,
            sample_rate=int(model.config.sampling_rate),
            audio_channels=int(model.config.audio_channels),
            frame_rate=int(model.config.frame_rate),
            device=self.device,
            dtype=CODEC_DTYPE,
            size_bytes=module_size_bytes(model),
        )

    @staticmethod
    def _load_failure(key: str, source: str, error: BaseException) -> str:
        where = "folder" if Path(source).expanduser().exists() else "hub id"
        hint = (
            "a hub id needs network access or a copy in the Hugging Face cache"
            if where == "hub id"
            else "the folder must hold a transformers MusicGen/EnCodec checkpoint or an audiocraft export"
        )
        return f"Could not load {key} model from {where} {source!r} ([models] {key} in config.toml; {hint}): {error}"

    # -- LRU bookkeeping ------------------------------------------------------------------------

    def _lookup(self, key: tuple[str, str]) -> LoadedMusicGen | LoadedCompression | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def _insert(self, key: tuple[str, str], entry: LoadedMusicGen | LoadedCompression) -> None:
        self._entries[key] = entry
        # The estimate may have been off (or unknown for hub ids): settle with the real size.
        self._evict_until(lambda: self.cached_bytes <= self.budget_bytes, keep=key)

    def _make_room(self, incoming_bytes: int) -> None:
        self._evict_until(lambda: self.cached_bytes + incoming_bytes <= self.budget_bytes)

    def _evict_until(self, fits: Any, keep: tuple[str, str] | None = None) -> None:
        evicted = False
        while not fits():
            victim = next((k for k in self._entries if k != keep), None)
            if victim is None:
                break  # only the newcomer is left: a model larger than the budget still loads alone
            logger.info(
                "evicting %s from the model cache (budget %.1f GB)", victim, self.budget_bytes / BYTES_PER_GB
            )
            del self._entries[victim]
            evicted = True
        if evicted:
            self._release_memory()

    def _release_memory(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _estimate_bytes(self, weights: str) -> int:
        """Bytes the weights in a local folder, or a hub id's copy in the Hugging Face cache, will
        take at the cache's dtype (0 when unknown)."""
        folder = Path(weights).expanduser()
        if not folder.is_dir():
            folder = _hub_cache_folder(weights) or folder
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not files:
            return 0
        from safetensors import safe_open

        target = torch.tensor([], dtype=self.dtype).element_size()
        total = 0
        for file in files:
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    tensor_slice = handle.get_slice(name)
                    numel = 1
                    for dim in tensor_slice.get_shape():
                        numel *= dim
                    stored = _SAFETENSORS_ELEMENT_BYTES.get(tensor_slice.get_dtype(), 4)
                    # Floating weights are cast to the cache's dtype; integer buffers keep their size.
                    is_float = tensor_slice.get_dtype() in ("F64", "F32", "F16", "BF16")
                    total += numel * (target if is_float else stored)
        return total


def _is_musicgen_source(source: str) -> bool:
    """Whether a source holds a MusicGen (audiocraft export, or a transformers MusicGen config) rather
    than an EnCodec. A hub id that cannot be read here is taken for an EnCodec (its loading then says why)."""
    if is_audiocraft_checkpoint(source):
        return True
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception:
        return False
    return config.model_type in ("musicgen", "musicgen_melody")


def _hub_cache_folder(repo_id: str) -> Path | None:
    """The Hugging Face cache's snapshot of `repo_id`, found without the network, or None."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None
