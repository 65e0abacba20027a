"""The doctor's findings and the table they are printed as: one line per check, each with a verdict,
then one sentence per problem saying what to change."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class Verdict(enum.Enum):
    OK = "ok"  # checked, and as it should be
    INFO = "info"  # a fact about the machine, nothing to judge
    WARN = "warn"  # works, but worth changing
    FAIL = "FAIL"  # the bot would not work, or not correctly, as configured


@dataclass(frozen=True)
class Finding:
    check: str  # what was checked: "ffmpeg", "token agreement on cuda:0"
    verdict: Verdict
    result: str  # what was found, in a line
    advice: str = ""  # for WARN and FAIL: one sentence saying what to change


def exit_code(findings: Sequence[Finding]) -> int:
    """1 when any check failed, else 0."""
    return 1 if any(f.verdict is Verdict.FAIL for f in findings) else 0


def render(findings: Sequence[Finding]) -> str:
    """The table (check, verdict, result), then the advice of every warning and failure, failures first."""
    check_width = max([len("check"), *(len(f.check) for f in findings)])
    verdict_width = len("verdict")
    lines = [f"{'check':<{check_width}}  {'verdict':<{verdict_width}}  result"]
    lines += [f"{f.check:<{check_width}}  {f.verdict.value:<{verdict_width}}  {f.result}" for f in findings]
    advice = [f for f in findings if f.advice and f.verdict is Verdict.FAIL]
    advice += [f for f in findings if f.advice and f.verdict is Verdict.WARN]
    # One sentence once, under the first check it explains (a broken checkpoint fails every device).
    sentences: dict[str, str] = {}
    for finding in advice:
        sentences.setdefault(finding.advice, finding.check)
    if sentences:
        lines += ["", "What to change:"]
        lines += [f"- {check}: {sentence}" for sentence, check in sentences.items()]
    failed = sum(f.verdict is Verdict.FAIL for f in findings)
    lines += ["", f"{failed} check(s) failed." if failed else "Every check passed."]
    return "\n".join(lines)
