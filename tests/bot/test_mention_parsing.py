"""What a member types after mentioning the bot: the seconds, when typed unambiguously, and the prompt.

The prompt is every word typed but the duration, as typed: decades, plurals and lengths inside a
description ("80s synthwave", "808s", "1 sec of silence") are the member's words, not seconds.
"""

from __future__ import annotations

import pytest

from bot.continuation import DEFAULT_NEW_SECONDS, parse_mention_request, parse_seconds
from inference.request import DEFAULT_MAX_DURATION_S, RequestError

BOT_ID = 4242
AT_BOT = f"<@{BOT_ID}>"

# (what the member typed after the mention, the prompt the job gets, the seconds it asked for)
MENTIONS: list[tuple[str, str | None, int | None]] = [
    # decades and plurals are descriptions
    ("80s synthwave", "80s synthwave", None),
    ("90s hip hop beat", "90s hip hop beat", None),
    ("20s jazz with brass", "20s jazz with brass", None),
    ("30s swing band", "30s swing band", None),
    ("1980s disco", "1980s disco", None),
    ("disco from the 1970s", "disco from the 1970s", None),
    ("jazz like the 20s", "jazz like the 20s", None),
    ("808s and claps", "808s and claps", None),
    ("spin old 45s", "spin old 45s", None),
    ("80's funk", "80's funk", None),
    # a length inside the description
    ("1 sec of silence", "1 sec of silence", None),
    ("10 seconds of rain then thunder", "10 seconds of rain then thunder", None),
    ("5s of vinyl crackle", "5s of vinyl crackle", None),
    ("a 2 second pause every bar", "a 2 second pause every bar", None),
    ("add brass 12s then drums", "add brass 12s then drums", None),
    # the seconds, first or last
    ("12s add brass", "add brass", 12),
    ("add brass 12s", "add brass", 12),
    ("12 s add brass and drums", "add brass and drums", 12),
    ("12 sec add brass", "add brass", 12),
    ("12 secs add brass", "add brass", 12),
    ("12 second add brass", "add brass", 12),
    ("12 seconds add brass", "add brass", 12),
    ("4s shaker on top", "shaker on top", 4),
    ("add brass, 12 seconds", "add brass", 12),
    ("add brass for 12 seconds.", "add brass for", 12),
    ("12s: add brass", "add brass", 12),
    ("12s - add brass", "add brass", 12),
    ("12S Add Brass", "Add Brass", 12),
    ("20 sec 80s synthwave", "80s synthwave", 20),
    ("80s synthwave, 20 seconds", "80s synthwave", 20),
    ("20s jazz 7s", "20s jazz", 7),
    ("10 seconds", None, 10),
    ("30 sec", None, 30),
    ("1 second", None, 1),
    ("5s", None, 5),
    # a multiple of ten with `s` alone is a decade, even alone: `sec` or `seconds` says seconds
    ("10s", "10s", None),
    ("20s add brass", "20s add brass", None),
    # nothing but the prompt
    ("add brass and drums", "add brass and drums", None),
    ("take   it\nslower", "take it slower", None),
    ("", None, None),
    ("<@777> wants brass 12s", "<@777> wants brass", 12),
]


@pytest.mark.parametrize(("typed", "prompt", "seconds"), MENTIONS, ids=[typed for typed, *_ in MENTIONS])
def test_a_member_mentioning_the_bot_gets_every_word_but_the_duration_as_the_prompt(
    typed: str, prompt: str | None, seconds: int | None
) -> None:
    wanted = parse_mention_request(f"{AT_BOT} {typed}", BOT_ID)
    assert (wanted.prompt, wanted.seconds) == (prompt, seconds)


@pytest.mark.parametrize(
    ("content", "prompt", "seconds"),
    [(f"{typed} {AT_BOT}", "add brass", 12) for typed in ("add brass 12s", "12s add brass")]
    + [
        (f"nice! {AT_BOT} 12s add brass", "nice! add brass", 12),
        (f"80s synthwave <@!{BOT_ID}>", "80s synthwave", None),
        (f"{AT_BOT}12s add brass", "add brass", 12),
    ],
)
def test_the_mention_may_stand_anywhere_and_the_duration_next_to_it(
    content: str, prompt: str, seconds: int | None
) -> None:
    wanted = parse_mention_request(content, BOT_ID)
    assert (wanted.prompt, wanted.seconds) == (prompt, seconds)


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        ("145 seconds add brass", f"between 1 and {DEFAULT_MAX_DURATION_S} (got 145)"),
        ("add brass 0 sec", f"between 1 and {DEFAULT_MAX_DURATION_S} (got 0)"),
        ("12.5s add brass", "whole number"),
        ("12s add brass 5 seconds", "Type the seconds once"),
    ],
)
def test_a_member_asking_for_seconds_the_bot_cannot_make_is_told_why(typed: str, says: str) -> None:
    with pytest.raises(RequestError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_mention_request(f"{AT_BOT} {typed}", BOT_ID)


def test_a_mention_without_seconds_leaves_the_default_to_the_caller() -> None:
    assert parse_mention_request(f"{AT_BOT} 80s synthwave", BOT_ID).seconds_or(6) == 6
    assert parse_mention_request(f"{AT_BOT} 12s synthwave", BOT_ID).seconds_or(6) == 12


@pytest.mark.parametrize(
    ("typed", "seconds"),
    [("", DEFAULT_NEW_SECONDS), ("8", 8), ("8s", 8), ("8 s", 8), ("12 sec", 12), ("12 secs", 12),
     ("1 second", 1), ("20 seconds", 20), ("20S", 20)],
)  # fmt: skip
def test_the_forms_seconds_field_takes_the_same_units(typed: str, seconds: int) -> None:
    assert parse_seconds(typed) == seconds


@pytest.mark.parametrize("typed", ["180s", "145 seconds", "0", "8.5", "eight"])
def test_the_forms_seconds_field_refuses_what_is_not_a_whole_number_from_1_to_the_limit(typed: str) -> None:
    with pytest.raises(RequestError):
        parse_seconds(typed)


def test_seconds_past_the_models_30_s_are_taken_up_to_the_configured_limit() -> None:
    # Past the model's window a piece is made window by window: "45 sec" asks for 45 s ("45s" alone
    # stays a plural, as in "spin old 45s").
    wanted = parse_mention_request(f"{AT_BOT} 45 sec add brass", BOT_ID)
    assert (wanted.prompt, wanted.seconds) == ("add brass", 45)
    assert parse_mention_request(f"{AT_BOT} add brass 120 seconds", BOT_ID).seconds == 120
    assert parse_seconds("45 seconds") == 45 and parse_seconds("45s") == 45
    with pytest.raises(RequestError, match=r"between 1 and 40 \(got 45\)"):
        parse_seconds("45", max_seconds=40)
    with pytest.raises(RequestError, match=r"between 1 and 40 \(got 45\)"):
        parse_mention_request(f"{AT_BOT} 45 seconds add brass", BOT_ID, max_seconds=40)
    with pytest.raises(RequestError, match=r"between 1 and 120 \(got 121\)"):
        parse_mention_request(f"{AT_BOT} 121 sec add brass", BOT_ID)
