"""Memory benchmark: the bot process continuing a 10-minute stereo MP3 through the context menu.

    python bench/memory.py

The real bot and the fake Discord of the tests run in this process, the inference worker (the tiny
test model: the bot's memory does not depend on the model) in a child process. A member posts a
600 s stereo MP3 (44.1 kHz, 32 kbit/s) and continues it by 1 s with "Continue with MusicGen"; the
peak resident set of this process from the modal's Submit to the posted result, over what it was
just before (Linux: the peak is reset through /proc/self/clear_refs), is what the continuation cost
the bot. Then four members do it at once. The server's upload limit is Discord's default (10 MiB), so
the 77 MB piece is posted as a 128 kbit/s MP3; the fake Discord keeps what it receives in this same
process, which the numbers include (about 10 MB a result).

    TARGET bot_continue_600s_stereo_mib measured=<x> target=100 ok|short
    TARGET bot_continue_600s_stereo_x4_mib measured=<x> target=300 ok|short
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout: make the packages importable
    sys.path.insert(0, str(REPO_ROOT))

from bench.model_settings import add_model_dir_option, random_model_settings  # noqa: E402
from bench.targets import print_target_lines  # noqa: E402
from bot.app import MusicGenBot  # noqa: E402
from bot.config import BotConfig, BotOptions, Limits  # noqa: E402
from inference.backends.local import InferenceClient  # noqa: E402
from inference.settings import EngineOptions  # noqa: E402
from tests.bot.long_clip_memory import (  # noqa: E402
    can_measure_peak_memory,
    continue_at_once,
    make_long_stereo_mp3,
)
from tests.bot.scenario_harness import add_server  # noqa: E402
from tests.fake_discord import FakeDiscord, running_bot  # noqa: E402

CLIP_SECONDS = 600
ONE_TARGET_MIB = 100.0
FOUR_TARGET_MIB = 300.0


def target_line(name: str, measured: float, target: float) -> str:
    return f"TARGET {name} measured={measured:.1f} target={target:g} {'ok' if measured < target else 'short'}"


async def measure(tiny_dir: Path, work_dir: Path) -> list[str]:
    clip_bytes = make_long_stereo_mp3(work_dir / "long-take.mp3", seconds=CLIP_SECONDS, bitrate="32k")
    settings = random_model_settings(
        tiny_dir,
        EngineOptions(device="cpu", dtype="float32", cpu_threads=1),
        conversion_cache=work_dir / "converted",
    )
    config = BotConfig(
        bot=BotOptions(default_model_version="small", data_dir=str(work_dir / "data")),
        limits=Limits(max_pending_per_user=2),
        engine_settings=settings,
    )
    lines: list[str] = []
    async with (
        InferenceClient(settings, processes=1) as client,
        FakeDiscord() as fake,
    ):
        server = add_server(fake, "Long takes", ("alice", "bob", "carol", "dave"))
        async with running_bot(fake, MusicGenBot(config, inference=client), ready_timeout=120):
            for label, names, target, name in (
                ("one member", ("alice",), ONE_TARGET_MIB, "bot_continue_600s_stereo_mib"),
                (
                    "four members at once",
                    ("alice", "bob", "carol", "dave"),
                    FOUR_TARGET_MIB,
                    "bot_continue_600s_stereo_x4_mib",
                ),
            ):
                clip = fake.add_attachment("long-take.mp3", clip_bytes)
                message = await fake.post_user_message(server["alice"], server.channel, attachments=[clip])
                started = time.monotonic()
                continued = await continue_at_once(fake, server.channel, [server[n] for n in names], message)
                seconds = time.monotonic() - started
                print(
                    f"{label:>22}: peak +{continued.peak_increase_mib:6.1f} MiB over the bot before, "
                    f"{seconds:5.1f} s until posted",
                    flush=True,
                )
                lines.append(target_line(name, continued.peak_increase_mib, target))
    return lines


def run_memory_bench(tiny_dir: Path) -> list[str]:
    """Run the measurements; returns their TARGET lines (empty where the peak cannot be measured)."""
    if not can_measure_peak_memory():
        print("memory: skipped (needs Linux's /proc/self/clear_refs)")
        return []
    print(f"memory: continuing a {CLIP_SECONDS} s stereo MP3 through the context menu", flush=True)
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as work:
        return asyncio.run(measure(tiny_dir, Path(work)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_dir_option(parser)
    args = parser.parse_args(argv)
    from run import ensure_model  # bench/run.py, next to this file

    lines = run_memory_bench(ensure_model(args.model_dir / "tiny-small", tiny=True))
    return print_target_lines(lines)


if __name__ == "__main__":
    sys.exit(main())
