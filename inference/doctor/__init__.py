"""`doctor`: the owner's machine checks itself, once, before the bot serves anyone.

`musicgen-bot doctor` and `python -m inference doctor` both run `run_doctor`, with the same
config.toml: it reports the host (CPU, memory, disk, ffmpeg, Ray), torch and its devices and the
dtype each runs, then on every device the workers would use it makes a short greedy piece on the
served path and holds it to float32 on the CPU (`inference.doctor.judging` has the thresholds), and
times a job and a batch. It prints a table, one verdict per line, and for every failure one sentence
saying what to change; the exit code is 1 when a check failed.

The package itself never imports torch (the bot's command loads it); the measurements that need
torch are `inference.engine.checkup`, imported when the round gets there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from inference.doctor.examine import Lengths, examine
from inference.doctor.host import RAY_CONNECT_TIMEOUT_S
from inference.doctor.plan import DoctorPlan
from inference.doctor.report import Finding, Verdict, exit_code, render

__all__ = [
    "DoctorPlan",
    "Finding",
    "Lengths",
    "Verdict",
    "doctor_options",
    "run_doctor",
    "run_doctor_command",
]

FC = TypeVar("FC", bound=Callable[..., Any] | click.Command)


def run_doctor(
    plan: DoctorPlan,
    *,
    model_source: str | None = None,
    quick: bool = False,
    ray_timeout_s: float = RAY_CONNECT_TIMEOUT_S,
    echo: Callable[[str], None] = print,
    progress: Callable[[str], None] = lambda step: None,
) -> int:
    """Examine the machine as `plan` says, print the table with `echo`, and return the exit code
    (1 when a check failed). `quick`: one-second generations instead of 2 s and 8 s."""
    findings = examine(
        plan,
        model_source=model_source,
        lengths=Lengths.quick() if quick else Lengths(),
        ray_timeout_s=ray_timeout_s,
        progress=progress,
    )
    echo(render(findings))
    return exit_code(findings)


def doctor_options(command: FC) -> FC:
    """The doctor's flags, the same in `musicgen-bot doctor` and `python -m inference doctor`."""
    options = [
        click.option(
            "--model",
            "model_source",
            metavar="PATH_OR_ID",
            help="Check this checkpoint (folder or hub id) instead of the default model's configured one.",
        ),
        click.option(
            "--quick", is_flag=True, help="One-second generations instead of 2 s and 8 s (a first look)."
        ),
        click.option(
            "--ray-timeout",
            "ray_timeout_s",
            type=click.FloatRange(min=1),
            default=RAY_CONNECT_TIMEOUT_S,
            show_default=True,
            help='Seconds to wait for the Ray cluster of `[worker] ray_address` (backend "ray").',
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_doctor_command(plan: DoctorPlan, model_source: str | None, quick: bool, ray_timeout_s: float) -> None:
    """What both commands run: the round, the table on stdout, what runs now on stderr; exits 1 when a
    check failed."""
    code = run_doctor(
        plan,
        model_source=model_source,
        quick=quick,
        ray_timeout_s=ray_timeout_s,
        echo=click.echo,
        progress=lambda step: click.echo(f"doctor: {step} ...", err=True),
    )
    raise SystemExit(code)
