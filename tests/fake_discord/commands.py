"""Application commands: validating registrations like Discord's API, invocations like Discord's client."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from .constants import ChannelType, CommandType, Limit, OptionType, Permission
from .models import FakeAttachment, FakeChannel, FakeMember, FakeRole, FakeUser

_NAME_PATTERN = re.compile(r"^[-_\w]{1,32}$", re.UNICODE)
_VALUE_OPTION_TYPES = {
    OptionType.STRING,
    OptionType.INTEGER,
    OptionType.BOOLEAN,
    OptionType.USER,
    OptionType.CHANNEL,
    OptionType.ROLE,
    OptionType.MENTIONABLE,
    OptionType.NUMBER,
    OptionType.ATTACHMENT,
}
# Discord's integer and number options are limited to what a JavaScript double represents exactly.
_MAX_SAFE_INTEGER = 2**53


class FakeDiscordValidationError(ValueError):
    """The Discord client would refuse to send this invocation (what a member sees in the command bar)."""


class CommandSchemaError(ValueError):
    """A command registration Discord's API rejects; carries the nested 50035 ``errors`` object."""

    def __init__(self, errors: dict[str, Any]):
        super().__init__(str(errors))
        self.errors = errors


@dataclass(eq=False)
class RegisteredCommand:
    """A command the bot registered, as Discord stores it."""

    id: int
    application_id: int
    guild_id: int | None
    payload: dict[str, Any]
    version: int

    @property
    def name(self) -> str:
        return self.payload["name"]

    @property
    def type(self) -> int:
        return self.payload.get("type", CommandType.CHAT_INPUT)

    def to_payload(self) -> dict[str, Any]:
        body = {
            "id": str(self.id),
            "application_id": str(self.application_id),
            "version": str(self.version),
            "type": self.type,
            "name": self.name,
            "name_localizations": self.payload.get("name_localizations"),
            "description": self.payload.get("description", ""),
            "description_localizations": self.payload.get("description_localizations"),
            "default_member_permissions": self.payload.get("default_member_permissions"),
            "dm_permission": self.payload.get("dm_permission", True),
            "contexts": self.payload.get("contexts"),
            "integration_types": self.payload.get("integration_types", [0]),
            "nsfw": self.payload.get("nsfw", False),
            "options": self.payload.get("options", []),
        }
        if self.guild_id is not None:
            body["guild_id"] = str(self.guild_id)
        return body


def _error(code: str, message: str) -> dict[str, Any]:
    return {"_errors": [{"code": code, "message": message}]}


def _check_option(option: dict[str, Any], path: dict[str, Any], *, depth: int) -> None:
    errors: dict[str, Any] = {}
    name = option.get("name", "")
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or name != name.lower():
        errors["name"] = _error("APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
    description = option.get("description", "")
    if not 1 <= len(description or "") <= 100:
        errors["description"] = _error("BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    option_type = option.get("type")
    if option_type not in _VALUE_OPTION_TYPES | {OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP}:
        errors["type"] = _error("BASE_TYPE_CHOICES", f"Value must be one of {sorted(_VALUE_OPTION_TYPES)}.")
    choices = option.get("choices") or []
    if len(choices) > Limit.CHOICES_PER_OPTION:
        errors["choices"] = _error("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    else:
        for index, choice in enumerate(choices):
            choice_errors: dict[str, Any] = {}
            if not 1 <= len(choice.get("name", "")) <= 100:
                choice_errors["name"] = _error("BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
            value = choice.get("value")
            if option_type == OptionType.STRING and (not isinstance(value, str) or len(value) > 100):
                choice_errors["value"] = _error(
                    "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
            if option_type in (OptionType.INTEGER, OptionType.NUMBER) and not isinstance(value, (int, float)):
                choice_errors["value"] = _error("NUMBER_TYPE_COERCE", "Value is not a number.")
            if choice_errors:
                errors.setdefault("choices", {})[str(index)] = choice_errors
    if choices and option.get("autocomplete"):
        errors["autocomplete"] = _error(
            "APPLICATION_COMMAND_OPTION_CHOICES_AND_AUTOCOMPLETE", "Autocomplete cannot be used with choices"
        )
    if option_type in (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP):
        if depth >= 2:
            errors["type"] = _error(
                "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID", "Sub-command groups can only be one level deep."
            )
        _check_options(option.get("options") or [], errors, depth=depth + 1)
    if errors:
        path.update(errors)


def _check_options(options: list[dict[str, Any]], errors: dict[str, Any], *, depth: int) -> None:
    option_errors: dict[str, Any] = {}
    if len(options) > Limit.OPTIONS_PER_COMMAND:
        errors["options"] = _error("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        return
    seen_optional = False
    names: set[str] = set()
    for index, option in enumerate(options):
        path: dict[str, Any] = {}
        _check_option(option, path, depth=depth)
        if option.get("type") in _VALUE_OPTION_TYPES:
            if option.get("required"):
                if seen_optional:
                    path["required"] = _error(
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True
        if option.get("name") in names:
            path["name"] = _error(
                "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Option names must be unique"
            )
        names.add(option.get("name", ""))
        if path:
            option_errors[str(index)] = path
    if option_errors:
        errors["options"] = option_errors


def check_command_payloads(commands: list[dict[str, Any]], *, is_global: bool) -> None:
    """Raise CommandSchemaError the way Discord answers an invalid bulk overwrite (50035)."""
    errors: dict[str, Any] = {}
    counts = {CommandType.CHAT_INPUT: 0, CommandType.USER: 0, CommandType.MESSAGE: 0}
    seen: set[tuple[str, int]] = set()
    for index, command in enumerate(commands):
        path: dict[str, Any] = {}
        command_type = command.get("type", CommandType.CHAT_INPUT)
        name = command.get("name", "")
        if command_type == CommandType.CHAT_INPUT:
            if not isinstance(name, str) or not _NAME_PATTERN.match(name) or name != name.lower():
                path["name"] = _error("APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
            if not 1 <= len(command.get("description") or "") <= 100:
                path["description"] = _error("BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
            _check_options(command.get("options") or [], path, depth=0)
        elif command_type in (CommandType.USER, CommandType.MESSAGE):
            if not 1 <= len(name) <= 32:
                path["name"] = _error("BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
            if command.get("options"):
                path["options"] = _error(
                    "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID", "Context menu commands cannot have options"
                )
        else:
            path["type"] = _error("BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3}.")
        if (name, command_type) in seen:
            path["name"] = _error(
                "APPLICATION_COMMANDS_DUPLICATE_NAME", f"Application command names must be unique: {name}"
            )
        seen.add((name, command_type))
        if command_type in counts:
            counts[command_type] += 1
        if path:
            errors[str(index)] = path
    if counts[CommandType.CHAT_INPUT] > Limit.GLOBAL_SLASH_COMMANDS:
        errors["_errors"] = [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 100 or fewer in length."}]
    if (
        counts[CommandType.MESSAGE] > Limit.MESSAGE_CONTEXT_COMMANDS
        or counts[CommandType.USER] > Limit.USER_CONTEXT_COMMANDS
    ):
        errors["_errors"] = [
            {"code": "APPLICATION_COMMAND_TOO_MANY", "message": "Too many context menu commands."}
        ]
    if errors:
        raise CommandSchemaError(errors)


@dataclass
class BuiltOptions:
    """The ``options`` and ``resolved`` parts of an invocation, ready for the interaction payload."""

    options: list[dict[str, Any]]
    resolved: dict[str, dict[str, Any]] = field(default_factory=dict)
    attachments: list[FakeAttachment] = field(default_factory=list)


def member_can_see(command: RegisteredCommand, member: FakeMember) -> bool:
    """Discord hides a command from members lacking its ``default_member_permissions``, unless the
    server's admins allowed that member (or one of its roles) to use it."""
    required = command.payload.get("default_member_permissions")
    if required is None:
        return True
    allowed = member.guild.command_overrides.get(command.name, set())
    if member.id in allowed or any(role.id in allowed for role in member.roles):
        return True
    required_bits = int(required)
    permissions = member.permissions
    if permissions & Permission.ADMINISTRATOR:
        return True
    return required_bits != 0 and permissions & required_bits == required_bits


def build_invocation(
    command: RegisteredCommand,
    path: list[str],
    values: dict[str, Any],
    *,
    guild_members: dict[int, FakeMember],
    channel_permissions: Any,
    attachment_size_limit: int,
) -> BuiltOptions:
    """Check ``values`` against the command's options like the Discord client and build the payload."""
    schema_options: list[dict[str, Any]] = command.payload.get("options") or []
    built = BuiltOptions(options=[])
    container = built.options
    walked = [command.name]
    for part in path:
        match = next(
            (
                o
                for o in schema_options
                if o.get("name") == part
                and o.get("type") in (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP)
            ),
            None,
        )
        if match is None:
            raise FakeDiscordValidationError(f"/{' '.join(walked)} has no sub-command {part!r}")
        walked.append(part)
        node: dict[str, Any] = {"name": part, "type": match["type"], "options": []}
        container.append(node)
        container = node["options"]
        schema_options = match.get("options") or []
    if any(o.get("type") in (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP) for o in schema_options):
        raise FakeDiscordValidationError(f"/{' '.join(walked)} needs a sub-command")

    by_name = {o["name"]: o for o in schema_options}
    for name in values:
        if name not in by_name:
            raise FakeDiscordValidationError(
                f"/{' '.join(walked)} has no option {name!r} (options: {sorted(by_name)})"
            )
    for option in schema_options:
        name = option["name"]
        if name not in values or values[name] is None:
            if option.get("required"):
                raise FakeDiscordValidationError(
                    f"/{' '.join(walked)}: the required option {name!r} is missing"
                )
            continue
        value = _coerce_value(
            option, values[name], built, guild_members, channel_permissions, attachment_size_limit
        )
        container.append({"name": name, "type": option["type"], "value": value})
    return built


def _coerce_value(
    option: dict[str, Any],
    value: Any,
    built: BuiltOptions,
    guild_members: dict[int, FakeMember],
    channel_permissions: Any,
    attachment_size_limit: int,
) -> Any:
    name = option["name"]
    option_type = option["type"]

    def refuse(reason: str) -> FakeDiscordValidationError:
        return FakeDiscordValidationError(f"option {name!r}: {reason} (got {value!r})")

    if option.get("choices"):
        choices = option["choices"]
        for choice in choices:
            if choice["value"] == value and type(choice["value"]) is type(value):
                return value
        for choice in choices:  # the member picked the entry by its displayed name
            if choice["name"] == value:
                return choice["value"]
        raise refuse(f"not one of the choices {[c['name'] for c in choices]}")

    if option_type == OptionType.STRING:
        if not isinstance(value, str):
            raise refuse("must be text")
        if not value.strip():
            raise refuse("cannot be empty")
        if "min_length" in option and len(value) < option["min_length"]:
            raise refuse(f"must be at least {option['min_length']} characters")
        if len(value) > option.get("max_length", 6000):
            raise refuse(f"must be at most {option.get('max_length', 6000)} characters")
        return value
    if option_type in (OptionType.INTEGER, OptionType.NUMBER):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refuse("must be a number")
        if not math.isfinite(value):  # the client cannot type NaN or infinity, nor can JSON carry them
            raise refuse("must be a number")
        if option_type == OptionType.INTEGER and isinstance(value, float):
            if not value.is_integer():
                raise refuse("must be a whole number")
            value = int(value)
        if abs(value) > _MAX_SAFE_INTEGER:
            raise refuse("is out of range")
        if "min_value" in option and option["min_value"] is not None and value < option["min_value"]:
            raise refuse(f"must be at least {option['min_value']}")
        if "max_value" in option and option["max_value"] is not None and value > option["max_value"]:
            raise refuse(f"must be at most {option['max_value']}")
        return value
    if option_type == OptionType.BOOLEAN:
        if not isinstance(value, bool):
            raise refuse("must be True or False")
        return value
    if option_type in (OptionType.USER, OptionType.MENTIONABLE) and isinstance(value, (FakeMember, FakeUser)):
        user = value.user if isinstance(value, FakeMember) else value
        built.resolved.setdefault("users", {})[str(user.id)] = user.to_payload()
        member = value if isinstance(value, FakeMember) else guild_members.get(user.id)
        if member is not None:
            built.resolved.setdefault("members", {})[str(user.id)] = member.to_payload(
                with_user=False, with_permissions=member.permissions
            )
        return str(user.id)
    if option_type in (OptionType.ROLE, OptionType.MENTIONABLE) and isinstance(value, FakeRole):
        built.resolved.setdefault("roles", {})[str(value.id)] = value.to_payload()
        return str(value.id)
    if option_type == OptionType.CHANNEL and isinstance(value, FakeChannel):
        allowed_types = option.get("channel_types")
        if allowed_types and value.type not in allowed_types:
            raise refuse(f"must be a channel of type {allowed_types}")
        resolved_channel = {
            "id": str(value.id),
            "name": value.name,
            "type": value.type,
            "permissions": str(channel_permissions(value)),
            "flags": 0,
        }
        if value.parent_id:
            resolved_channel["parent_id"] = str(value.parent_id)
        if value.type in ChannelType.THREADS:
            resolved_channel["thread_metadata"] = value.to_payload()["thread_metadata"]
        built.resolved.setdefault("channels", {})[str(value.id)] = resolved_channel
        return str(value.id)
    if option_type == OptionType.ATTACHMENT:
        if not isinstance(value, FakeAttachment):
            raise refuse("must be an attachment made with fake.add_attachment(...)")
        if value.size > attachment_size_limit:
            raise refuse(
                f"the file is larger than this server's upload limit ({attachment_size_limit} bytes)"
            )
        built.resolved.setdefault("attachments", {})[str(value.id)] = value.to_payload()
        built.attachments.append(value)
        return str(value.id)
    raise refuse(f"does not fit an option of type {option_type}")
