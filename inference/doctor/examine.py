"""The doctor's round: the host, torch and its devices, then on every device the workers would use, a
short greedy generation checked against float32 on the CPU and two timed batches.

torch is imported only once the host's checks are done (`inference.engine.checkup`), so this module
loads in the bot's process like the rest of inference outside the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference.backends.placement import worker_devices
from inference.cpu_features import cpu_flags, has_native_bfloat16
from inference.doctor.host import (
    RAY_CONNECT_TIMEOUT_S,
    cpu_finding,
    disk_finding,
    dtype_reason,
    ffmpeg_finding,
    memory_finding,
    ray_finding,
)
from inference.doctor.judging import failure_finding, numerics_findings, timing_finding
from inference.doctor.plan import DoctorPlan
from inference.doctor.report import Finding, Verdict
from inference.request import GenerationRequest

if TYPE_CHECKING:
    from inference.engine.checkup import GpuFacts, Reference, TorchFacts
    from inference.engine.musicgen_engine import MusicGenEngine

CHECK_PROMPT = "lofi hip hop beat with warm piano chords"
TIMING_PROMPT = "upbeat electronic dance track with a driving kick drum"
SEED = 1


@dataclass(frozen=True)
class Lengths:
    """How long the doctor's generations are: the check's seconds, and the timed jobs' seconds."""

    check_s: int = 2
    timed_s: int = 8

    @classmethod
    def quick(cls) -> Lengths:
        """One second each: for tests, and for a first look."""
        return cls(check_s=1, timed_s=1)


def examine(
    plan: DoctorPlan,
    *,
    model_source: str | None = None,
    lengths: Lengths | None = None,
    ray_timeout_s: float = RAY_CONNECT_TIMEOUT_S,
    progress: Callable[[str], None] = lambda step: None,
) -> list[Finding]:
    """Every finding, in the order of the table. `model_source` overrides the default model's
    configured checkpoint; `progress(step)` is told what runs next (some steps take minutes)."""
    source = model_source or plan.model_source
    lengths = lengths or Lengths()
    findings = [
        Finding("config", Verdict.INFO, str(plan.config_path) if plan.config_path else "built-in defaults"),
        Finding("model", Verdict.INFO, f"{plan.model_version}: {source}"),
        cpu_finding(),
        memory_finding(),
        disk_finding(plan.data_dir, plan.min_free_mb),
        ffmpeg_finding(plan.settings.engine.ffmpeg),
    ]
    progress("Ray")
    findings.append(ray_finding(plan.backend, ray_timeout_s))
    progress("torch")
    from inference.engine import checkup

    checkup.prepare_process(plan.settings)
    facts = checkup.torch_facts()
    findings += _torch_findings(facts)
    devices = _devices(plan, len(facts.gpus))
    findings.append(Finding("devices", Verdict.INFO, _devices_result(plan, devices)))
    for device in devices:
        picked = checkup.dtype_on(plan.settings, device)
        findings.append(
            Finding(
                f"dtype on {device}",
                Verdict.INFO,
                dtype_reason(plan.settings.engine.dtype, device, picked),
            )
        )
    progress(f"{plan.model_version} in float32 on the CPU (the reference)")
    check = GenerationRequest(
        model_version=plan.model_version,
        prompt=CHECK_PROMPT,
        duration=lengths.check_s,
        seed=SEED,
        temperature=0.0,
    )
    try:
        reference = checkup.make_reference(plan.settings, check, model_source)
    except Exception as error:
        findings.append(_reference_failed(error))
        return findings
    gpu_bfloat16 = {gpu.device: gpu.bfloat16 for gpu in facts.gpus}
    checked = []
    for device in devices:
        progress(f"{device}: checking against the reference")
        checked.append((device, *_checked(plan, device, reference, gpu_bfloat16)))
    # Timed without the reference's models in memory (unless a device serves them): the CPU's peak
    # is then the served engine's alone, as a worker's would be.
    if all(engine is not reference.engine for _, _, engine in checked):
        checkup.release(reference.engine)
    for device, device_findings, engine in checked:
        findings += device_findings
        if engine is None:
            continue
        progress(f"{device}: timing")
        findings += _timings(plan, device, engine, lengths, source=reference.model_source)
        checkup.release(engine)
    return findings


def _torch_findings(facts: TorchFacts) -> list[Finding]:
    build = f"CUDA {facts.cuda_build}" if facts.cuda_build else "a CPU build (no CUDA)"
    if facts.cudnn is not None:
        build += f", cuDNN {facts.cudnn}"
    findings = [Finding("torch", Verdict.INFO, f"{facts.version}, {build}; {facts.threads} CPU thread(s)")]
    findings += [_gpu_finding(gpu) for gpu in facts.gpus]
    if facts.cuda_build and not facts.gpus:
        findings.append(
            Finding(
                "GPU",
                Verdict.WARN,
                "torch is built with CUDA but sees no GPU",
                "check the NVIDIA driver (`nvidia-smi`) and CUDA_VISIBLE_DEVICES; until then the workers run on the CPU.",
            )
        )
    return findings


def _gpu_finding(gpu: GpuFacts) -> Finding:
    bfloat16 = "bfloat16 native" if gpu.bfloat16 else "no native bfloat16"
    return Finding(
        gpu.device,
        Verdict.INFO,
        f"{gpu.name}, compute capability {gpu.capability}, {gpu.total_mib / 1024:.1f} GiB "
        f"({gpu.free_mib / 1024:.1f} GiB free), {bfloat16}",
    )


def _devices(plan: DoctorPlan, gpu_count: int) -> list[str]:
    """The devices the workers would run on, each once (placement's rule, with this machine's GPUs)."""
    backend = plan.backend
    placed = worker_devices(backend.processes, backend.devices, plan.settings.engine.device, gpu_count)
    return list(dict.fromkeys(_concrete(device, gpu_count) for device in placed))


def _concrete(device: str, gpu_count: int) -> str:
    """A worker's device as torch names it: a worker given "auto" or "cuda" runs on the first GPU
    (the CPU where there is none), as `resolve_device` picks it."""
    name = device.strip().lower()
    if name == "auto":
        return "cuda:0" if gpu_count else "cpu"
    if name == "cuda":
        return "cuda:0"
    return name


def _devices_result(plan: DoctorPlan, devices: list[str]) -> str:
    result = f"workers on {', '.join(devices)}"
    if plan.backend.backend == "ray":
        result += " (Ray places its replicas on the cluster's nodes: run the doctor on each of them too)"
    return result


def _reference_failed(error: BaseException) -> Finding:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return Finding(
        "model",
        Verdict.FAIL,
        f"could not run in float32 on the CPU: {message}",
        "point `[models]` at a checkpoint this machine can load (a local folder, or a hub id with network "
        "access), or name one with --model.",
    )


def _checked(
    plan: DoctorPlan, device: str, reference: Reference, gpu_bfloat16: dict[str, bool]
) -> tuple[list[Finding], MusicGenEngine | None]:
    """One device's served path against the reference: its lines, and its engine to time (None when
    it failed to run or its values are not finite)."""
    from inference.engine import checkup

    compiled = plan.settings.engine.compile
    try:
        engine = checkup.served_engine(plan.settings, device, reference)
        numerics = checkup.check_numerics(engine, reference)
    except Exception as error:
        return [failure_finding(f"generation on {device}", device, error, compiled=compiled)], None
    safer = _safer_dtype(numerics.dtype, device, gpu_bfloat16.get(device, False))
    findings = numerics_findings(numerics, lambda: reference.finite, compiled=compiled, safer_dtype=safer)
    if numerics.finite:
        return findings, engine
    findings.append(Finding(f"timing on {device}", Verdict.INFO, "not timed: its values are not finite"))
    if engine is not reference.engine:
        checkup.release(engine)
    return findings, None


def _timings(
    plan: DoctorPlan,
    device: str,
    engine: MusicGenEngine,
    lengths: Lengths,
    *,
    source: str | None,
) -> list[Finding]:
    from inference.engine import checkup

    compiled = plan.settings.engine.compile
    checkup.select_device(device)  # the last device checked may be another card
    request = GenerationRequest(
        model_version=plan.model_version, prompt=TIMING_PROMPT, duration=lengths.timed_s, seed=SEED
    )
    batches = [(1, f"{lengths.timed_s} s job on {device}")]
    # `[worker] max_batch_size`, which the engine settings carry (the batch the doctor times).
    if (batch_size := plan.settings.engine.max_batch_size) > 1:
        batches.append((batch_size, f"batch of {batch_size} on {device}"))
    findings = []
    for jobs, label in batches:
        try:
            timing = checkup.time_jobs(engine, request, jobs, source, warm_up=compiled)
        except Exception as error:
            findings.append(failure_finding(label, device, error, compiled=compiled))
            break
        findings.append(timing_finding(timing, label))
    return findings


def _safer_dtype(dtype: str, device: str, gpu_bfloat16: bool) -> str:
    """The dtype to suggest where `dtype` overflows: bfloat16 (float32's range) where the device
    computes it natively, else float32."""
    native_bfloat16 = gpu_bfloat16 if device.startswith("cuda") else has_native_bfloat16(cpu_flags())
    if dtype == "float16" and native_bfloat16:
        return "bfloat16"
    return "float32"
