"""What this CPU can compute natively, from the flags Linux lists in /proc/cpuinfo. Torch-free."""

from __future__ import annotations

import functools
from pathlib import Path

# bfloat16 arithmetic in hardware: AVX-512 BF16 dot products, or AMX tiles.
NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (of this machine's /proc/cpuinfo unless `cpuinfo` is given); empty where
    there is no flags line (not Linux, or a stripped container)."""
    if cpuinfo is None:
        return _this_cpus_flags()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.cache
def _this_cpus_flags() -> frozenset[str]:
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def has_native_bfloat16(flags: frozenset[str]) -> bool:
    return bool(NATIVE_BFLOAT16_FLAGS & flags)


def has_amx_bfloat16(flags: frozenset[str]) -> bool:
    """AMX tiles with bfloat16 (Xeon Sapphire Rapids and later): matrix products of bfloat16 at
    several times the vector units' rate."""
    return "amx_bf16" in flags
