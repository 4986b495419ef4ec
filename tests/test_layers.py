"""Imports point one way: nano (model, formats) <- distill, quantize, export <- the CLI and the
runtime harness <- experiment scripts. Read from the source (every import, lazy ones included),
so an upward import or a cycle fails here, and the README's import list is this graph."""

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nano", "distill", "quantize", "export", "benchmarks")

# Layer of a module: the longest prefix listed here. Each layer may import the layers it names.
LAYERS = {
    "nano": (),
    "distill": ("nano",),
    "quantize": ("nano",),
    "export": ("nano",),
    "benchmarks.harness": ("nano", "export"),
    "nano.cli": ("nano", "distill", "quantize", "export", "benchmarks.harness"),
    "benchmarks": ("nano", "distill", "quantize", "export", "benchmarks.harness"),
}
ORDER = ("nano", "distill", "quantize", "export", "benchmarks.harness", "nano.cli", "benchmarks")
README_START, README_END = "<!-- import graph: tests/test_layers.py -->", "<!-- end import graph -->"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    return max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)


def project_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (at top level or inside functions)."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # `import a.b.c` of a package attribute: its module
                    t = t.rpartition(".")[0]
                if t and t != name and t.split(".")[0] in PACKAGES:
                    graph[name].add(t)
    return graph


def layer_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {layer: set() for layer in ORDER}
    for src, dsts in graph.items():
        for dst in dsts:
            if layer_of(dst) != layer_of(src):
                out[layer_of(src)].add(layer_of(dst))
    return out


def render(layers: dict[str, set[str]]) -> str:
    lines = []
    for layer in ORDER:
        deps = [d for d in ORDER if d in layers[layer]]
        lines.append(f"- `{layer}` → {', '.join(f'`{d}`' for d in deps) if deps else 'nothing of ours'}")
    return "\n".join(lines)


def test_no_upward_import():
    bad = [f"{src} imports {dst}" for src, dsts in sorted(project_imports().items()) for dst in sorted(dsts)
           if layer_of(dst) != layer_of(src) and layer_of(dst) not in LAYERS[layer_of(src)]]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph = project_imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_layer_finder_sees_known_edges():
    """The parser is not vacuous: it finds imports we know exist, lazy and relative ones too."""
    graph = project_imports()
    assert "nano.model" in graph["nano.checkpoint"]
    assert "quantize.gptq" in graph["quantize.pipeline"]  # relative
    assert "benchmarks.harness.run" in graph["nano.cli"]  # inside a function
    assert layer_of("benchmarks.harness.run") == "benchmarks.harness" and layer_of("benchmarks.quantize") == "benchmarks"
    assert layer_of("nano.cli") == "nano.cli" and layer_of("nano.qtensor") == "nano"


def test_readme_import_graph_is_current():
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(README_START) + r"\n(.*?)\n" + re.escape(README_END), text, re.S)
    assert match, f"README.md lacks the import graph between {README_START} and {README_END}"
    want = render(layer_graph(project_imports()))
    assert match.group(1).strip() == want, f"README.md's import graph is stale; replace it with:\n{want}"
