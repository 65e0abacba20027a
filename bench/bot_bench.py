"""Benchmark through the bot: the real bot process, the fake Discord (tests/fake_discord) and real workers.

    python bench/bot_bench.py            # the full sizes below
    python bench/bot_bench.py --quick    # smaller bursts

Four measurements, each ending with `TARGET <name> measured=<x> target=<y> ok|short`:

- throughput: 8 members of 4 servers run /generate (2 s of audio each, the real `small` architecture
  with random weights) at the same moment; seconds until all 8 results are posted, with batching
  (`[worker] max_batch_size` 4, the default) and with batch size 1. Target: >= 2.5x.
- acknowledgement: 50 concurrent /generate commands; the p99 of the time from the command being sent
  to the bot's acknowledgement (the deferred response). Target: < 100 ms.
- burst: 300 /generate commands from 60 servers at once; their acknowledgement p99 against the fake
  Discord's own floor, a trivial bot whose /generate acknowledges at once, measured the same way in
  the same run. Target: within 1.5x of the floor.
- staggered (continuous batching): members of 3 servers run /generate one after another, a few
  seconds apart, asking for different durations (the real `small` architecture), so each arrives
  while earlier ones are being made; the mean time from a command to its posted result with
  `[worker] continuous_batching` on against off. Kept only if it helps: target > 1.

The acknowledgement and burst sections run their jobs on the tiny test model: what they measure is
the bot's event loop before the acknowledgement, which does not depend on the model, and a real model
would take hours to work through 300 jobs on a CPU. The fake Discord runs in this process, on the
bot's event loop, so every latency includes its share; the floor measures exactly that share.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout: make the packages importable
    sys.path.insert(0, str(REPO_ROOT))

import discord  # noqa: E402
from discord import app_commands  # noqa: E402
from discord.ext import commands  # noqa: E402

from bench.model_settings import add_model_dir_option, random_model_settings  # noqa: E402
from bench.targets import print_target_lines, target_line  # noqa: E402
from bot.app import MusicGenBot, bot_intents  # noqa: E402
from bot.config import BotConfig, BotOptions, Limits, WorkerOptions  # noqa: E402
from inference.backends.local import InferenceClient  # noqa: E402
from inference.request import GenerationRequest  # noqa: E402
from inference.settings import EngineOptions, EngineSettings  # noqa: E402
from tests.bot.scenario_harness import add_server, posted_result  # noqa: E402
from tests.fake_discord import FakeDiscord, FakeMember, running_bot  # noqa: E402

THROUGHPUT_TARGET = 2.5
STAGGERED_GAIN_TARGET = 1.0
ACK_P99_TARGET_MS = 100.0
BURST_FLOOR_RATIO_TARGET = 1.5
Measured = TypeVar("Measured")
# Hang guards, not measurements.
RESULT_TIMEOUT_S = 1800.0
ACK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Sizes:
    throughput_servers: int = 4
    throughput_members: int = 2
    throughput_seconds: int = 2
    ack_commands: int = 50
    burst_commands: int = 300
    burst_servers: int = 60
    # Each latency section runs this many times, alternating bot and floor; the best p99 is kept
    # (other work on a shared machine only ever adds latency).
    repeats: int = 2
    # Staggered arrivals: this many jobs, one every interval, their seconds of audio taken in turn
    # from the cycle (members ask for different lengths).
    staggered_jobs: int = 6
    staggered_seconds: tuple[int, ...] = (4, 1, 2)
    staggered_interval_s: float = 2.0


QUICK = Sizes(
    ack_commands=50,
    burst_commands=120,
    burst_servers=24,
    repeats=2,
    staggered_jobs=4,
    staggered_seconds=(2, 1),
)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with `fraction` of them at or below it (the p99
    of 50 values is their maximum, of 300 the 297th)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def engine_settings(
    model_dir: Path, *, dtype: str, threads: int, worker_nice: int | None = None
) -> EngineSettings:
    """The embedded engine defaults on a random-weight model (`worker_nice` None: the default)."""
    options = EngineOptions(dtype=dtype, cpu_threads=threads)  # type: ignore[arg-type]
    if worker_nice is not None:
        options = options.model_copy(update={"worker_nice": worker_nice})
    return random_model_settings(model_dir, options)


def bot_config(
    data_dir: Path, settings: EngineSettings, *, max_batch_size: int, continuous_batching: bool = True
) -> BotConfig:
    """The embedded defaults, except the data folder and the batching under test."""
    return BotConfig(
        bot=BotOptions(default_model_version="small", data_dir=str(data_dir)),
        limits=Limits(),
        worker=WorkerOptions(max_batch_size=max_batch_size, continuous_batching=continuous_batching),
        engine_settings=settings,
    )


def members_of(fake: FakeDiscord, servers: int, members: int, prefix: str) -> list[FakeMember]:
    """`servers` servers of `members` members each, listed round the servers (one of each, then again)."""
    made = [add_server(fake, f"{prefix} {s}", tuple(f"m{m}" for m in range(members))) for s in range(servers)]
    return [server[f"m{m}"] for m in range(members) for server in made]


# -- the floor: a bot that acknowledges /generate at once ------------------------------------------
class FloorBot(commands.AutoShardedBot):
    """The same gateway, intents and command name as the music bot; its /generate only defers."""

    def __init__(self) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=bot_intents(), help_command=None)

        @app_commands.command(name="generate", description="Acknowledge at once.")
        async def generate(interaction: discord.Interaction, prompt: str, duration: int = 8) -> None:
            await interaction.response.defer(thinking=True)

        self.tree.add_command(generate)

    async def setup_hook(self) -> None:
        await self.tree.sync()


# -- measurements -----------------------------------------------------------------------------------
async def acknowledgement_latencies(
    fake: FakeDiscord, members: list[FakeMember], *, wait_until_queued: bool
) -> list[float]:
    """Every member sends /generate at the same moment; seconds from sending to the bot's acknowledgement.

    `wait_until_queued`: return only once every job is queued (its status message shows its number),
    so the bot is not stopped in the middle of handling a command.
    """
    loop = asyncio.get_running_loop()

    async def one(index: int, member: FakeMember) -> float:
        channel = next(iter(member.guild.channels.values()))
        sent = loop.time()
        interaction = await fake.invoke_slash_command(
            member, channel, "generate", {"prompt": f"burst {index}", "duration": 1}
        )
        await interaction.wait_for_response(timeout=ACK_TIMEOUT_S)
        latency = loop.time() - sent
        if wait_until_queued:
            await interaction.wait_for_final(lambda m: "Job #" in m.content, ACK_TIMEOUT_S)
        return latency

    return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(members))))


async def with_bot(
    bot_factory: Callable[[], commands.AutoShardedBot],
    layout: Callable[[FakeDiscord], list[FakeMember]],
    measure: Callable[[FakeDiscord, list[FakeMember]], Awaitable[Measured]],
) -> Measured:
    """Run `measure` against a fresh fake Discord (with the members `layout` adds) and a fresh bot."""
    # A bot freezes its start-up heap at the first on_ready of its process only. Each bot measured
    # here starts as the only bot of a process would, so none runs on the heap an earlier one froze.
    gc.unfreeze()
    async with FakeDiscord() as fake:
        members = layout(fake)
        async with running_bot(fake, bot_factory(), ready_timeout=120):
            return await measure(fake, members)


async def generate_and_wait(fake: FakeDiscord, member: FakeMember, options: dict[str, object]) -> None:
    """`member` runs /generate in their server's channel; returns once the result is posted."""
    channel = next(iter(member.guild.channels.values()))
    interaction = await fake.invoke_slash_command(member, channel, "generate", options)
    message = await interaction.wait_for_final(lambda m: "Job #" in m.content, ACK_TIMEOUT_S)
    job_id = int(message.content.split("Job #", 1)[1].split()[0].rstrip(":.,"))
    await posted_result(fake, channel, job_id, timeout=RESULT_TIMEOUT_S)


async def staggered_latencies(
    client: InferenceClient, settings: EngineSettings, work_dir: Path, sizes: Sizes, *, continuous: bool
) -> list[float]:
    """Seconds from each command to its posted result, the commands sent `staggered_interval_s` apart."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"staggered-{continuous}-", dir=work_dir))

    def layout(fake: FakeDiscord) -> list[FakeMember]:
        return members_of(fake, 3, -(-sizes.staggered_jobs // 3), "Staggered")[: sizes.staggered_jobs]

    async def measure(fake: FakeDiscord, members: list[FakeMember]) -> list[float]:
        loop = asyncio.get_running_loop()

        async def one(index: int, member: FakeMember) -> float:
            await asyncio.sleep(index * sizes.staggered_interval_s)
            sent = loop.time()
            seconds = sizes.staggered_seconds[index % len(sizes.staggered_seconds)]
            options = {"prompt": f"ambient {index}", "duration": seconds, "seed": index}
            await generate_and_wait(fake, member, options)
            return loop.time() - sent

        return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(members))))

    config = bot_config(data_dir, settings, max_batch_size=4, continuous_batching=continuous)
    return await with_bot(lambda: MusicGenBot(config, inference=client), layout, measure)


async def staggered_section(
    model_dir: Path, work_dir: Path, sizes: Sizes, *, dtype: str, threads: int
) -> list[str]:
    """Jobs arriving while others are made, with continuous batching on and off."""
    settings = engine_settings(model_dir, dtype=dtype, threads=threads)
    cycle = ", ".join(str(seconds) for seconds in sizes.staggered_seconds)
    print(
        f"staggered: {sizes.staggered_jobs} /generate of {cycle} s in turn, one every "
        f"{sizes.staggered_interval_s:g} s, small architecture (dtype {dtype})",
        flush=True,
    )
    means: dict[bool, float] = {}
    async with InferenceClient(settings) as client:
        warm_up = GenerationRequest(model_version="small", prompt="warm up", duration=1, seed=0)
        await client.submit("warm-up", warm_up, work_dir)  # loads the model: not part of either run
        for continuous in (True, False):
            latencies = await staggered_latencies(client, settings, work_dir, sizes, continuous=continuous)
            means[continuous] = sum(latencies) / len(latencies)
            print(
                f"  continuous_batching {'on ' if continuous else 'off'}: mean {means[continuous]:.1f} s, "
                f"longest {max(latencies):.1f} s (each: {', '.join(f'{x:.1f}' for x in latencies)})",
                flush=True,
            )
    gain = means[False] / means[True]
    print(f"  continuous batching answers {gain:.2f}x sooner on average", flush=True)
    return [
        target_line("continuous_batching_latency_gain", gain, STAGGERED_GAIN_TARGET, higher_is_better=True)
    ]


async def time_until_all_posted(
    client: InferenceClient, settings: EngineSettings, work_dir: Path, sizes: Sizes, max_batch_size: int
) -> float:
    """Seconds from the simultaneous /generate commands to the last of their results posted."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"batch{max_batch_size}-", dir=work_dir))

    def layout(fake: FakeDiscord) -> list[FakeMember]:
        return members_of(fake, sizes.throughput_servers, sizes.throughput_members, "Throughput")

    async def measure(fake: FakeDiscord, members: list[FakeMember]) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(
            *(
                generate_and_wait(
                    fake,
                    member,
                    {"prompt": f"lofi beat {index}", "duration": sizes.throughput_seconds, "seed": index},
                )
                for index, member in enumerate(members)
            )
        )
        return loop.time() - started

    config = bot_config(data_dir, settings, max_batch_size=max_batch_size)
    return await with_bot(lambda: MusicGenBot(config, inference=client), layout, measure)


async def latency_p99(
    bot_factory: Callable[[], commands.AutoShardedBot], servers: int, commands_sent: int, *, queues_jobs: bool
) -> float:
    members_per_server = -(-commands_sent // servers)

    def layout(fake: FakeDiscord) -> list[FakeMember]:
        return members_of(fake, servers, members_per_server, "Burst")[:commands_sent]

    async def measure(fake: FakeDiscord, members: list[FakeMember]) -> float:
        latencies = await acknowledgement_latencies(fake, members, wait_until_queued=queues_jobs)
        return percentile(latencies, 0.99)

    return await with_bot(bot_factory, layout, measure)


async def throughput_section(
    model_dir: Path, work_dir: Path, sizes: Sizes, *, dtype: str, threads: int
) -> list[str]:
    """Simultaneous jobs on the real small architecture: batched against batch size 1."""
    settings = engine_settings(model_dir, dtype=dtype, threads=threads)
    async with InferenceClient(settings) as client:
        warm_up = GenerationRequest(model_version="small", prompt="warm up", duration=1, seed=0)
        await client.submit("warm-up", warm_up, work_dir)  # loads the model: not part of either run
        jobs = sizes.throughput_servers * sizes.throughput_members
        print(
            f"throughput: {jobs} members of {sizes.throughput_servers} servers, /generate "
            f"{sizes.throughput_seconds} s each at once, small architecture (dtype {dtype})",
            flush=True,
        )
        batched = await time_until_all_posted(client, settings, work_dir, sizes, max_batch_size=4)
        print(f"  max_batch_size 4: all posted after {batched:.1f} s", flush=True)
        alone = await time_until_all_posted(client, settings, work_dir, sizes, max_batch_size=1)
        print(f"  max_batch_size 1: all posted after {alone:.1f} s", flush=True)
    speedup = alone / batched
    print(f"  batching is {speedup:.2f}x faster", flush=True)
    return [target_line("bot_batching_speedup", speedup, THROUGHPUT_TARGET, higher_is_better=True)]


async def latency_section(
    tiny_dir: Path, work_dir: Path, sizes: Sizes, *, threads: int, worker_nice: int | None = None
) -> list[str]:
    """Acknowledgement latencies, with the tiny model behind the bot (see the module docstring)."""
    tiny_settings = engine_settings(tiny_dir, dtype="float32", threads=threads, worker_nice=worker_nice)
    print(f"latency: the worker at nice {tiny_settings.engine.worker_nice}", flush=True)
    async with InferenceClient(tiny_settings) as client:

        def music_bot() -> MusicGenBot:
            data_dir = Path(tempfile.mkdtemp(prefix="ack-", dir=work_dir))
            return MusicGenBot(bot_config(data_dir, tiny_settings, max_batch_size=4), inference=client)

        ack_p99s: list[float] = []
        ack_floor_p99s: list[float] = []
        bot_p99s: list[float] = []
        floor_p99s: list[float] = []
        for repeat in range(sizes.repeats):
            ack_p99s.append(await latency_p99(music_bot, 10, sizes.ack_commands, queues_jobs=True))
            # Not a target, but what this machine allows right now: the floor of the same 50.
            ack_floor_p99s.append(await latency_p99(FloorBot, 10, sizes.ack_commands, queues_jobs=False))
            floor_p99s.append(
                await latency_p99(FloorBot, sizes.burst_servers, sizes.burst_commands, queues_jobs=False)
            )
            bot_p99s.append(
                await latency_p99(music_bot, sizes.burst_servers, sizes.burst_commands, queues_jobs=True)
            )
            print(
                f"  repeat {repeat + 1}: {sizes.ack_commands} concurrent /generate p99 {ack_p99s[-1] * 1000:.0f} ms "
                f"(floor {ack_floor_p99s[-1] * 1000:.0f} ms); "
                f"burst of {sizes.burst_commands} from {sizes.burst_servers} servers p99: bot "
                f"{bot_p99s[-1] * 1000:.0f} ms, floor {floor_p99s[-1] * 1000:.0f} ms",
                flush=True,
            )
    ack_ms = min(ack_p99s) * 1000
    ratio = min(bot_p99s) / min(floor_p99s)
    print(
        f"acknowledgement p99 (best of {sizes.repeats}): {sizes.ack_commands} concurrent {ack_ms:.0f} ms "
        f"(floor {min(ack_floor_p99s) * 1000:.0f} ms); "
        f"burst {min(bot_p99s) * 1000:.0f} ms vs floor {min(floor_p99s) * 1000:.0f} ms ({ratio:.2f}x); "
        "tiny model behind the bot",
        flush=True,
    )
    return [
        target_line("bot_ack_p99_ms", ack_ms, ACK_P99_TARGET_MS, higher_is_better=False),
        target_line("bot_burst_p99_vs_floor", ratio, BURST_FLOOR_RATIO_TARGET, higher_is_better=False),
    ]


SECTIONS = ("throughput", "latency", "staggered")


async def run_async(
    model_dir: Path,
    tiny_dir: Path,
    sizes: Sizes,
    *,
    dtype: str,
    threads: int,
    sections: frozenset[str],
    worker_nice: int | None = None,
) -> list[str]:
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bot-bench-") as work:
        work_dir = Path(work)
        if "throughput" in sections:
            lines += await throughput_section(model_dir, work_dir, sizes, dtype=dtype, threads=threads)
        if "latency" in sections:
            lines += await latency_section(
                tiny_dir, work_dir, sizes, threads=threads, worker_nice=worker_nice
            )
        if "staggered" in sections:
            lines += await staggered_section(model_dir, work_dir, sizes, dtype=dtype, threads=threads)
    return lines


def run_bot_bench(
    model_dir: Path,
    tiny_dir: Path,
    *,
    quick: bool,
    dtype: str = "auto",
    threads: int = 0,
    sections: frozenset[str] = frozenset(SECTIONS),
    worker_nice: int | None = None,
) -> list[str]:
    """Run the measurements; returns their TARGET lines (bench/run.py prints them with its own)."""
    sizes = QUICK if quick else Sizes()
    return asyncio.run(
        run_async(
            model_dir,
            tiny_dir,
            sizes,
            dtype=dtype,
            threads=threads,
            sections=sections,
            worker_nice=worker_nice,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller bursts and fewer jobs")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in the worker (0 = torch's default)"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)} [all]"
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        help="[engine] worker_nice for the latency section's worker (default: the built-in 10; 0 = the "
        "bot's own priority, as before it existed)",
    )
    add_model_dir_option(parser)
    args = parser.parse_args(argv)
    from run import ensure_model  # bench/run.py, next to this file

    small_dir = ensure_model(args.model_dir / "small", tiny=False)
    tiny_dir = ensure_model(args.model_dir / "tiny-small", tiny=True)
    sections = frozenset(name.strip() for name in args.sections.split(",") if name.strip())
    lines = run_bot_bench(
        small_dir,
        tiny_dir,
        quick=args.quick,
        dtype=args.dtype,
        threads=args.threads,
        sections=sections,
        worker_nice=args.worker_nice,
    )
    return print_target_lines(lines)


if __name__ == "__main__":
    sys.exit(main())
