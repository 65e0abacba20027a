"""The line each benchmark target ends with, which tools read: `TARGET <name> measured=<x> target=<y> ok|short`."""

from __future__ import annotations


def target_line(name: str, measured: float, target: float, *, higher_is_better: bool) -> str:
    ok = measured >= target if higher_is_better else measured <= target
    return f"TARGET {name} measured={measured:.3f} target={target:g} {'ok' if ok else 'short'}"


def print_target_lines(lines: list[str]) -> int:
    """Print a benchmark's TARGET lines together at the end, after its tables; its exit status (0)."""
    print()
    for line in lines:
        print(line)
    return 0
