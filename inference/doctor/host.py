"""The doctor's checks of the host that need no torch: the CPU, memory, the data dir's disk, ffmpeg,
and Ray (installed, and the configured cluster reachable)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from inference.backends.base import BackendOptions
from inference.cpu_features import NATIVE_BFLOAT16_FLAGS, cpu_flags, cpu_model_name, has_native_bfloat16
from inference.doctor.report import Finding, Verdict
from inference.media.environment import child_environment
from inference.media.ffmpeg import resolve_ffmpeg_setting, use_ffmpeg

MIB = 2**20
GIB = 2**30
# The CPU flags that decide the decoder's kernels and the dtype `auto` picks.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
FFMPEG_VERSION_TIMEOUT_S = 20.0
# How long a TCP connection to the Ray address may take before it counts as unreachable.
RAY_PROBE_TIMEOUT_S = 3.0
# Joining the cluster (importing ray, connecting to its control store) in a child process; ray.init
# waits without end for an address that does not answer, so the child is killed past this.
RAY_CONNECT_TIMEOUT_S = 30.0


def cpu_finding() -> Finding:
    flags = cpu_flags()
    present = [flag for flag in KERNEL_FLAGS if flag in flags] or ["none of " + "/".join(KERNEL_FLAGS)]
    native = "computes bfloat16 natively" if has_native_bfloat16(flags) else "no native bfloat16"
    return Finding(
        "CPU",
        Verdict.INFO,
        f"{cpu_model_name()}, {os.cpu_count()} logical cores; {', '.join(present)}; {native}",
    )


def dtype_reason(configured: str, device: str, picked: str) -> str:
    """Why a device runs the model in `picked`: the config, or what `auto` saw."""
    if configured != "auto":
        return f"{picked} (set: [engine] dtype = {configured!r})"
    if device.startswith("cuda"):
        return f"{picked} (auto: float16 on CUDA)"
    if picked == "bfloat16":
        native = ", ".join(sorted(NATIVE_BFLOAT16_FLAGS & cpu_flags()))
        return f"{picked} (auto: this CPU computes bfloat16 natively, {native})"
    return (
        f"{picked} (auto: this CPU has neither {' nor '.join(sorted(NATIVE_BFLOAT16_FLAGS))}, "
        "and emulated bfloat16 is slower than float32)"
    )


def memory_finding() -> Finding:
    total, available = _memory_bytes()
    if total is None:
        return Finding("memory", Verdict.INFO, "unknown (no /proc/meminfo)")
    free = f", {available / GIB:.1f} GiB available" if available is not None else ""
    return Finding("memory", Verdict.INFO, f"{total / GIB:.1f} GiB{free}")


def _memory_bytes() -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes, from /proc/meminfo (None where unknown)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None, None
    values = {name: int(rest.split()[0]) * 1024 for name, _, rest in (line.partition(":") for line in lines)}
    return values.get("MemTotal"), values.get("MemAvailable")


def disk_finding(data_dir: Path, min_free_mb: float) -> Finding:
    """Free space on the data dir's disk (the nearest folder that exists, before the bot makes it)."""
    folder = data_dir.resolve()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    result = f"{free / GIB:.1f} GiB free for {data_dir} (jobs are refused below {min_free_mb:g} MB)"
    if free < min_free_mb * 1_000_000:
        advice = (
            f"free some space on the disk of {data_dir}, or point `[bot] data_dir` at a larger disk "
            f"(below `[storage] min_free_mb` = {min_free_mb:g} the bot refuses every job)."
        )
        return Finding("disk", Verdict.FAIL, result, advice)
    return Finding("disk", Verdict.OK, result)


def ffmpeg_finding(setting: str) -> Finding:
    """The ffmpeg every decode and encode runs (`[engine] ffmpeg`), and its version."""
    try:
        configured = resolve_ffmpeg_setting(setting)
        executable = use_ffmpeg(setting)
    except (ValueError, RuntimeError) as error:
        return Finding("ffmpeg", Verdict.FAIL, str(error), _FFMPEG_ADVICE)
    which = "configured in [engine] ffmpeg" if configured is not None else "bundled imageio-ffmpeg"
    try:
        completed = subprocess.run(
            [executable, "-hide_banner", "-version"],
            capture_output=True,
            text=True,
            timeout=FFMPEG_VERSION_TIMEOUT_S,
            env=child_environment(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return Finding("ffmpeg", Verdict.FAIL, f"{executable} does not run: {error}", _FFMPEG_ADVICE)
    words = (completed.stdout.splitlines() or [""])[0].split()
    if completed.returncode != 0 or words[:2] != ["ffmpeg", "version"]:
        return Finding(
            "ffmpeg", Verdict.FAIL, f"{executable} exited with {completed.returncode}", _FFMPEG_ADVICE
        )
    version = words[2] if len(words) > 2 else "unknown"
    return Finding("ffmpeg", Verdict.OK, f"{version} ({which}): {executable}")


_FFMPEG_ADVICE = (
    'set `[engine] ffmpeg = ""` to use the ffmpeg installed with the bot (imageio-ffmpeg), '
    "or point it at an ffmpeg that runs."
)


def ray_finding(backend: BackendOptions, connect_timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> Finding:
    """Whether Ray is installed, and, with `[worker] backend = "ray"`, whether its cluster answers."""
    installed = importlib.util.find_spec("ray") is not None
    version = importlib.metadata.version("ray") if installed else ""
    if backend.backend != "ray":
        state = f"ray {version} installed" if installed else "not installed"
        return Finding("Ray", Verdict.INFO, f'{state}; not used ([worker] backend = "{backend.backend}")')
    if not installed:
        return Finding(
            "Ray",
            Verdict.FAIL,
            '[worker] backend = "ray", but ray is not installed',
            "install it on the bot's host and on every node: pip install 'musicgen-bot[ray]'.",
        )
    address = backend.ray_address
    if not address:
        return Finding("Ray", Verdict.OK, f"ray {version}; the bot starts a Ray runtime on this machine")
    unreachable = _tcp_unreachable(address)
    if unreachable:
        return _unreachable(address, unreachable)
    return _joined_cluster(address, version, connect_timeout_s)


def _tcp_unreachable(address: str) -> str:
    """Why nothing answers at the address's host and port ("" when something does, or when the
    address names no port: "auto")."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return ""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_PROBE_TIMEOUT_S):
            return ""
    except OSError as error:
        return str(error) or type(error).__name__


def _unreachable(address: str, reason: str) -> Finding:
    return Finding(
        "Ray",
        Verdict.FAIL,
        f"cannot reach the Ray cluster at {address} ({reason})",
        f"start the cluster there (`ray start --head` on that node) or set `[worker] ray_address` to the "
        f'address it prints ("" starts Ray on this machine); {address} does not answer.',
    )


# Run in a child: ray.init can wait forever, and its runtime should not stay in the doctor's process.
_JOIN_CLUSTER = """
import json, sys
import ray
ray.init(address=sys.argv[1], include_dashboard=False, configure_logging=False, log_to_driver=False)
resources = ray.cluster_resources()
print(json.dumps({"nodes": len(ray.nodes()), "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)}))
"""


def _joined_cluster(address: str, version: str, timeout_s: float) -> Finding:
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _JOIN_CLUSTER, address],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=child_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _unreachable(address, f"no answer within {timeout_s:g} s")
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["ray.init failed"])[-1]
        return _unreachable(address, last_line)
    cluster = json.loads(completed.stdout.strip().splitlines()[-1])
    return Finding(
        "Ray",
        Verdict.OK,
        f"ray {version}; the cluster at {address} answers: {cluster['nodes']} node(s), "
        f"{cluster['cpus']:g} CPU(s), {cluster['gpus']:g} GPU(s)",
    )
