"""What `doctor` measures with torch: the torch build and its devices, and the served engine on one
device, against float32 on the CPU (its numerics) and against the clock (its speed).

Plain numbers come out; `inference.doctor` judges them (thresholds, verdicts, what to change). The
served path is the engine a worker on that device builds from the same settings: its dtype, its
decoder pass and kernels, its static cache and compiled step.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inference.checkpoints.loading import resolve_dtype
from inference.engine.audio import measure_loudness
from inference.engine.comparison import codes_and_audio, spectral_difference_db, teacher_forced
from inference.engine.generated_audio import GeneratedAudio
from inference.engine.musicgen_engine import MusicGenEngine
from inference.request import GenerationRequest
from inference.settings import EngineSettings

MIB = 2**20


@dataclass(frozen=True)
class GpuFacts:
    device: str  # "cuda:0"
    name: str
    capability: str  # "9.0"
    total_mib: float
    free_mib: float
    bfloat16: bool  # computes bfloat16 natively (Ampere and later)


@dataclass(frozen=True)
class TorchFacts:
    version: str
    cuda_build: str | None  # the CUDA torch was built with; None for a CPU build
    cudnn: int | None
    threads: int  # torch's intra-op threads in this process
    gpus: tuple[GpuFacts, ...]


def torch_facts() -> TorchFacts:
    """torch's version and build, and every GPU it sees (honouring CUDA_VISIBLE_DEVICES)."""
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(
                GpuFacts(
                    device=f"cuda:{index}",
                    name=properties.name,
                    capability=f"{properties.major}.{properties.minor}",
                    total_mib=total / MIB,
                    free_mib=free / MIB,
                    bfloat16=properties.major >= 8,
                )
            )
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return TorchFacts(
        version=torch.__version__,
        cuda_build=torch.version.cuda,
        cudnn=cudnn,
        threads=torch.get_num_threads(),
        gpus=tuple(gpus),
    )


def prepare_process(settings: EngineSettings) -> None:
    """Set this process up as a worker sets itself up: torch's threads, no weight-loading bars."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if settings.engine.cpu_threads > 0:
        torch.set_num_threads(settings.engine.cpu_threads)


def dtype_on(settings: EngineSettings, device: str) -> str:
    """The dtype a worker on `device` runs the model in, as `[engine] dtype` resolves there."""
    return _dtype_name(resolve_dtype(settings.engine, torch.device(device)))


def on_device(settings: EngineSettings, device: str) -> EngineSettings:
    """`settings` as a worker pinned to `device` has them."""
    return settings.model_copy(update={"engine": settings.engine.model_copy(update={"device": device})})


def reference_settings(settings: EngineSettings) -> EngineSettings:
    """The reference the served paths are checked against: float32 on the CPU, through our decoder pass
    with its default kernels (tested against transformers' logits), no static cache, no compiling."""
    engine = settings.engine.model_copy(
        update={
            "device": "cpu",
            "dtype": "float32",
            "decoder": "own",
            "cpu_matmul": "auto",
            "static_cache": False,
            "compile": False,
        }
    )
    return settings.model_copy(update={"engine": engine})


@dataclass
class Reference:
    """One request made by float32 on the CPU: its codes and audio, what every device is held to."""

    engine: MusicGenEngine
    request: GenerationRequest
    model_source: str | None
    codes: torch.Tensor
    wav: torch.Tensor
    _finite: bool | None = field(default=None, repr=False)

    @property
    def finite(self) -> bool:
        """Whether the reference's own logits and audio are finite (computed once, when asked: a
        device's NaN is either its own or the checkpoint's)."""
        if self._finite is None:
            forced = teacher_forced(self.engine, self.request, self.codes, self.model_source)
            self._finite = forced.finite and bool(torch.isfinite(self.wav).all())
        return self._finite


def make_reference(
    settings: EngineSettings, request: GenerationRequest, model_source: str | None
) -> Reference:
    engine = MusicGenEngine(reference_settings(settings))
    codes, wav = codes_and_audio(engine, request, model_source)
    return Reference(engine, request, model_source, codes, wav)


def served_engine(settings: EngineSettings, device: str, reference: Reference) -> MusicGenEngine:
    """The engine a worker on `device` builds; the reference's own where the settings are the same
    (float32 on a CPU), so that the model is not loaded twice."""
    served = on_device(settings, device)
    # `dtype = "auto"` as the worker resolves it (nothing else reads the setting): where it is
    # float32 on a CPU, the served path is the reference's.
    engine = served.engine.model_copy(update={"dtype": dtype_on(settings, device)})
    served = served.model_copy(update={"engine": engine})
    if served == reference.engine.settings:
        return reference.engine
    select_device(device)
    return MusicGenEngine(served)


def select_device(device: str) -> None:
    """Make a GPU the current one, as a worker pinned to it does: allocations that name no device
    (compiling, CUDA graphs) land on it. Nothing to do for the CPU."""
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))


@dataclass(frozen=True)
class Numerics:
    """A device's served path against the reference, on the reference's request."""

    device: str
    dtype: str
    decoder: str  # the decoder pass and its kernels, in a few words
    finite: bool  # no NaN or infinity in its logits (teacher-forced) or its audio (free decoding)
    agreement: float  # share of codes its guided argmax picks as the reference did, in the same context
    loudness_difference_lu: float  # |LUFS| of its teacher-forced picks' audio against the reference's
    spectral_difference_db: float  # the same two clips' mean log-spectral difference
    identical_codes: float  # free decoding: share of codes identical to the reference's
    first_difference: int | None  # free decoding: the first frame where a code differs (None: none)


def check_numerics(engine: MusicGenEngine, reference: Reference) -> Numerics:
    """Decode the reference's request on `engine` freely and teacher-forced, and compare."""
    request, source = reference.request, reference.model_source
    loaded = engine.cache.get(request.model_version, source)
    if engine is reference.engine:
        codes, wav = reference.codes, reference.wav
    else:
        codes, wav = codes_and_audio(engine, request, source)
    forced = teacher_forced(engine, request, reference.codes, source)
    finite = forced.finite and bool(torch.isfinite(wav).all()) and bool(torch.isfinite(forced.wav).all())
    same = codes == reference.codes
    differing = (~same).any(0).nonzero()
    return Numerics(
        device=str(loaded.device),
        dtype=_dtype_name(loaded.dtype),
        decoder=decoder_description(engine, request.model_version),
        finite=finite,
        agreement=float((forced.picks == reference.codes).float().mean()),
        loudness_difference_lu=_loudness_difference(reference.wav, forced.wav, loaded.sample_rate),
        spectral_difference_db=spectral_difference_db(reference.wav, forced.wav) if finite else math.nan,
        identical_codes=float(same.float().mean()),
        first_difference=int(differing[0]) if len(differing) else None,
    )


def decoder_description(engine: MusicGenEngine, model_version: str) -> str:
    """The decoder pass a model runs through on `engine`, and its kernels."""
    options = engine.settings.engine
    if options.runs_our_decoder:
        kernels = engine.kernel_choices.get(model_version)
        return "our pass" + (f", {kernels}" if kernels else "")
    parts = ["transformers' pass"]
    if options.static_cache:
        parts.append("static cache")
    if options.compile:
        cuda_graphs = options.static_cache and engine.cache.device.type == "cuda"
        parts.append("compiled, CUDA graphs" if cuda_graphs else "compiled")
    return ", ".join(parts)


def _loudness_difference(a: torch.Tensor, b: torch.Tensor, sample_rate: int) -> float:
    """|difference| of two clips' integrated loudness in LU (0 when both are too quiet to gate)."""
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return math.nan
    first, second = measure_loudness(a, sample_rate), measure_loudness(b, sample_rate)
    if math.isinf(first) and math.isinf(second):
        return 0.0
    return abs(first - second)


@dataclass(frozen=True)
class Timing:
    """A batch of identical jobs (seeds apart) on one device, timed."""

    device: str
    jobs: int
    audio_s: float  # each job's seconds of audio
    wall_s: float  # from submitting the batch to the last job's audio
    decode_s: float  # the decoding loop's share of it
    steps: int  # decoder steps of each job
    peak_mib: float
    peak_of: str  # what `peak_mib` counts

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.decode_s

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per second of one job's audio: how long each member waits per second of music."""
        return self.wall_s / self.audio_s


def time_jobs(
    engine: MusicGenEngine, request: GenerationRequest, jobs: int, model_source: str | None, *, warm_up: bool
) -> Timing:
    """Run `jobs` copies of `request` (seeds apart) as one batch and time it; `warm_up` runs the same
    batch once before (a compiled step compiles for each new shape)."""
    assert request.seed is not None
    requests = [request.replace(seed=request.seed + index) for index in range(jobs)]
    if warm_up:
        _generate(engine, requests, model_source)
    device = engine.cache.device
    with _peak_memory(device) as peak:
        started = time.perf_counter()
        made, steps = _generate(engine, requests, model_source)
        wall_s = time.perf_counter() - started
    return Timing(
        device=str(device),
        jobs=jobs,
        audio_s=float(request.duration),
        wall_s=wall_s,
        decode_s=made[0].timings.get("generate", wall_s),
        steps=steps,
        peak_mib=peak.mib,
        peak_of="GPU memory allocated" if device.type == "cuda" else "resident memory of this process",
    )


def _generate(
    engine: MusicGenEngine, requests: list[GenerationRequest], model_source: str | None
) -> tuple[list[GeneratedAudio], int]:
    """The batch's audio, and the decoder steps of its first job."""
    steps = 0

    def count(done: int, total: int) -> None:
        nonlocal steps
        steps = total

    return engine.generate_all(requests, model_source=model_source, on_progress=count), steps


@dataclass
class _Peak:
    mib: float = math.nan


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[_Peak]:
    """The peak memory while the block runs: the GPU's allocations, or this process's resident set
    (Linux resets its high-water mark on request; elsewhere it is the peak since the start)."""
    peak = _Peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield peak
        torch.cuda.synchronize(device)
        peak.mib = torch.cuda.max_memory_allocated(device) / MIB
        return
    _reset_resident_peak()
    yield peak
    peak.mib = _resident_peak_mib()


def _reset_resident_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _resident_peak_mib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB


def release(engine: MusicGenEngine) -> None:
    """Free a device's models (the next device's check should not share its memory)."""
    device = engine.cache.device
    engine.cache.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
