"""Command line for the inference engine: `python -m inference generate|make-test-model`.

`generate` runs the engine in this process (no worker, no bot) with every generation input as a
flag; `make-test-model` writes random-weight checkpoints for tests and benchmarks (no model hub here).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from inference.catalogue import ModelCatalogue
from inference.media.ffmpeg import use_ffmpeg
from inference.request import (
    MODEL_VERSIONS,
    NORMALIZATION_STRATEGIES,
    OUTPUT_FORMATS,
    REQUEST_DEFAULTS,
    GenerationRequest,
    RequestError,
)
from inference.settings import EngineSettings, load_engine_settings

if TYPE_CHECKING:  # random_models imports torch: only for the annotations
    from inference.checkpoints.random_models import CheckpointFormat, ModelArchitecture

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


@main.command()
@click.option("--prompt", help="Text description of the music.")
@click.option(
    "--model-version",
    type=click.Choice(MODEL_VERSIONS),
    help="Model to use [default: finetuned if one is configured, else small].",
)
@click.option(
    "--input-audio",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Melody to mimic, or with --continuation the clip to continue (any common format).",
)
@click.option(
    "--duration",
    type=int,
    default=REQUEST_DEFAULTS.duration,
    show_default=True,
    help="Seconds to generate (extra seconds for continuation).",
)
@click.option(
    "--continuation/--no-continuation",
    default=REQUEST_DEFAULTS.continuation,
    show_default=True,
    help="Continue --input-audio instead of using it as a melody.",
)
@click.option(
    "--continuation-start",
    type=float,
    default=REQUEST_DEFAULTS.continuation_start,
    show_default=True,
    help="Start of the input clip to use, in seconds.",
)
@click.option(
    "--continuation-end",
    type=float,
    default=None,
    help="End of the input clip to use, in seconds (-1 or unset: the end).",
)
@click.option(
    "--normalization-strategy",
    type=click.Choice(NORMALIZATION_STRATEGIES),
    default=REQUEST_DEFAULTS.normalization_strategy,
    show_default=True,
    help="How the output is normalized.",
)
@click.option(
    "--top-k",
    type=int,
    default=REQUEST_DEFAULTS.top_k,
    show_default=True,
    help="Sample among the k most likely tokens.",
)
@click.option(
    "--top-p",
    type=float,
    default=REQUEST_DEFAULTS.top_p,
    show_default=True,
    help="Nucleus sampling when > 0 (top-k is then ignored).",
)
@click.option(
    "--temperature",
    type=float,
    default=REQUEST_DEFAULTS.temperature,
    show_default=True,
    help="Softmax temperature; 0 = greedy.",
)
@click.option(
    "--classifier-free-guidance",
    type=float,
    default=REQUEST_DEFAULTS.classifier_free_guidance,
    show_default=True,
    help="Classifier-free guidance coefficient.",
)
@click.option(
    "--output-format",
    type=click.Choice(OUTPUT_FORMATS),
    default=None,
    help="wav (16-bit PCM) or mp3 (320 kbps) [default: from the --output extension, else wav].",
)
@click.option(
    "--seed", type=int, default=None, help="Seed for identical results; unset or -1 = random (printed)."
)
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
    prompt: str | None,
    model_version: str | None,
    input_audio: Path | None,
    duration: int,
    continuation: bool,
    continuation_start: float,
    continuation_end: float | None,
    normalization_strategy: str,
    top_k: int,
    top_p: float,
    temperature: float,
    classifier_free_guidance: float,
    output_format: str | None,
    seed: int | None,
    output: Path | None,
    model_source: str | None,
    config_path: Path | None,
    device: str | None,
    dtype: str | None,
    threads: int | None,
    progress: bool,
) -> None:
    """Generate music from a prompt and/or input audio, in this process, and write it to a file."""
    settings = _with_engine_overrides(
        load_engine_settings(config_path), device=device, dtype=dtype, cpu_threads=threads
    )
    use_ffmpeg(settings.engine.ffmpeg)
    if model_version is None:
        model_version = ModelCatalogue(settings.models).default_version()
    if output is None:
        output = Path(f"musicgen.{output_format or 'wav'}")
    resolved_format = _output_format_for(output, output_format)
    try:
        request = GenerationRequest(
            model_version=model_version,  # type: ignore[arg-type]  # click.Choice checked it
            prompt=prompt,
            input_audio=str(input_audio) if input_audio is not None else None,
            duration=duration,
            continuation=continuation,
            continuation_start=continuation_start,
            continuation_end=continuation_end,
            normalization_strategy=normalization_strategy,  # type: ignore[arg-type]
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            classifier_free_guidance=classifier_free_guidance,
            output_format=resolved_format,  # type: ignore[arg-type]
            seed=seed,
        ).validate()
    except RequestError as exc:
        raise FriendlyRequestError(str(exc)) from None

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
        generated = engine.generate(request, model_source=model_source, on_progress=on_progress)
    except RequestError as exc:
        raise FriendlyRequestError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    # A failed write leaves no partial file behind.
    written = write_generated(generated, request, output)
    click.echo(f"seed: {generated.seed}")
    click.echo(
        f"wrote {written} ({generated.duration_s:.2f} s, {generated.sample_rate} Hz, "
        f"{generated.channels} channel(s), {request.output_format}) in "
        f"{generated.timings.get('total', 0.0):.1f} s"
    )


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


if __name__ == "__main__":
    main()
