"""The package's import graph, computed with ast: no circle, and imports follow the data path
(formats in → layer deltas → transform → method → formats out) with at most 4 exceptions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "wavecompress"

# Layers, lowest first: a module may import its own layer or lower ones. Readers (deltas) never
# import methods or writers; transforms never import methods; writers (formats) come after methods.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "layout", "version", "hardware", "units", "text_safety", "progress"),  # leaves: errors, on-disk names,
    # devices, size units, escaping, progress lines
    ("transforms",),  # wavelets, PEFT geometry, reordering: pure maths
    ("deltas", "hub"),  # readers (hub: downloads for the readers, uploads of finished folders)
    ("methods",),  # compression methods, budgets, allocation
    ("report",),
    ("formats", "kernels", "output_guard"),  # writers; fused kernels; the guard every writer goes through
    ("compressed_adapter", "calibration", "pipeline", "equal_bytes", "auto_select", "compress", "targets", "plan", "analyze",
     "export", "batch", "finetune", "diffusion", "peft_integration"),  # the pipeline and its users
    ("cli", "integrations", "__init__"),  # integrations: callbacks for training libraries (library users)
]
MAX_AGAINST_LAYERING = 4


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _typing_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (no runtime edge)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines.update(inner.lineno for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom)))
    return lines


def import_graph() -> dict[str, set[str]]:
    """{module: modules of the package it imports at run time (lazy imports included)}."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = _typing_only(tree)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in typing_only:
                continue
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                candidates = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else module for alias in node.names]
            for target in candidates:
                while target not in files and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in files and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module}: not in any layer of tests/test_architecture.py LAYERS")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary circle found by depth-first search (one per back edge)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def against_layering(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_the_import_graph_has_no_circle() -> None:
    assert cycles(import_graph()) == []


def test_at_most_four_imports_run_against_the_layering() -> None:
    wrong = against_layering(import_graph())
    assert len(wrong) <= MAX_AGAINST_LAYERING, "\n".join(wrong)


def test_readers_and_transforms_never_import_methods_or_writers() -> None:
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith(("wavecompress.deltas", "wavecompress.transforms")):
            bad = [t for t in targets if t.startswith(("wavecompress.methods", "wavecompress.formats"))]
            assert not bad, f"{module} imports {bad}"


def test_the_graph_is_computed_from_real_imports() -> None:
    graph = import_graph()  # guards the test itself: known edges are found, typing-only ones are not
    assert "wavecompress.methods.registry" in graph["wavecompress.methods.waveft_topk"]
    assert "wavecompress.pipeline" in graph["wavecompress.compress"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
