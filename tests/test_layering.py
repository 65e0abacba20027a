"""The project's layers, checked over every module: what each may import, and no import cycles.

- The bot process stays light: `bot/`, `cogs/` and every module of `inference/` outside the engine
  and the checkpoint loaders load without torch, and without ray unless the Ray back end is chosen.
- `inference/` is the bot's library, never the other way round: it imports neither discord nor the
  bot's packages.
- No import cycle among the project's modules, counting the imports made only for type checking
  (`if TYPE_CHECKING:`) and those made inside functions.
- No class over 400 lines: one that grows past it is split along its jobs.

Modules are found on disk, so a new module is covered the day it is added.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "cogs", "inference")
# The modules that need torch: the engine, loading or making checkpoints, and what the workers' fork
# server preloads (never imported by the bot: its fork server names it).
TORCH_MODULES = (
    "inference.backends.worker_preload",
    "inference.engine.",
    "inference.checkpoints.convert",
    "inference.checkpoints.loading",
    "inference.checkpoints.random_models",
)
# The Ray back end needs the optional `ray` extra.
RAY_MODULES = ("inference.backends.ray",)


@cache
def project_modules() -> dict[str, Path]:
    """Every module of the project's packages by dotted name (a package by its `__init__.py`)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix.rstrip(".") or name.startswith(prefix.rstrip(".") + ".") for prefix in prefixes)


def _needs_torch(name: str) -> bool:
    return any(
        name.startswith(prefix) if prefix.endswith(".") else name == prefix for prefix in TORCH_MODULES
    )


# Run in a fresh interpreter: import the groups in order, and say after each which heavy packages
# are loaded; then build the back end the bot's default config names, and the Ray one where Ray is.
STAGES_SCRIPT = """
import importlib, json, sys
groups = json.loads(sys.argv[1])
heavy = ("torch", "ray", "discord")
loaded = {}
for stage in ("inference", "bot"):
    for name in groups[stage]:
        importlib.import_module(name)
    loaded[stage] = [package for package in heavy if package in sys.modules]

from bot.app import MusicGenBot
from bot.config import BotConfig, WorkerOptions

local = MusicGenBot(BotConfig())._inference_backend()
loaded["local back end"] = [package for package in heavy if package in sys.modules]
loaded["local class"] = type(local).__name__
if groups["ray"]:
    for name in groups["ray"]:
        importlib.import_module(name)
    remote = MusicGenBot(BotConfig(worker=WorkerOptions(backend="ray")))._inference_backend()
    loaded["ray back end"] = [package for package in heavy if package in sys.modules]
    loaded["ray class"] = type(remote).__name__
print(json.dumps(loaded))
"""


def test_the_bot_and_inference_outside_the_engine_load_without_torch_and_inference_without_discord() -> None:
    torch_free = [name for name in project_modules() if not _needs_torch(name)]
    groups = {
        "inference": [n for n in torch_free if n.startswith("inference") and not _is_under(n, RAY_MODULES)],
        "bot": [n for n in torch_free if n.split(".")[0] in ("bot", "cogs")],
        "ray": [n for n in torch_free if _is_under(n, RAY_MODULES)]
        if importlib.util.find_spec("ray")
        else [],
    }
    completed = subprocess.run(
        [sys.executable, "-c", STAGES_SCRIPT, json.dumps(groups)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    loaded = json.loads(completed.stdout.splitlines()[-1])
    assert loaded["inference"] == [], f"inference outside the engine and Ray loaded {loaded['inference']}"
    assert loaded["bot"] == ["discord"], f"the bot and its cogs loaded {loaded['bot']}"
    assert loaded["local class"] == "InferenceClient"
    assert loaded["local back end"] == ["discord"], "the local back end loaded more than the bot"
    if groups["ray"]:
        assert loaded["ray class"] == "RayInferenceClient"
        assert loaded["ray back end"] == ["ray", "discord"], "the Ray back end loaded torch"


def imports_of(name: str) -> Iterator[tuple[str, int]]:
    """(imported name, line) for every import statement of a module, wherever it stands (at the top,
    under `if TYPE_CHECKING:`, inside a function); `from a import b` names `a.b`, relative ones resolved."""
    path = project_modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def _project_module(imported: str) -> str | None:
    """The project module an imported name stands for (the longest that exists), None outside."""
    while imported and imported not in project_modules():
        imported = imported.rpartition(".")[0]
    return imported or None


def test_inference_imports_neither_discord_nor_the_bot() -> None:
    forbidden = [
        f"{name}:{line} imports {imported}"
        for name in project_modules()
        if name.startswith("inference")
        for imported, line in imports_of(name)
        if imported.split(".")[0] in ("discord", "bot", "cogs")
    ]
    assert forbidden == []


def import_cycles() -> list[set[str]]:
    """The groups of project modules that import each other, directly or not (Tarjan's strongly
    connected components of the import graph, groups of two or more)."""
    graph = {
        name: {
            target
            for imported, _ in imports_of(name)
            if (target := _project_module(imported)) is not None and target != name
        }
        for name in project_modules()
    }
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                lowest[module] = min(lowest[module], lowest[target])
            elif target in stack:
                lowest[module] = min(lowest[module], index[target])
        if lowest[module] == index[module]:
            group: set[str] = set()
            while not group or module not in group:
                group.add(stack.pop())
            if len(group) > 1:
                cycles.append(group)

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycle() -> None:
    cycles = [sorted(cycle) for cycle in import_cycles()]
    assert cycles == [], f"modules that import each other: {cycles}"


MOST_CLASS_LINES = 400


def test_no_class_is_over_400_lines() -> None:
    too_long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, path in project_modules().items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None
        if node.end_lineno - node.lineno + 1 > MOST_CLASS_LINES
    ]
    assert too_long == [], f"split these classes along their jobs: {too_long}"
