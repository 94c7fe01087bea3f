"""The package's shape: stages over libraries over leaves, read from the source with `ast`.

- every `foldblend <command>` is one module under stages/ with `add_arguments` and `run`;
- a stage never imports another stage (a helper module of stages, named `_*.py`, is allowed);
- imports point down the layers only, and there is no import cycle;
- `from foldblend ...` imports sit at module top (only optional heavy libraries load inside functions);
- argparse only in cli.py and stages/;
- no module over 400 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from foldblend import cli

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "foldblend"
MAX_LINES = 400

# lowest first; a module may import its own package or anything of a lower rank
RANK = {
    "errors": 0, "safety": 0, "paths": 0, "artifacts": 0, "locks": 0, "metrics": 0, "pretrained": 0, "durations": 0,
    "cpu": 0,
    "config": 1,
    "data": 2,
    "members": 3, "ensemble": 3, "submission": 3,
    "running": 4, "scanning": 4, "planning": 4,
    "inference": 5,
    "reporting": 6,
    "serve": 7,
    "stages": 8,
    "cli": 9,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """`foldblend.x.y.z` -> the module `x.y.z` (or its package `x.y` when z is a name inside it)."""
    if not name.startswith("foldblend"):
        return None
    parts = name.split(".")[1:]
    while parts and ".".join(parts) not in MODULES:
        parts = parts[:-1]
    return ".".join(parts) if parts else None


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported project module, at module top) for every import of `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            target = _target(name)
            if target:
                out.append((target, id(node) in top))
    return out


GRAPH = {name: {t for t, _ in _imports(path) if t and t != name} for name, path in MODULES.items()}


def _rank(module: str) -> int:
    return RANK[module.split(".")[0]]


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m and m.split(".")[0] not in RANK] == []


def test_every_command_is_one_stage_module():
    stages = {m.split(".")[1] for m in MODULES if m.startswith("stages.") and not m.split(".")[1].startswith("_")}
    assert stages == set(cli.STAGES)
    for name in cli.STAGES:
        tree = ast.parse(MODULES[f"stages.{name}"].read_text(encoding="utf-8"))
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"add_arguments", "run"} <= functions, name


def test_imports_point_down_only():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
              if a and b and _rank(b) > _rank(a)]
    assert upward == []


def test_no_stage_imports_another():
    crossing = [f"{a} -> {b}" for a, targets in GRAPH.items() if a.startswith("stages.") for b in targets
                if b.startswith("stages.") and not b.split(".")[1].startswith("_")]
    assert crossing == []


def test_no_import_cycle():
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt])
                return True
            if nxt not in state and visit(nxt, trail + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(GRAPH):
        if module not in state and visit(module, []):
            break
    assert cycle == []


def test_project_imports_at_module_top():
    inside = [f"{name} imports {t} inside a function" for name, path in MODULES.items()
              for t, at_top in _imports(path) if not at_top]
    assert inside == []


def test_argparse_only_in_cli_and_stages():
    users = [name for name, path in MODULES.items()
             if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "argparse" in
                    ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""])
                    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))]
    assert [u for u in users if u != "cli" and not u.startswith("stages.")] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(PACKAGE)} has {lines} lines: split it along a seam"
