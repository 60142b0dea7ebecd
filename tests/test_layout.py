"""The package's layout stays true: folders name the stages of the pipeline, each imports only the
stages below it, and nothing imports in a circle (module-level and function-level imports alike:
a function-level import is still a dependency, only a later one). Parsed with ``ast``, nothing is
imported, so the test costs milliseconds."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "classifine"
# lowest first: a module may import its own stage and the stages before it, never one after
ORDER = ["errors", "core", "scoring", "generative", "methods", "predict", "deploy", "evaluation", "serve", "training",
         "annotation", "auto", "cli", "__main__", "__init__"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stage(module: str) -> str:
    """``classifine.core.task`` -> ``core``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, source: str | None = None) -> set[str]:
    """Every classifine module that ``path`` (or ``source``, as if it were at ``path``) imports, at
    any depth of the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "classifine"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "classifine":
                continue
            # `from . import sft` names a module; `from .task import TaskSpec` names an attribute
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return {m for m in found if m != name}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_belongs_to_a_known_stage():
    unknown = sorted({stage(m) for m in graph()} - set(ORDER))
    assert not unknown, f"add these to ORDER (and to docs/DESIGN-NOTES.md): {unknown}"


def test_imports_point_down_the_pipeline():
    wrong = [f"{src} imports {dst} ({stage(dst)} comes after {stage(src)})"
             for src, targets in graph().items() for dst in sorted(targets)
             if ORDER.index(stage(dst)) > ORDER.index(stage(src))]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source,expected", [
    ("from ..core.task import TaskSpec\nfrom . import sft\n", {"classifine.core.task", "classifine.methods.sft"}),
    ("def f():\n    from ..predict.predictor import Predictor\n", {"classifine.predict.predictor"}),
])
def test_the_parser_sees_relative_and_function_level_imports(source, expected):
    assert imports(PACKAGE / "methods" / "probe.py", source) == expected


def test_a_wrong_way_import_is_caught():
    src = "classifine.core.models"
    bad = imports(PACKAGE / "core" / "models.py", "def f():\n    from ..predict.predictor import Predictor\n")
    assert [d for d in bad if ORDER.index(stage(d)) > ORDER.index(stage(src))] == ["classifine.predict.predictor"]
