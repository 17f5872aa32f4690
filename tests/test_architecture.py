"""The shape of core/: who may import whom, no import cycles, no hidden imports inside functions.

Layers, bottom to top (a module may import from its own layer and the ones below it):
  base     core.paths, core.audio, core.metrics, core.pareto, core.data
  models   core.models.*          (one module per family; the SpeechModel interface)
  compress core.compress.*        (techniques, recipes, the registry, bit packing)
  io       core.io.*              (saved folders and the artifact format)
  deploy   core.deploy.*          (exports to other runtimes: CTranslate2, ONNX Runtime, whisper.cpp)
  measure  core.measure.*         (evaluate, store, sweeps, sensitivity, divergence)
  train    core.train.*           (distillation)
  jobs     core.jobs.*            (background jobs: the board, job kinds, the worker process)
  cli      core.cli.*, core.__main__
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"
LAYERS = ("base", "models", "compress", "io", "deploy", "measure", "train", "jobs", "cli")
LAZY_MARK = (
    "# lazy: --help"  # the one allowed reason for a core import inside a function (see core/cli/common.py)
)
FAMILY_ATTRIBUTES = re.compile(
    r"\.(proj_out|embed_tokens|embed_positions|encoder_attn|lm_head)\b|"
    r"\.model\.(encoder|decoder)\b|WhisperFor|ForCTC"
)


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS[1:]:
        return parts[1]
    return "cli" if parts[-1] == "__main__" else "base"


def imports(path: Path) -> list[tuple[str, ast.AST, bool]]:
    """(imported core module, node, at top level) for every `core` import of a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "core":
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "core"]
        known = [
            n
            for n in names
            if (CORE.parent / n.replace(".", "/")).with_suffix(".py").exists()
            or (CORE.parent / n.replace(".", "/") / "__init__.py").exists()
        ]
        found += [(n, node, id(node) in top) for n in known]
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): {name for name, _, _ in imports(p)} for p in CORE.rglob("*.py")}


def test_core_imports_form_no_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target == node or target == node.rpartition(".")[0]:
                continue  # a submodule's own package
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert len(edges) > 30  # the walk saw the whole package


def test_each_layer_imports_only_itself_and_below():
    wrong = []
    for source, targets in graph().items():
        for target in targets:
            if LAYERS.index(layer(target)) > LAYERS.index(layer(source)):
                wrong.append(f"{source} ({layer(source)}) imports {target} ({layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_core_imports_inside_functions_say_why():
    hidden = []
    for path in CORE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for name, node, top_level in imports(path):
            statement = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            if not top_level and LAZY_MARK not in statement:
                hidden.append(f"{path.relative_to(CORE.parent)}:{node.lineno} imports {name}")
    assert not hidden, "core imports inside functions without a reason:\n" + "\n".join(hidden)


def test_only_the_model_families_name_their_module_attributes():
    leaks = []
    for path in CORE.rglob("*.py"):
        if path.parent.name == "models":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if FAMILY_ATTRIBUTES.search(code) and not code.lstrip().startswith(('"', "'")):
                leaks.append(f"{path.relative_to(CORE.parent)}:{number}: {line.strip()}")
    assert not leaks, "model-family attributes named outside core/models:\n" + "\n".join(leaks)


def test_the_cli_builds_without_the_engine():
    import subprocess
    import sys

    code = (
        "import sys; from core.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'core.models') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=CORE.parent, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
