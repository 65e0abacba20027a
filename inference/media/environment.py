"""The environment a child process (ffmpeg on an uploaded file) starts with: ours, minus secrets.

A decoder that parses untrusted files has no use for the bot's Discord token or any other
credential; if a hostile file ever made it run code, there should be nothing in its environment to
steal. Everything else is kept: PATH, HOME, locale, HF_HOME, proxies, CUDA_VISIBLE_DEVICES, ...
Torch-free, so the bot can use it too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

# Names that hold credentials: DISCORD_TOKEN, HF_TOKEN, AWS_SECRET_ACCESS_KEY, *_PASSWORD, *_API_KEY...
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY|AUTH", re.I
)
# Secret-looking names that are not secrets and that children need.
_NOT_SECRETS = frozenset({"SSH_AUTH_SOCK", "XAUTHORITY"})


def is_secret_name(name: str) -> bool:
    """Whether an environment variable of this name is a credential a child must not inherit."""
    return name.upper() not in _NOT_SECRETS and _SECRET_NAME.search(name) is not None


def child_environment(environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environment` (default: ours) without the variables that hold secrets."""
    source = os.environ if environment is None else environment
    return {name: value for name, value in source.items() if not is_secret_name(name)}
