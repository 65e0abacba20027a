"""The text helpers every reply goes through: Discord's limits kept, members' text escaped."""

from __future__ import annotations

import discord

from bot.replies import clip_text, escape_member_text, fit_embed, join_lines_within


def test_a_masked_link_and_mentions_in_a_prompt_are_escaped_and_still_read_as_typed() -> None:
    typed = "[free nitro](https://evil.example) <@123456789012345678> @everyone # big\n**bold**"
    shown = escape_member_text(typed)
    assert "[free nitro](" not in shown and "<@" not in shown and "\n" not in shown
    assert shown.replace("\\", "") == typed.replace("\n", " ")


def test_a_cut_never_ends_on_an_escaping_backslash() -> None:
    shown = escape_member_text("a" * 9 + "[" * 10)
    for limit in range(2, len(shown)):
        cut = clip_text(shown, limit)
        assert len(cut) <= limit and cut.endswith("…")
        body = cut[:-1]
        assert (len(body) - len(body.rstrip("\\"))) % 2 == 0


def test_lines_that_do_not_fit_are_counted_not_lost() -> None:
    lines = [f"line {index} " + "x" * 180 for index in range(30)]
    text = join_lines_within(lines, 2000, hidden=5)
    assert len(text) <= 2000
    shown = text.count("\n")  # every kept line, then the note
    assert text.endswith(f"… and {30 - shown + 5} more.")
    assert join_lines_within(["short"], 2000) == "short"


def test_an_embed_over_every_limit_is_brought_within_them() -> None:
    embed = discord.Embed(title="t" * 1000, description="d" * 9000)
    for index in range(30):
        embed.add_field(name=f"n{index}" * 200, value="v" * 3000)
    embed.set_footer(text="f" * 3000)
    embed.set_author(name="a" * 500)
    fit_embed(embed)
    assert len(embed.title or "") <= 256 and len(embed.description or "") <= 4096
    assert len(embed.fields) <= 25 and len(embed) <= 6000
    assert all(len(f.name or "") <= 256 and len(f.value or "") <= 1024 for f in embed.fields)
    assert len(embed.footer.text or "") <= 2048 and len(embed.author.name or "") <= 256
    assert embed.fields and embed.footer.text  # the facts survive; the long prose gives way
