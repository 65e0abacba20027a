"""How the doctor judges what the engine measured on a device: the thresholds, and the one sentence
that says what to change when a check fails.

The thresholds (teacher-forced: the served path is fed float32's codes, so a difference is the
device's numerics, not the music going another way):
- no NaN and no infinity, in the logits or the audio;
- token agreement at least `MIN_TOKEN_AGREEMENT`: bfloat16 on a CPU agrees with float32 on 97.9 to
  98.4 % of codes (README, `bench/dtype_compare.py`); float16 keeps more mantissa, and float32 on
  another device differs only in rounding;
- the audio of those picks within `MAX_LOUDNESS_DIFFERENCE_LU` of float32's loudness and
  `MAX_SPECTRAL_DIFFERENCE_DB` of its spectrum: a bfloat16 run differs by 0.01 LU and about 1 dB,
  two float32 runs with different seeds (entirely different music) by about 6 dB.
Free decoding (each path following its own codes) is shown, not judged: after the first differing
code it is other music of the same kind, as another seed would be.

These modules never import torch: the measurements come in as plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from inference.doctor.report import Finding, Verdict

if TYPE_CHECKING:
    from inference.engine.checkup import Numerics, Timing

MIN_TOKEN_AGREEMENT = 0.90
MAX_LOUDNESS_DIFFERENCE_LU = 1.0
MAX_SPECTRAL_DIFFERENCE_DB = 3.0


def numerics_findings(
    numerics: Numerics, reference_finite: Callable[[], bool], *, compiled: bool, safer_dtype: str
) -> list[Finding]:
    """The lines of one device's numeric check. `reference_finite()` says whether float32 on the CPU
    is finite too (asked only when the device is not); `safer_dtype` is what to suggest instead of a
    half-precision dtype that fails here."""
    device, dtype = numerics.device, numerics.dtype
    findings = [Finding(f"decoder on {device}", Verdict.INFO, f"{dtype}, {numerics.decoder}")]
    if not numerics.finite:
        advice = _non_finite_advice(numerics, reference_finite(), compiled=compiled, safer_dtype=safer_dtype)
        findings.append(
            Finding(
                f"finite values on {device}", Verdict.FAIL, "NaN or infinity in the logits or audio", advice
            )
        )
        return findings
    findings.append(Finding(f"finite values on {device}", Verdict.OK, "no NaN, no infinity"))
    fix = _closer_advice(numerics, compiled=compiled)
    findings += [
        _judged(
            f"token agreement on {device}",
            f"{numerics.agreement:.1%} of codes as float32 on the CPU picks them (at least "
            f"{MIN_TOKEN_AGREEMENT:.0%}, teacher-forced)",
            numerics.agreement >= MIN_TOKEN_AGREEMENT,
            fix,
        ),
        _judged(
            f"loudness on {device}",
            f"{numerics.loudness_difference_lu:.2f} LU from float32's (at most {MAX_LOUDNESS_DIFFERENCE_LU:g})",
            numerics.loudness_difference_lu <= MAX_LOUDNESS_DIFFERENCE_LU,
            fix,
        ),
        _judged(
            f"spectrum on {device}",
            f"{numerics.spectral_difference_db:.2f} dB from float32's (at most {MAX_SPECTRAL_DIFFERENCE_DB:g}; "
            "another seed: about 6)",
            numerics.spectral_difference_db <= MAX_SPECTRAL_DIFFERENCE_DB,
            fix,
        ),
        Finding(f"free decoding on {device}", Verdict.INFO, _free_decoding(numerics)),
    ]
    return findings


def _judged(check: str, result: str, passed: bool, advice: str) -> Finding:
    return Finding(check, Verdict.OK, result) if passed else Finding(check, Verdict.FAIL, result, advice)


def _free_decoding(numerics: Numerics) -> str:
    identical = f"{numerics.identical_codes:.1%} of codes identical to float32's"
    if numerics.first_difference is None:
        return identical
    return (
        f"{identical}, first difference at frame {numerics.first_difference} (then other music, not judged)"
    )


def _non_finite_advice(
    numerics: Numerics, reference_finite: bool, *, compiled: bool, safer_dtype: str
) -> str:
    device, dtype = numerics.device, numerics.dtype
    if not reference_finite:
        return (
            "the checkpoint gives NaN or infinite values even in float32 on the CPU, so its weights are "
            "damaged: download or convert it again (or point `[models]` at another)."
        )
    if dtype in ("float16", "bfloat16"):
        return f'{dtype} overflowed on {device}: set `dtype = "{safer_dtype}"` in [engine].'
    if compiled:
        return f"the compiled decoder step gives NaN on {device} where the plain one does not: set `compile = false`."
    return (
        f"{device} computes NaN or infinity where the CPU does not, in the same dtype: update the GPU "
        "driver and torch, and run the doctor again."
    )


def _closer_advice(numerics: Numerics, *, compiled: bool) -> str:
    """What to change when the device's codes or audio stray too far from float32's."""
    device, dtype = numerics.device, numerics.dtype
    if dtype != "float32":
        return f'{dtype} on {device} strays too far from float32: set `dtype = "float32"` in [engine].'
    if compiled:
        return f"the compiled decoder step on {device} strays from float32 on the CPU: set `compile = false`."
    return (
        f"{device} strays from the CPU in the same dtype: update the GPU driver and torch, and run the "
        "doctor again."
    )


def timing_finding(timing: Timing, label: str) -> Finding:
    """One timed batch as a line: steps per second, the real-time factor, the peak memory."""
    result = (
        f"{timing.steps} steps in {timing.wall_s:.2f} s: {timing.steps_per_s:.1f} steps/s, "
        f"RTF {timing.real_time_factor:.2f}"
    )
    if timing.jobs > 1:
        result += f" per job ({timing.real_time_factor / timing.jobs:.2f} per second of audio made)"
    peak = "unknown" if math.isnan(timing.peak_mib) else f"{timing.peak_mib / 1024:.2f} GiB"
    result += f", peak {peak} ({timing.peak_of})"
    return Finding(label, Verdict.OK, result)


def failure_finding(check: str, device: str, error: BaseException, *, compiled: bool) -> Finding:
    """A step that raised instead of measuring, and what to change."""
    message = f"{type(error).__name__}: {error}".strip()
    first_line = message.splitlines()[0] if message else type(error).__name__
    if "out of memory" in message.lower():
        advice = (
            f"{device} ran out of memory: lower `[worker] max_batch_size`, serve a smaller model, or use "
            'a half-precision dtype (`dtype = "auto"`).'
        )
    elif compiled:
        advice = f"the compiled decoder step failed on {device}: set `compile = false` in [engine]."
    else:
        advice = f"{check} failed on {device}; the error above says why (run with -v for the log)."
    return Finding(check, Verdict.FAIL, first_line, advice)
