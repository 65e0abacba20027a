"""Benchmark: our engine on the real `small` architecture (random weights), in sections.

    python bench/run.py            # 8 s of audio, top_k 250, cfg 3 (long on a small CPU)
    python bench/run.py --quick    # 2 s of audio: a few minutes once the model exists

- parity: our engine against a plain transformers `generate()`, batch 1, the same dtype;
- batching (float32): N concurrent jobs (N = 1, 2, 4, 8) decoded as one batch against the same jobs
  one after another (N times the batch-1 run), with the throughput of each batch size, and the
  step's matrix products timed alone on its rows: the speed-up batching could reach at most if a
  step cost nothing but its products;
- default configuration: one job with `[engine] dtype = "auto"` (bfloat16 on CPUs with native bf16),
  and the real-time factor its products alone would give;
- kernels (float32): one job's median step with the kernels `[engine] cpu_matmul = "auto"` measured,
  and with the fixed rules used before ("rules"), against the products alone of the fastest kernel
  that may run them (each float32 candidate of `inference.engine.kernel_choice`, timed on the step);
- bot: through the bot and the fake Discord, in the default configuration (bench/bot_bench.py: batched
  vs batch size 1 throughput, acknowledgement latency, a burst against the fake Discord's floor);
- stereo, long, takes: what a stereo step, a piece made window by window and four takes in one batch
  cost (bench/peer_features.py);
- replicas: jobs per minute with 1, 2 and 4 local workers of the tiny model (bench/replica_scaling.py).

Both paths run in this process on the same weights (random, built once by
`inference.checkpoints.random_models.make_test_model("small")` into --model-dir and reused), with the same
prompt, seed and sampling parameters. Reported per path: decoder steps/s, real-time factor (wall
seconds per second of audio, lower is better), the median decoder step (robust to other work on a
shared machine) and resident memory. Times are the best of --repeats alternating runs. The speed
ratios are plain / ours (wall time, and median step): >= 1.0 means our layers add no cost. The worker round trip (spawned
process, pipe, file write) is measured against the same job run in-process, on a tiny model since
its overhead does not depend on the model size.

Each target ends with one machine-readable line: `TARGET <name> measured=<x> target=<y> ok|short`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout: make `inference` importable
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

# What torch picks on this machine before --threads changes it: the default configuration's count.
TORCH_DEFAULT_THREADS = torch.get_num_threads()

from bench.model_settings import add_model_dir_option, random_model_settings  # noqa: E402
from bench.targets import print_target_lines, target_line  # noqa: E402
from inference.checkpoints.random_models import make_test_model  # noqa: E402
from inference.engine.decoder_step import DecoderStep  # noqa: E402
from inference.request import GenerationRequest  # noqa: E402
from inference.settings import EngineOptions, EngineSettings  # noqa: E402

PROMPT = "lofi hip hop beat with warm piano chords and vinyl crackle"
TOP_K = 250
GUIDANCE = 3.0
SEED = 1234
FRAME_RATE = 50
# The delay pattern eats num_codebooks - 1 steps: 50*d + 3 new tokens give exactly d seconds.
DELAY_STEPS = 3
SPEED_RATIO_TARGET = 0.95  # the same work: the band is this machine's noise
BATCH_SIZES = (1, 2, 4, 8)
BATCH_SPEEDUP_TARGETS = {4: 3.0, 8: 5.0}
DEFAULT_RTF_TARGET = 2.0
# A one-job float32 step on the default path costs at most this much more than its products alone
# with the fastest kernel here: the kernel is the right one, and the work around the products small.
FP32_STEP_VS_BEST_PRODUCTS_TARGET = 1.15
WORKER_OVERHEAD_TARGET_S = 0.5


# -- memory -------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: writing 5 to clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """Peak resident memory since the last reset (or since start, where it cannot be reset)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def current_rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return (kib or 0) / 1024


# -- measurements -------------------------------------------------------------------------------
@dataclass
class Run:
    wall_s: float
    steps: int
    # Median time between two decoder steps: robust to bursts of other work on a shared machine.
    median_step_s: float
    peak_rss_mib: float
    rss_before_mib: float


@dataclass
class StepTimes:
    """What one generation reports: its decoder steps and when each one ended."""

    steps: int
    step_ends: list[float]

    @property
    def median_step_s(self) -> float:
        gaps = [b - a for a, b in zip(self.step_ends, self.step_ends[1:], strict=False)]
        return statistics.median(gaps) if gaps else float("nan")


@dataclass
class Summary:
    name: str
    wall_s: float  # best of the repeats: the least disturbed by other work on the machine
    steps: int
    audio_s: float
    peak_rss_mib: float
    peak_extra_mib: float  # peak minus the resident memory before the call (activations, caches)
    median_step_s: float  # best of the repeats

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s

    @property
    def real_time_factor(self) -> float:
        return self.wall_s / self.audio_s


def measure(call: Callable[[], StepTimes]) -> Run:
    """Time one generation and its memory."""
    gc.collect()
    rss_before = current_rss_mib()
    reset_peak_rss()
    started = time.perf_counter()
    steps = call()
    wall = time.perf_counter() - started
    return Run(wall, steps.steps, steps.median_step_s, peak_rss_mib(), rss_before)


def summarize(name: str, runs: list[Run], audio_s: float) -> Summary:
    return Summary(
        name=name,
        wall_s=min(r.wall_s for r in runs),
        steps=runs[0].steps,
        audio_s=audio_s,
        peak_rss_mib=max(r.peak_rss_mib for r in runs),
        peak_extra_mib=max(r.peak_rss_mib - r.rss_before_mib for r in runs),
        median_step_s=min(r.median_step_s for r in runs),
    )


# -- the two paths ------------------------------------------------------------------------------
def bench_settings(model_dir: Path, dtype: str, threads: int, **engine: Any) -> EngineSettings:
    """The random model's settings on the CPU; `engine`: other `[engine]` options."""
    return random_model_settings(
        model_dir,
        EngineOptions(device="cpu", dtype=dtype, cpu_threads=threads, **engine),  # type: ignore[arg-type]
    )


def bench_request(duration: int) -> GenerationRequest:
    return GenerationRequest(
        model_version="small",
        prompt=PROMPT,
        duration=duration,
        top_k=TOP_K,
        top_p=0.0,
        temperature=1.0,
        classifier_free_guidance=GUIDANCE,
        seed=SEED,
    ).validate()


class OurEngine:
    def __init__(self, settings: EngineSettings) -> None:
        from inference.engine.musicgen_engine import MusicGenEngine

        self.engine = MusicGenEngine(settings)

    def generate(self, duration: int) -> StepTimes:
        times = StepTimes(0, [])

        def on_progress(done: int, total: int) -> None:
            times.steps = total
            times.step_ends.append(time.perf_counter())

        self.engine.generate(bench_request(duration), on_progress=on_progress)
        return times

    def decoder_step(self) -> DecoderStep:
        """The decoding step the engine runs for `small` (shared through the model, built on first use)."""
        loaded = self.engine.cache.get("small")
        return DecoderStep.of_model(loaded.model, cpu_matmul=self.engine.settings.engine.cpu_matmul)

    def generate_batch(self, duration: int, size: int) -> StepTimes:
        """`size` concurrent jobs (different seeds) as one batch; the step times of the first."""
        from inference.engine.musicgen_engine import EngineJob

        times = StepTimes(0, [])

        def on_progress(done: int, total: int) -> None:
            times.steps = total
            times.step_ends.append(time.perf_counter())

        jobs = [
            EngineJob(
                bench_request(duration).replace(seed=SEED + i), on_progress=on_progress if i == 0 else None
            )
            for i in range(size)
        ]
        outcomes = self.engine.generate_batch(jobs)
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:
            raise failed[0]
        return times


def products_alone_s(step: DecoderStep, rows: int, repeats: int = 5) -> float:
    """Best time of one decoding step's matrix products alone, on `rows` rows of random input (each
    product once, in the step's order): what a step costs at least with these kernels, whatever
    the work around the products."""
    inputs = {n: torch.randn(rows, 1, n, dtype=step.dtype) for n in {p.in_features for p in step.linears}}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first run also sets up oneDNN's primitives
            started = time.perf_counter()
            for product in step.linears:
                product(inputs[product.in_features])
            best = min(best, time.perf_counter() - started)
    return best


class _StepClock:
    """A stopping criterion that never stops: it only notes when each decoder step ends (~1 µs a step)."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        self.step_ends.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class PlainTransformers:
    """What a user of transformers would write: processor + model.generate() (+ the audio decode)."""

    def __init__(self, model_dir: Path, dtype: torch.dtype) -> None:
        from transformers import AutoProcessor, MusicgenForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = MusicgenForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).eval()

    def generate(self, duration: int) -> StepTimes:
        from transformers import StoppingCriteriaList

        steps = FRAME_RATE * duration + DELAY_STEPS
        clock = _StepClock()
        torch.manual_seed(SEED)
        inputs = self.processor(text=[PROMPT], padding=True, return_tensors="pt")
        with torch.inference_mode():
            self.model.generate(
                **inputs,
                do_sample=True,
                top_k=TOP_K,
                guidance_scale=GUIDANCE,
                max_new_tokens=steps,
                stopping_criteria=StoppingCriteriaList([clock]),
            )
        return StepTimes(steps, clock.step_ends)


# -- worker round trip --------------------------------------------------------------------------
def bench_worker_overhead(tiny_dir: Path, threads: int, repeats: int) -> tuple[float, float]:
    """Best wall time of a 1 s tiny-model job in-process vs through InferenceClient (after warm-up)."""
    from inference.backends.local import InferenceClient
    from inference.engine.audio import write_generated
    from inference.engine.musicgen_engine import MusicGenEngine

    settings = bench_settings(tiny_dir, "float32", threads)
    request = bench_request(1).replace(top_k=50)

    def run_locally(engine: MusicGenEngine, name: str, out: str) -> None:
        write_generated(engine.generate(request), request, Path(out) / name)

    async def alternate(out: str) -> tuple[list[float], list[float]]:
        engine = MusicGenEngine(settings)
        run_locally(engine, "warm-up-local", out)
        local: list[float] = []
        remote: list[float] = []
        async with InferenceClient(settings, processes=1) as client:
            result = await client.submit("warm-up-worker", request, out)
            assert Path(result.output_path).exists()
            for i in range(repeats):
                # Interleaved, so a burst of other work on the machine hits both sides alike.
                started = time.perf_counter()
                run_locally(engine, f"local-{i}", out)
                local.append(time.perf_counter() - started)
                started = time.perf_counter()
                await client.submit(f"worker-{i}", request, out)
                remote.append(time.perf_counter() - started)
        return local, remote

    with tempfile.TemporaryDirectory(prefix="bench-worker-") as out:
        local, remote = asyncio.run(alternate(out))
    return min(local), min(remote)


# -- main ---------------------------------------------------------------------------------------
def ensure_model(folder: Path, *, tiny: bool) -> Path:
    if (folder / "config.json").exists():
        return folder
    label = "tiny small" if tiny else "small (real architecture)"
    print(f"building a random-weight {label} model in {folder} (once; reused afterwards) ...", flush=True)
    started = time.perf_counter()
    make_test_model("small", folder, tiny=tiny, seed=0)
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s of audio instead of 8 (about two minutes)")
    parser.add_argument("--duration", type=int, help="seconds of audio per generation [8; --quick: 2]")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed generations per path (best reported) [2]"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    add_model_dir_option(parser)
    parser.add_argument("--no-worker", action="store_true", help="skip the worker round-trip measurement")
    parser.add_argument(
        "--sections",
        default="parity,batching,default,kernels,stereo,long,takes,bot,replicas",
        help="comma-separated sections to run: parity, batching, default, kernels, stereo, long, takes, "
        "bot, replicas [all]",
    )
    parser.add_argument(
        "--batch-repeats", type=int, default=1, help="timed runs per batch size (best reported) [1]"
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 8)
    args.sections = {name.strip() for name in args.sections.split(",") if name.strip()}
    return args


def bot_section(args: argparse.Namespace, small_dir: Path) -> list[str]:
    """Through the bot and the fake Discord (bench/bot_bench.py), in the default configuration."""
    from bench.bot_bench import run_bot_bench  # imports discord and the test fake

    print(flush=True)
    tiny_dir = ensure_model(args.model_dir / "tiny-small", tiny=True)
    return run_bot_bench(small_dir, tiny_dir, quick=args.quick, threads=args.threads)


def replicas_section(args: argparse.Namespace) -> list[str]:
    """Jobs per minute with 1, 2 and 4 local workers of the tiny model (bench/replica_scaling.py)."""
    from bench.replica_scaling import run_replica_scaling

    tiny_dir = ensure_model(args.model_dir / "tiny-small", tiny=True)
    return run_replica_scaling(tiny_dir, quick=args.quick)


def parity_section(args: argparse.Namespace, small_dir: Path) -> list[str]:
    """Our engine against plain transformers generate(), batch 1, the same dtype."""
    dtype = getattr(torch, args.dtype)
    print(
        f"small architecture, random weights, {args.dtype}, {torch.get_num_threads()} thread(s), batch 1, "
        f"{args.duration} s audio, top_k {TOP_K}, cfg {GUIDANCE:g}, best of {args.repeats}",
        flush=True,
    )
    # Warm-up (1 s each): loads the models and pays one-time costs on both paths; the resident
    # memory each adds is its model's footprint.
    print("loading and warming up ...", flush=True)
    rss_start = current_rss_mib()
    ours = OurEngine(bench_settings(small_dir, args.dtype, args.threads))
    ours.generate(1)
    rss_ours = current_rss_mib()
    plain = PlainTransformers(small_dir, dtype)
    plain.generate(1)
    rss_plain = current_rss_mib()
    loaded_mib = {"ours": rss_ours - rss_start, "plain": rss_plain - rss_ours}

    our_runs: list[Run] = []
    plain_runs: list[Run] = []
    for repeat in range(args.repeats):
        # Alternate the two paths so drifting load on a shared machine hits both alike.
        our_runs.append(measure(lambda: ours.generate(args.duration)))
        plain_runs.append(measure(lambda: plain.generate(args.duration)))
        print(
            f"  repeat {repeat + 1}: ours {our_runs[-1].wall_s:.1f} s, plain {plain_runs[-1].wall_s:.1f} s",
            flush=True,
        )
    summaries = {
        "ours": summarize("ours (MusicGenEngine)", our_runs, args.duration),
        "plain": summarize("plain transformers", plain_runs, args.duration),
    }
    speed_ratio = summaries["plain"].wall_s / summaries["ours"].wall_s
    step_ratio = summaries["plain"].median_step_s / summaries["ours"].median_step_s

    print()
    print(
        f"{'path':<24} {'wall s':>8} {'steps':>6} {'steps/s':>8} {'RTF':>6} {'step ms':>8} {'model MiB':>10} "
        f"{'peak extra MiB':>15} {'peak RSS MiB':>13}"
    )
    for key, s in summaries.items():
        print(
            f"{s.name:<24} {s.wall_s:>8.2f} {s.steps:>6} {s.steps_per_s:>8.2f} {s.real_time_factor:>6.2f} "
            f"{s.median_step_s * 1000:>8.1f} {loaded_mib[key]:>10.0f} {s.peak_extra_mib:>15.0f} {s.peak_rss_mib:>13.0f}"
        )
    print(
        f"{'ratio plain/ours':<24} {speed_ratio:>8.3f} {'':>6} {'':>8} {'':>6} {step_ratio:>8.3f}   (>= 1.0: no cost)"
    )
    print(
        "(best of the repeats; RTF = wall seconds per second of audio; step ms = median decoder step, robust to\n"
        " other work on the machine; model MiB = resident memory added by loading and warming up;\n"
        " peak extra = growth during one generation; peak RSS = the whole process, both models loaded)\n",
        flush=True,
    )
    return [
        target_line("engine_speed_ratio", speed_ratio, SPEED_RATIO_TARGET, higher_is_better=True),
        target_line("engine_step_ratio", step_ratio, SPEED_RATIO_TARGET, higher_is_better=True),
    ]


def batching_section(args: argparse.Namespace, small_dir: Path) -> list[str]:
    """N concurrent jobs as one batch against the same N jobs one after another, float32 both ways
    (the targets); then the same in the default dtype where that is not float32 (for information)."""
    from inference.checkpoints.loading import resolve_dtype

    speedups = batching_table(args, small_dir, "float32")
    default_dtype = resolve_dtype(bench_settings(small_dir, "auto", 0).engine, torch.device("cpu"))
    if default_dtype != torch.float32:
        batching_table(args, small_dir, str(default_dtype).removeprefix("torch."))
    return [
        target_line(f"batch{size}_speedup", speedups[size], target, higher_is_better=True)
        for size, target in BATCH_SPEEDUP_TARGETS.items()
    ]


def batching_table(args: argparse.Namespace, small_dir: Path, dtype: str) -> dict[int, float]:
    """Prints the throughput of each batch size in `dtype`; returns the speed-ups over one after another
    (N times the batch-1 run: the same job N times, so measured once)."""
    print(
        f"batching: {dtype}, {args.duration} s audio per job, batch sizes {', '.join(map(str, BATCH_SIZES))}, "
        f"best of {args.batch_repeats}",
        flush=True,
    )
    ours = OurEngine(bench_settings(small_dir, dtype, args.threads))
    ours.generate(1)
    walls: dict[int, float] = {}
    steps: dict[int, float] = {}
    for size in BATCH_SIZES:
        runs = [
            measure(functools.partial(ours.generate_batch, args.duration, size))
            for _ in range(args.batch_repeats)
        ]
        walls[size] = min(r.wall_s for r in runs)
        steps[size] = min(r.median_step_s for r in runs)
        print(f"  batch {size}: {walls[size]:.1f} s", flush=True)
    products = {size: products_alone_s(ours.decoder_step(), 2 * size) for size in BATCH_SIZES}
    decoder_steps = FRAME_RATE * args.duration + DELAY_STEPS
    print()
    print(
        f"{'batch':>6} {'wall s':>8} {'audio s/s':>10} {'RTF/job':>8} {'vs one after another':>21} "
        f"{'step ms':>8} {'products ms':>12} {'at most':>8}"
    )
    speedups: dict[int, float] = {}
    for size, wall in walls.items():
        speedups[size] = size * walls[1] / wall
        throughput = size * args.duration / wall
        # If a batched step cost its products alone and nothing else: the most batching can give
        # with these kernels, against the measured jobs one after another.
        at_most = size * walls[1] / (decoder_steps * products[size])
        print(
            f"{size:>6} {wall:>8.2f} {throughput:>10.3f} {wall / size / args.duration:>8.2f} "
            f"{speedups[size]:>20.2f}x {steps[size] * 1000:>8.1f} {products[size] * 1000:>12.1f} "
            f"{at_most:>7.2f}x"
        )
    print(
        "(audio s/s = seconds of audio made per wall second, all jobs together; step = the median decoder\n"
        " step; products = that step's matrix products timed alone on its rows, 2 a job with guidance;\n"
        " at most = the speed-up if a batch's steps cost their products alone: none can cost less with\n"
        " this machine's kernels)\n",
        flush=True,
    )
    return speedups


def default_configuration_section(args: argparse.Namespace, small_dir: Path) -> list[str]:
    """One job with the shipped defaults on this machine: [engine] dtype = "auto", and torch's own
    thread count ([engine] cpu_threads = 0), whatever --threads set for the other sections."""
    from inference.checkpoints.loading import resolve_dtype

    settings = bench_settings(small_dir, "auto", 0)
    dtype = resolve_dtype(settings.engine, torch.device("cpu"))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_DEFAULT_THREADS)
    try:
        print(
            f"default configuration: dtype auto = {str(dtype).removeprefix('torch.')}, "
            f"{TORCH_DEFAULT_THREADS} thread(s), one {args.duration} s job",
            flush=True,
        )
        ours = OurEngine(settings)
        ours.generate(1)
        runs = [measure(lambda: ours.generate(args.duration)) for _ in range(args.repeats)]
        products = products_alone_s(ours.decoder_step(), 2)
    finally:
        torch.set_num_threads(previous_threads)
    summary = summarize("default", runs, args.duration)
    print(
        f"  wall {summary.wall_s:.2f} s, RTF {summary.real_time_factor:.2f}, "
        f"median step {summary.median_step_s * 1000:.1f} ms",
        f"  the step's products alone: {products * 1000:.1f} ms, so at least RTF "
        f"{products * summary.steps / args.duration:.2f} with these kernels and nothing else\n",
        sep="\n",
        flush=True,
    )
    return [
        target_line(
            "default_config_rtf", summary.real_time_factor, DEFAULT_RTF_TARGET, higher_is_better=False
        )
    ]


def kernels_section(args: argparse.Namespace, small_dir: Path) -> list[str]:
    """One float32 job's median step with the measured kernels (`cpu_matmul = "auto"`, measured in
    this run: no kernel cache) and with the rules used before ("rules"), alternating, against the
    fastest candidate's products alone for one job's rows."""
    import platform

    from inference.cpu_features import cpu_model_name
    from inference.engine import kernel_choice

    print(
        f"kernels: float32, {torch.get_num_threads()} thread(s), one {args.duration} s job (2 rows), "
        f"CPU {cpu_model_name() or platform.processor()}, best of {args.repeats}",
        flush=True,
    )
    fastest, fastest_kernel = fastest_candidate_products_s(small_dir, rows=2)
    engines = {
        "rules": OurEngine(bench_settings(small_dir, "float32", args.threads, cpu_matmul="rules")),
        "auto": OurEngine(
            bench_settings(small_dir, "float32", args.threads, cpu_matmul="auto", kernel_cache="")
        ),
    }
    for ours in engines.values():
        ours.generate(1)  # loads the model and chooses its kernels (measures, for "auto")
    runs: dict[str, list[Run]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, ours in engines.items():  # alternating: drifting load hits both alike
            runs[name].append(measure(functools.partial(ours.generate, args.duration)))
    print(f"\n{'cpu_matmul':<12} {'kernels':<44} {'median step ms':>15} {'its products ms':>16}")
    steps: dict[str, float] = {}
    for name, ours in engines.items():
        loaded = ours.engine.cache.get("small")
        _, choice = kernel_choice.decoder_step(loaded.model, ours.engine.settings.engine, label="small")
        steps[name] = min(r.median_step_s for r in runs[name])
        own = products_alone_s(ours.decoder_step(), 2)
        print(f"{name:<12} {choice.summary():<44} {steps[name] * 1000:>15.1f} {own * 1000:>16.1f}")
        if choice.how == "measured":
            print(f"  (measured in {choice.measure_s:.2f} s)")
    print(
        f"fastest candidate's products alone ({fastest_kernel}): {fastest * 1000:.1f} ms; the measured step "
        f"costs {steps['auto'] / fastest:.2f}x that, the rules' {steps['rules'] / fastest:.2f}x\n"
        "(median step: robust to other work on a shared machine; products: the step's matrix products\n"
        " timed alone on 2 rows of random input, best of 5)\n",
        flush=True,
    )
    return [
        target_line(
            "fp32_step_vs_best_products",
            steps["auto"] / fastest,
            FP32_STEP_VS_BEST_PRODUCTS_TARGET,
            higher_is_better=False,
        )
    ]


def fastest_candidate_products_s(small_dir: Path, rows: int) -> tuple[float, str]:
    """The least time of one step's products alone on `rows` rows among the float32 kernels that may
    run them here, each on the whole model (a model of its own: packing replaces the engines' weights)."""
    from transformers import MusicgenForConditionalGeneration

    from inference.engine.decoder_step import KernelPlan
    from inference.engine.kernel_choice import candidate_kernels

    model = MusicgenForConditionalGeneration.from_pretrained(small_dir, dtype=torch.float32).eval()
    times = {}
    for kernel in candidate_kernels(torch.float32):
        step = DecoderStep(model, plan=KernelPlan(kernel, onednn_min_rows=1))
        times[kernel.value] = products_alone_s(step, rows)
        del step
        gc.collect()
    del model
    gc.collect()
    fastest = min(times, key=times.__getitem__)
    print(
        "  products alone, 2 rows: " + ", ".join(f"{k} {t * 1000:.1f} ms" for k, t in times.items()),
        flush=True,
    )
    return times[fastest], fastest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    small_dir = ensure_model(args.model_dir / "small", tiny=False)
    lines: list[str] = []

    if not args.no_worker:
        # First, while this process is small: the worker's own cost does not depend on the model.
        tiny_dir = ensure_model(args.model_dir / "tiny-small", tiny=True)
        local_s, worker_s = bench_worker_overhead(tiny_dir, args.threads, repeats=5)
        overhead = worker_s - local_s
        print(
            f"worker round trip (tiny model, 1 s, best of 5): in-process {local_s:.3f} s, via InferenceClient "
            f"{worker_s:.3f} s, overhead {overhead * 1000:.0f} ms",
            flush=True,
        )
        lines.append(
            target_line("worker_overhead_s", overhead, WORKER_OVERHEAD_TARGET_S, higher_is_better=False)
        )
    if "parity" in args.sections:
        lines += parity_section(args, small_dir)
    if "batching" in args.sections:
        lines += batching_section(args, small_dir)
    if "default" in args.sections:
        lines += default_configuration_section(args, small_dir)
    if "kernels" in args.sections:
        lines += kernels_section(args, small_dir)
    for name in ("stereo", "long", "takes"):
        if name in args.sections:
            from bench import peer_features

            print(flush=True)
            lines += getattr(peer_features, f"{name}_section")(args)
    if "bot" in args.sections:
        lines += bot_section(args, small_dir)
    if "replicas" in args.sections:
        lines += replicas_section(args)
    return print_target_lines(lines)


if __name__ == "__main__":
    sys.exit(main())
