"""Command line for the inference engine: `python -m inference generate|make-test-model|doctor`.

`generate` runs the engine in this process (no worker, no bot) with every generation input as a
flag; `make-test-model` writes random-weight checkpoints for tests and benchmarks (no model hub here);
`doctor` checks this machine for the bot (`inference.doctor`, the same as `musicgen-bot doctor`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from inference.catalogue import ModelCatalogue
from inference.doctor import DoctorPlan, doctor_options, run_doctor_command
from inference.media.ffmpeg import use_ffmpeg
from inference.request import (
    GENERATE_FIELDS,
    OUTPUT_FORMATS,
    GenerationRequest,
    RequestError,
    RequestField,
    Takes,
)
from inference.settings import EngineSettings, load_engine_settings

if TYPE_CHECKING:  # these import torch: only for the annotations
    from inference.checkpoints.random_models import CheckpointFormat, ModelArchitecture

FC = TypeVar("FC", bound=Callable[..., Any] | click.Command)

# Exit code for a request the person can fix (click uses 2 for usage errors too).
REQUEST_ERROR_EXIT_CODE = 2


class FriendlyRequestError(click.ClickException):
    """A RequestError shown as a one-line message, exit code 2."""

    exit_code = REQUEST_ERROR_EXIT_CODE


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the engine does (model loading, timings).")
def main(verbose: bool) -> None:
    """MusicGen inference: generate audio, or build random-weight test checkpoints."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _output_format_for(output: Path, output_format: str | None) -> str:
    suffix = output.suffix.lower().lstrip(".")
    if output_format is None:
        return suffix if suffix in OUTPUT_FORMATS else "wav"
    if suffix in OUTPUT_FORMATS and suffix != output_format:
        raise click.BadParameter(
            f"--output ends in .{suffix} but --output-format is {output_format}; make them agree.",
            param_hint="--output-format",
        )
    return output_format


def _with_engine_overrides(settings: EngineSettings, **overrides: Any) -> EngineSettings:
    changes = {key: value for key, value in overrides.items() if value is not None}
    if not changes:
        return settings
    return settings.model_copy(update={"engine": settings.engine.model_copy(update=changes)})


# What the CLI itself picks when these are left out (the request's own defaults are shown as is).
_CLI_DEFAULTS = {
    "model_version": "[default: finetuned if one is configured, else small]",
    "output_format": "[default: from the --output extension, else wav]",
}


def _click_type(request_field: RequestField) -> click.ParamType | type:
    if request_field.clip:
        return click.Path(exists=True, dir_okay=False, path_type=Path)
    if request_field.choices:
        return click.Choice(request_field.choices)
    return request_field.type


def _request_option(request_field: RequestField) -> Callable[[FC], FC]:
    """The flag of one request field: `--top-k`, or `--continuation/--no-continuation` for a switch.

    Ranges are left to `GenerationRequest.validate()`, whose messages say what to change.
    """
    flag = "--" + request_field.name.replace("_", "-")
    if request_field.type is bool:
        return click.option(
            f"{flag}/--no-{flag[2:]}",
            default=request_field.default,
            show_default=True,
            help=request_field.cli_help,
        )
    cli_default = _CLI_DEFAULTS.get(request_field.name)
    default = None if cli_default is not None else request_field.default
    return click.option(
        flag,
        type=_click_type(request_field),
        default=default,
        show_default=default is not None,
        help=f"{request_field.cli_help} {cli_default or ''}".strip(),
    )


def request_options(command: FC) -> FC:
    """One flag per request field (and --takes), in the request's order, from its declaration in
    inference.request."""
    for request_field in reversed(GENERATE_FIELDS):
        command = _request_option(request_field)(command)
    return command


@main.command()
@request_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="File to write [default: musicgen.<format> in the current folder].",
)
@click.option(
    "--model",
    "model_source",
    metavar="PATH_OR_ID",
    help="Checkpoint folder or hub id overriding [models] for this version.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="config.toml to read [models]/[engine]/[melody] from [default: $MUSICGEN_BOT_CONFIG or ./config.toml].",
)
@click.option("--device", help="Override [engine] device (auto, cpu, cuda, cuda:1, ...).")
@click.option(
    "--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), help="Override [engine] dtype."
)
@click.option(
    "--threads", type=click.IntRange(min=0), help="Override [engine] cpu_threads (0 = torch's default)."
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar on stderr."
)
def generate(
    output: Path | None,
    model_source: str | None,
    config_path: Path | None,
    device: str | None,
    dtype: str | None,
    threads: int | None,
    progress: bool,
    **request_inputs: Any,
) -> None:
    """Generate music from a prompt and/or input audio, in this process, and write it to a file.

    With --takes N, N variations are made as one batch and written to <output>-take1.wav and so on.
    """
    settings = _with_engine_overrides(
        load_engine_settings(config_path), device=device, dtype=dtype, cpu_threads=threads
    )
    use_ffmpeg(settings.engine.ffmpeg)
    model_version = request_inputs["model_version"] or ModelCatalogue(settings.models).default_version()
    output_format: str | None = request_inputs["output_format"]
    input_audio: Path | None = request_inputs["input_audio"]
    if output is None:
        output = Path(f"musicgen.{output_format or 'wav'}")
    picked = {
        "model_version": model_version,
        "input_audio": str(input_audio) if input_audio is not None else None,
        "output_format": _output_format_for(output, output_format),
    }
    try:
        takes = Takes(request_inputs.pop("takes")).validate()
        # Up to `[limits] max_duration_s`, as on Discord.
        request = GenerationRequest(**request_inputs | picked).validate(
            max_duration_s=settings.engine.max_duration_s
        )
    except RequestError as exc:
        raise FriendlyRequestError(str(exc)) from None
    requests = [request.replace(seed=seed) for seed in takes.seeds(request.seed)]

    # Imported here: torch and transformers take seconds to import, `--help` should not wait.
    import torch
    from tqdm import tqdm

    from inference.engine.audio import write_generated
    from inference.engine.musicgen_engine import MusicGenEngine

    if not progress:
        # transformers draws bars of its own while loading weights.
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if settings.engine.cpu_threads > 0:
        torch.set_num_threads(settings.engine.cpu_threads)
    engine = MusicGenEngine(settings)
    bar: tqdm[Any] | None = None

    def on_progress(steps_done: int, steps_total: int) -> None:
        nonlocal bar
        if not progress:
            return
        if bar is None:
            bar = tqdm(total=steps_total, desc="generating", unit="step", leave=True)
        bar.update(steps_done - bar.n)

    try:
        # Every take as one batch (a decoder step serves them all); the first drives the bar.
        made = engine.generate_all(requests, model_source=model_source, on_progress=on_progress)
    except RequestError as exc:
        raise FriendlyRequestError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    paths = _take_paths(output, len(requests))
    for number, (take_request, generated, path) in enumerate(
        zip(requests, made, paths, strict=True), start=1
    ):
        # A failed write leaves no partial file behind.
        written = write_generated(generated, take_request, path)
        take = f"take {number}: " if len(requests) > 1 else ""
        click.echo(f"{take}seed: {generated.seed}")
        click.echo(
            f"{take}wrote {written} ({generated.duration_s:.2f} s, {generated.sample_rate} Hz, "
            f"{generated.channels} channel(s), {take_request.output_format}) in "
            f"{generated.timings.get('total', 0.0):.1f} s"
        )


def _take_paths(output: Path, takes: int) -> list[Path]:
    """Where each take is written: `output` for one take; `<stem>-take1<suffix>` and on for several."""
    if takes == 1:
        return [output]
    return [output.with_name(f"{output.stem}-take{number}{output.suffix}") for number in range(1, takes + 1)]


@main.command("make-test-model")
@click.option(
    "--model-version",
    type=click.Choice(["small", "medium", "large", "melody"]),
    required=True,
    help="Architecture to build (the published config of that version).",
)
@click.option("--tiny", is_flag=True, help="A few small layers instead of the real sizes (for fast tests).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["transformers", "audiocraft"]),
    default="transformers",
    show_default=True,
    help="A transformers from_pretrained folder, or an audiocraft training checkpoint.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--embedded-compression",
    is_flag=True,
    help="audiocraft format only: embed an exported EnCodec instead of pointing at a pretrained one.",
)
def make_test_model_command(
    model_version: ModelArchitecture,
    tiny: bool,
    fmt: CheckpointFormat,
    out: Path,
    seed: int,
    embedded_compression: bool,
) -> None:
    """Write a random-weight MusicGen checkpoint (there is no model hub here) for tests and benchmarks."""
    from inference.checkpoints.random_models import make_test_model

    if embedded_compression and fmt != "audiocraft":
        raise click.BadParameter("only applies to --format audiocraft", param_hint="--embedded-compression")
    folder = make_test_model(
        model_version,
        out,
        tiny=tiny,
        fmt=fmt,
        seed=seed,
        embedded_compression=embedded_compression,
    )
    click.echo(f"wrote {'tiny ' if tiny else ''}{model_version} test model ({fmt}) to {folder}")


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="config.toml to check with [default: $MUSICGEN_BOT_CONFIG or ./config.toml].",
)
@doctor_options
def doctor(config_path: Path | None, model_source: str | None, quick: bool, ray_timeout_s: float) -> None:
    """Check this machine for the bot: environment, numerics on every device, speed. Exits 1 when a
    check fails, with what to change."""
    try:
        plan = DoctorPlan.from_config_file(config_path)
    except ValueError as error:  # pydantic's ValidationError is one
        raise click.ClickException(f"invalid configuration:\n{error}") from None
    run_doctor_command(plan, model_source, quick, ray_timeout_s)


if __name__ == "__main__":
    main()
