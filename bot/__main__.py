"""`python -m bot` / `musicgen-bot`: run the bot, or maintain its database.

DISCORD_TOKEN=... musicgen-bot [--config config.toml]        # run (same as `musicgen-bot run`)
musicgen-bot db upgrade | db status                          # apply / list the SQL migrations
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import discord
from pydantic import ValidationError

from bot.config import BotConfig, load_config
from bot.database import Database, discover_migrations
from inference.settings import CONFIG_ENV_VAR

logger = logging.getLogger("bot")

TOKEN_ENV_VAR = "DISCORD_TOKEN"
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
            f"Discord refused the token in {TOKEN_ENV_VAR}: check that it is current."
        ) from None
    except discord.PrivilegedIntentsRequired:  # pragma: no cover - the bot asks for none
        raise click.ClickException(
            "Discord refused a privileged intent; this bot should need none."
        ) from None


async def run_until_stopped(config: BotConfig, token: str, *, force_command_sync: bool = False) -> None:
    """Run the bot until Discord closes it or SIGINT/SIGTERM arrives, then shut down cleanly."""
    from bot.bot import MusicGenBot  # after logging is set up

    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    try:
        bot = MusicGenBot(config, force_command_sync=force_command_sync)
        async with bot:
            running = asyncio.create_task(bot.start(token), name="discord-client")
            stopping = asyncio.create_task(stop_requested.wait(), name="stop-signal")
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                logger.info("stop requested: finishing up (running jobs go back to the queue)")
                await bot.close()
            stopping.cancel()
            await running  # re-raises start-up errors such as a bad token
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


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


if __name__ == "__main__":
    main()
