"""HTTP plumbing shared by the fake's REST routes: JSON responses, Discord errors, bodies, rate limits."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .constants import ErrorCode, Limit


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response whose Content-Type is exactly ``application/json`` (discord.py compares it literally)."""
    response = web.Response(status=status, body=json.dumps(body).encode(), headers=headers or {})
    response.headers["Content-Type"] = "application/json"
    return response


def no_content(headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=204, headers=headers or {})


class DiscordHTTPError(Exception):
    """Raised by a route to answer with Discord's JSON error body."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.extra = extra or {}
        self.headers = headers or {}

    def to_response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return json_response(body, self.status, self.headers)


def not_found(code: int, message: str) -> DiscordHTTPError:
    return DiscordHTTPError(404, code, message)


def invalid_form_body(errors: dict[str, Any]) -> DiscordHTTPError:
    return DiscordHTTPError(400, ErrorCode.INVALID_FORM_BODY, "Invalid Form Body", errors=errors)


def form_error(path: str, code: str, message: str) -> DiscordHTTPError:
    """A 50035 whose ``errors`` object points at a dotted field path, like Discord's."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        errors = {part: errors}
    return invalid_form_body(errors)


def too_large() -> DiscordHTTPError:
    return DiscordHTTPError(413, ErrorCode.REQUEST_ENTITY_TOO_LARGE, "Request entity too large")


@dataclass
class Upload:
    """One ``files[n]`` part of a multipart request."""

    field_index: int
    filename: str
    data: bytes
    declared_content_type: str | None


@dataclass
class RequestBody:
    payload: dict[str, Any]
    uploads: list[Upload] = field(default_factory=list)


_FILE_FIELD = re.compile(r"^files\[(\d+)\]$|^file(\d*)$")


async def read_body(request: web.Request, *, file_size_limit: int) -> RequestBody:
    """Parse JSON or multipart (``payload_json`` + ``files[n]``), enforcing Discord's upload limits."""
    content_type = request.content_type
    if content_type.startswith("multipart/"):
        reader = await request.multipart()
        payload: dict[str, Any] = {}
        uploads: list[Upload] = []
        total = 0
        async for part in reader:
            name = part.name or ""  # type: ignore[union-attr]
            if name == "payload_json":
                payload = json.loads(await part.text())  # type: ignore[union-attr]
                continue
            match = _FILE_FIELD.match(name)
            if match is None:
                await part.read()  # type: ignore[union-attr]
                continue
            data = bytes(await part.read(decode=False))  # type: ignore[union-attr]
            total += len(data)
            if len(data) > file_size_limit or total > max(Limit.REQUEST_BYTES, file_size_limit):
                raise too_large()
            index = int(match.group(1) if match.group(1) is not None else (match.group(2) or 0))
            uploads.append(
                Upload(
                    field_index=index,
                    filename=part.filename or f"file{index}",  # type: ignore[union-attr]
                    data=data,
                    declared_content_type=part.headers.get("Content-Type"),  # type: ignore[union-attr]
                )
            )
        return RequestBody(payload=payload, uploads=uploads)
    raw = await request.read()
    if not raw:
        return RequestBody(payload={})
    try:
        payload = json.loads(raw)
    except ValueError:
        raise DiscordHTTPError(400, ErrorCode.GENERAL, "400: Bad Request") from None
    if not isinstance(payload, dict):
        return RequestBody(payload={"__list__": payload})
    return RequestBody(payload=payload)


def rate_limit_response(
    *,
    retry_after: float,
    is_global: bool,
    bucket: str,
    limit: int,
    scope: str,
    message: str = "You are being rate limited.",
    code: int | None = None,
) -> web.Response:
    """A 429 exactly as Discord sends it (with ``Via`` so discord.py retries instead of assuming a ban)."""
    headers = {
        "Via": "1.1 google",
        "Retry-After": str(max(1, int(retry_after + 0.999))),
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Bucket": bucket,
        "X-RateLimit-Scope": scope,
    }
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    body: dict[str, Any] = {"message": message, "retry_after": retry_after, "global": is_global}
    if code is not None:
        body["code"] = code
    return json_response(body, 429, headers)


@dataclass
class _Window:
    """One bucket's current window: when it opened and the requests it has taken."""

    opened: float
    taken: int = 0


class RateLimitBuckets:
    """Per-route buckets that emit Discord's ``X-RateLimit-*`` headers and enforce them.

    As Discord counts them (and discord.py expects): a bucket's first request opens a window of
    `period` seconds, each request takes one of its `limit` slots, and at the reset the header
    announces the whole bucket is free again. (A sliding window would free one slot at that time and
    answer the rest of a burst released then with 429s that Discord does not send.)
    """

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    @staticmethod
    def bucket_hash(route_key: str) -> str:
        return hashlib.sha1(route_key.encode()).hexdigest()[:16]

    def check(
        self, route_key: str, major: str, limit: int, period: float
    ) -> tuple[bool, dict[str, str], float]:
        """Record a request; returns (allowed, headers, retry_after)."""
        now = time.monotonic()
        key = f"{route_key}:{major}"
        window = self._windows.get(key)
        if window is None or now >= window.opened + period:
            window = self._windows[key] = _Window(opened=now)
        reset_after = window.opened + period - now
        if window.taken >= limit:
            return False, {}, max(reset_after, 0.001)
        window.taken += 1
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - window.taken),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": self.bucket_hash(route_key),
        }
        return True, headers, 0.0
