"""`python -m bot` / `musicgen-bot`: run the bot, or maintain its database.

DISCORD_TOKEN=... musicgen-bot [--config config.toml]        # run (same as `musicgen-bot run`)
musicgen-bot db upgrade | db status                          # apply / list the SQL migrations
musicgen-bot doctor [--quick] [--model PATH_OR_ID]           # check this machine for the bot
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, cast

import aiohttp
import click
import discord
from pydantic import ValidationError

from bot.config import BotConfig, load_config
from bot.storage.database import Database, discover_migrations
from inference.doctor import DoctorPlan, doctor_options, run_doctor_command
from inference.request import ModelVersion
from inference.settings import CONFIG_ENV_VAR, resolve_config_path

logger = logging.getLogger("bot")

TOKEN_ENV_VAR = "DISCORD_TOKEN"
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=30)
T = TypeVar("T")


def read_config(path: Path | None) -> BotConfig:
    try:
        return load_config(path)
    except FileNotFoundError as error:
        raise click.ClickException(f"config file not found: {error.filename}") from None
    except (ValidationError, ValueError) as error:
        raise click.ClickException(f"invalid configuration:\n{error}") from None


def take_token_from_environment() -> str:
    """The bot token, removed from the environment as it is read.

    Every child (the inference worker, ffmpeg on untrusted uploads, pydub) inherits os.environ: a
    token no longer there cannot leak through any of them.
    """
    return os.environ.pop(TOKEN_ENV_VAR, "").strip()


@click.group(invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV_VAR,
    help=f"config.toml to use (default: ${CONFIG_ENV_VAR}, else ./config.toml, else built-in defaults).",
)
@click.pass_context
def main(context: click.Context, config_path: Path | None) -> None:
    """A Discord bot that turns slash commands into music with MusicGen."""
    context.obj = config_path
    if context.invoked_subcommand is None:
        context.invoke(run)


@main.command()
@click.option(
    "--force-sync", is_flag=True, help="Re-register the slash commands even if they look unchanged."
)
@click.pass_obj
def run(config_path: Path | None, force_sync: bool = False) -> None:
    """Run the bot (the token comes from $DISCORD_TOKEN)."""
    token = take_token_from_environment()
    if not token:
        raise click.ClickException(
            f"{TOKEN_ENV_VAR} is not set. Put your bot's token (Discord developer portal → your application → "
            f"Bot → Reset Token) in the environment: {TOKEN_ENV_VAR}=... musicgen-bot"
        )
    config = read_config(config_path)
    discord.utils.setup_logging(level=logging.INFO)
    try:
        asyncio.run(run_until_stopped(config, token, force_command_sync=force_sync))
    except discord.LoginFailure:
        raise click.ClickException(
            f"Discord refused the token in {TOKEN_ENV_VAR}: check that it is current "
            "(developer portal → your application → Bot → Reset Token)."
        ) from None
    except (OSError, aiohttp.ClientError, TimeoutError) as error:
        # Reachable at start-up, lost during log-in: say so in one line, no traceback.
        raise click.ClickException(f"Discord could not be reached: {describe_network_error(error)}") from None
    except discord.PrivilegedIntentsRequired:  # pragma: no cover - the bot asks for none
        raise click.ClickException(
            "Discord refused a privileged intent; this bot should need none."
        ) from None


async def run_until_stopped(config: BotConfig, token: str, *, force_command_sync: bool = False) -> None:
    """Run the bot until Discord closes it or SIGINT/SIGTERM arrives, then shut down cleanly."""
    from bot.app import MusicGenBot  # after logging is set up

    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    try:
        bot = MusicGenBot(config, force_command_sync=force_command_sync)
        async with bot:
            running = asyncio.create_task(start_when_reachable(bot, token), name="discord-client")
            stopping = asyncio.create_task(stop_requested.wait(), name="stop-signal")
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                logger.info("stop requested: finishing up (running jobs go back to the queue)")
                await bot.close()
                running.cancel()  # only does something while still waiting for Discord to answer
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running  # re-raises start-up errors such as a bad token
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def describe_network_error(error: BaseException) -> str:
    return str(error) or type(error).__name__


async def wait_until_discord_answers(
    token: str, *, first_delay_s: float = 1.0, max_delay_s: float = 60.0
) -> None:
    """Ask Discord who we are until it answers; retry with backoff while it cannot be reached.

    A machine that boots before its network, or a Discord outage, is logged as one line per try
    (not a traceback) and waited out. A refused token raises LoginFailure at once: retrying
    cannot fix it, and every 401 counts towards Discord's invalid-request ban.
    """
    delay_s = first_delay_s
    url = f"{discord.http.Route.BASE}/users/@me"
    headers = {
        "Authorization": f"Bot {token}",
        "User-Agent": f"DiscordBot (https://github.com/Rapptz/discord.py {discord.__version__})",
    }
    while True:
        try:
            async with (
                aiohttp.ClientSession(timeout=PROBE_TIMEOUT) as session,
                session.get(url, headers=headers) as reply,
            ):
                if reply.status == 401:
                    raise discord.LoginFailure("Improper token has been passed.")
                if reply.status < 500:
                    return  # reachable; anything else is for discord.py's own log-in to report
                reason = f"Discord answered {reply.status}"
        except (OSError, aiohttp.ClientError, TimeoutError) as error:
            reason = describe_network_error(error)
        logger.warning("Discord cannot be reached (%s); trying again in %.0f s", reason, delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, max_delay_s)


async def start_when_reachable(bot: discord.Client, token: str) -> None:
    await wait_until_discord_answers(token)
    await bot.start(token)


@main.group()
def db() -> None:
    """Database maintenance."""


def on_database(config: BotConfig, action: Callable[[Database], Awaitable[T]]) -> T:
    """Open the bot's database without migrating it, run `action` on it, close it."""

    async def run_action() -> T:
        database = await Database.open(config.database_path, upgrade=False)
        try:
            return await action(database)
        finally:
            await database.close()

    return asyncio.run(run_action())


@db.command()
@click.pass_obj
def upgrade(config_path: Path | None) -> None:
    """Apply pending SQL migrations (the bot also does this when it starts)."""
    config = read_config(config_path)
    applied = on_database(config, lambda database: database.upgrade())
    click.echo(
        f"{config.database_path}: "
        + (f"applied {', '.join(f'V{v}' for v in applied)}" if applied else "up to date")
    )


@db.command()
@click.pass_obj
def status(config_path: Path | None) -> None:
    """List the migrations and whether each is applied."""
    config = read_config(config_path)
    applied = set(on_database(config, lambda database: database.applied_versions()))
    click.echo(f"database: {config.database_path}")
    for migration in discover_migrations():
        mark = "applied" if migration.version in applied else "pending"
        click.echo(f"  V{migration.version}__{migration.name}: {mark}")


@main.command()
@doctor_options
@click.pass_obj
def doctor(config_path: Path | None, model_source: str | None, quick: bool, ray_timeout_s: float) -> None:
    """Check this machine for the bot: environment, numerics on every device, speed. Exits 1 when a
    check fails, with what to change. Run it once after installing (it loads the model: minutes)."""
    config = read_config(config_path)
    # The doctor imports torch once its round reaches the engine, in this command's process: a one-off
    # check, not the bot, whose process never imports torch.
    run_doctor_command(doctor_plan(config, config_path), model_source, quick, ray_timeout_s)


def doctor_plan(config: BotConfig, config_path: Path | None) -> DoctorPlan:
    """What the doctor checks, from the bot's configuration."""
    return DoctorPlan(
        settings=config.engine_settings,
        # BotOptions has checked it is one of MODEL_VERSIONS.
        model_version=cast(ModelVersion, config.bot.default_model_version),
        config_path=resolve_config_path(config_path),
        data_dir=config.data_dir,
        min_free_mb=config.storage.min_free_mb,
        backend=config.backend_options,
    )


if __name__ == "__main__":
    main()
