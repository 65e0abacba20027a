"""What stereo, pieces past the window and takes cost (`bench/run.py --sections stereo,long,takes`).

- stereo: the median decoder step of the `stereo-small` architecture (8 codebooks: left and right
  interleaved) against `small` (4), one job, the same dtype and duration. Target: at most 1.2x.
- long: one piece made window by window, as audiocraft extends it, against the sum of its windows'
  steps (every decoder step it runs, at the piece's own median step): what re-prompting each
  window (reading its prompt, decoding the audio) adds. The full run makes 120 s with the released
  models' 30 s window and 18 s stride (six windows); --quick keeps the same proportions at a sixth of
  the size (a 5 s window, 3 s stride, 20 s piece: six windows), on an audiocraft-format `small` whose
  training segment is that window. Target: at most 1.15x.
- takes: four takes of one request (seeds S..S+3) decoded as one batch, as `/generate takes:4` runs
  them, against the same four jobs one after another, in bfloat16 on CPUs that compute it natively
  (float32 elsewhere; the line says which). Target: at least 2.5x.

Every model is the real architecture with random weights (the same compute as the released ones),
built once under --model-dir.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from bench.model_settings import random_model_settings
from bench.targets import target_line
from inference.checkpoints.random_models import make_test_model
from inference.cpu_features import cpu_flags, has_native_bfloat16
from inference.engine.musicgen_engine import EngineJob, MusicGenEngine
from inference.request import GenerationRequest
from inference.settings import EngineOptions, EngineSettings

STEREO_STEP_RATIO_TARGET = 1.2
LONG_PIECE_OVERHEAD_TARGET = 1.15
TAKES4_SPEEDUP_TARGET = 2.5
TAKES = 4
PROMPT = "lofi hip hop beat with warm piano chords and vinyl crackle"
SEED = 1234
# (window s, stride s, piece s): the released models' proportions, and a sixth of them for --quick.
LONG_FULL = (30.0, 18.0, 120)
LONG_QUICK = (5.0, 3.0, 20)


def _built(folder: Path, label: str, build: Callable[[Path], Path]) -> Path:
    if (folder / "config.json").exists() or (folder / "state_dict.bin").exists():
        return folder
    print(f"building a random-weight {label} in {folder} (once; reused afterwards) ...", flush=True)
    return build(folder)


def _settings(model_dir: Path, dtype: str, threads: int, **engine: float) -> EngineSettings:
    options = EngineOptions(device="cpu", dtype=dtype, cpu_threads=threads, **engine)  # type: ignore[arg-type]
    return random_model_settings(model_dir, options)


def _request(duration: int, seed: int = SEED) -> GenerationRequest:
    return GenerationRequest(
        model_version="small",
        prompt=PROMPT,
        duration=duration,
        top_k=250,
        classifier_free_guidance=3.0,
        seed=seed,
    ).validate()


class _Clock:
    """A progress callback that notes when each decoder step ends."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def __call__(self, done: int, total: int) -> None:
        self.ends.append(time.perf_counter())

    def median_step_s(self) -> float:
        gaps = sorted(b - a for a, b in zip(self.ends, self.ends[1:], strict=False))
        return gaps[len(gaps) // 2]


def _one_job(engine: MusicGenEngine, duration: int) -> tuple[float, _Clock]:
    clock = _Clock()
    started = time.perf_counter()
    engine.generate(_request(duration), on_progress=clock)
    return time.perf_counter() - started, clock


def stereo_section(args: argparse.Namespace) -> list[str]:
    mono_dir = _built(args.model_dir / "small", "small", lambda d: make_test_model("small", d, seed=0))
    stereo_dir = _built(
        args.model_dir / "stereo-small",
        "stereo-small",
        lambda d: make_test_model("small", d, seed=0, stereo=True),
    )
    steps: dict[str, float] = {}
    for name, folder in (("mono", mono_dir), ("stereo", stereo_dir)):
        engine = MusicGenEngine(_settings(folder, args.dtype, args.threads))
        _one_job(engine, 1)  # load and warm up
        steps[name] = min(_one_job(engine, args.duration)[1].median_step_s() for _ in range(args.repeats))
        print(f"  {name}: median step {steps[name] * 1000:.1f} ms", flush=True)
        del engine
    ratio = steps["stereo"] / steps["mono"]
    print(
        f"stereo-small vs small ({args.dtype}, one {args.duration} s job): step ratio {ratio:.3f}\n",
        flush=True,
    )
    return [target_line("stereo_step_ratio", ratio, STEREO_STEP_RATIO_TARGET, higher_is_better=False)]


def long_section(args: argparse.Namespace) -> list[str]:
    window_s, stride_s, piece_s = LONG_QUICK if args.quick else LONG_FULL
    folder = args.model_dir / f"small-window-{window_s:g}s"
    if window_s == 30.0:
        folder = args.model_dir / "small"  # a released model's window
        _built(folder, "small", lambda d: make_test_model("small", d, seed=0))
    else:
        _built(
            folder,
            f"small with a {window_s:g} s window (audiocraft format)",
            lambda d: make_test_model("small", d, seed=0, fmt="audiocraft", window_s=window_s),
        )
    settings = random_model_settings(
        folder,
        EngineOptions(device="cpu", dtype=args.dtype, cpu_threads=args.threads, extend_stride_s=stride_s),
        conversion_cache=args.model_dir / "converted",
    )
    engine = MusicGenEngine(settings)
    _one_job(engine, 1)
    best = float("inf")
    for _ in range(args.repeats):
        wall, clock = _one_job(engine, piece_s)
        best = min(best, wall / (len(clock.ends) * clock.median_step_s()))
        print(
            f"  {piece_s} s piece, {window_s:g} s window, {stride_s:g} s stride: {wall:.1f} s for "
            f"{len(clock.ends)} steps of {clock.median_step_s() * 1000:.1f} ms",
            flush=True,
        )
    print(f"long piece: {best:.3f}x the sum of its windows' steps\n", flush=True)
    return [target_line("long_piece_overhead", best, LONG_PIECE_OVERHEAD_TARGET, higher_is_better=False)]


def takes_section(args: argparse.Namespace) -> list[str]:
    dtype = "bfloat16" if has_native_bfloat16(cpu_flags()) else "float32"
    folder = _built(args.model_dir / "small", "small", lambda d: make_test_model("small", d, seed=0))
    engine = MusicGenEngine(_settings(folder, dtype, args.threads))
    _one_job(engine, 1)
    speedup = 0.0
    for _ in range(args.repeats):
        started = time.perf_counter()
        for take in range(TAKES):
            engine.generate(_request(args.duration, SEED + take))
        one_after_another = time.perf_counter() - started
        started = time.perf_counter()
        outcomes = engine.generate_batch([EngineJob(_request(args.duration, SEED + t)) for t in range(TAKES)])
        together = time.perf_counter() - started
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:
            raise failed[0]
        speedup = max(speedup, one_after_another / together)
        print(
            f"  {TAKES} takes ({dtype}, {args.duration} s): one after another {one_after_another:.1f} s, "
            f"one batch {together:.1f} s",
            flush=True,
        )
    print(f"takes: {speedup:.2f}x in {dtype}\n", flush=True)
    return [target_line("takes4_speedup", speedup, TAKES4_SPEEDUP_TARGET, higher_is_better=True)]
