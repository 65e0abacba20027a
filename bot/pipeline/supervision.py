"""Long-running loops of the bot are restarted, loudly, when they die, instead of stopping silently.

An asyncio task that raises just ends; nobody awaits the dispatcher loop until shutdown, so a bug
in one iteration would leave every queue standing still with nothing in the log until then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

logger = logging.getLogger(__name__)

# Pauses before each restart in a row (the last repeats): a loop that keeps dying does not spin.
RESTART_DELAYS_S = (0.5, 2.0, 10.0, 30.0)
# A loop that ran this long before dying starts again from the first delay.
HEALTHY_RUN_S = 60.0


async def keep_running(
    loop: Callable[[], Awaitable[None]], *, name: str, delays_s: Sequence[float] = RESTART_DELAYS_S
) -> None:
    """Run `loop()` until it returns or is cancelled; each time it raises, log it and start it again."""
    restarts_in_a_row = 0
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except Exception:
            if time.monotonic() - started > HEALTHY_RUN_S:
                restarts_in_a_row = 0
            delay = delays_s[min(restarts_in_a_row, len(delays_s) - 1)]
            restarts_in_a_row += 1
            logger.exception(
                "%s died; restarting it in %.1f s (restart %d in a row)", name, delay, restarts_in_a_row
            )
            await asyncio.sleep(delay)
