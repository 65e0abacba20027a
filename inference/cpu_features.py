"""What this CPU is and can compute natively, from what Linux lists in /proc/cpuinfo. Torch-free."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# bfloat16 arithmetic in hardware: AVX-512 BF16 dot products, or AMX tiles.
NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (of this machine's /proc/cpuinfo unless `cpuinfo` is given); empty where
    there is no flags line (not Linux, or a stripped container)."""
    if cpuinfo is None:
        return _this_cpus_flags()
    return frozenset(_first_field(cpuinfo, "flags").split())


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) Platinum 8481C"), of this machine's
    /proc/cpuinfo unless `cpuinfo` is given; where it lists none (ARM, not Linux), the platform's
    processor or architecture name."""
    text = _this_cpuinfo() if cpuinfo is None else cpuinfo
    return " ".join(_first_field(text, "model name").split()) or platform.processor() or platform.machine()


def _first_field(cpuinfo: str, field: str) -> str:
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return ""


@functools.cache
def _this_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@functools.cache
def _this_cpus_flags() -> frozenset[str]:
    return cpu_flags(_this_cpuinfo())


def has_native_bfloat16(flags: frozenset[str]) -> bool:
    return bool(NATIVE_BFLOAT16_FLAGS & flags)


def has_amx_bfloat16(flags: frozenset[str]) -> bool:
    """AMX tiles with bfloat16 (Xeon Sapphire Rapids and later): matrix products of bfloat16 at
    several times the vector units' rate."""
    return "amx_bf16" in flags
