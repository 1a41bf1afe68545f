"""fuse3d must import (and run its CLI) without the viz stack; viz depends on fuse3d, never the reverse."""
import subprocess
import sys
from pathlib import Path

BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'plotly', 'pyvista', 'ipywidgets', 'vtk', 'viz', 'matplotlib', 'anywidget'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def test_fuse3d_imports_without_the_viz_stack():
    code = BLOCK + "import fuse3d, fuse3d.pipeline, fuse3d.assets, fuse3d.cli, fuse3d.data, fuse3d.train.train; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_fuse3d_sources_never_import_viz():
    root = Path(__file__).resolve().parents[1] / "fuse3d"
    offenders = [str(p) for p in root.rglob("*.py")
                 if any(line.strip().startswith(("import viz", "from viz")) for line in p.read_text().splitlines())]
    assert offenders == []


ROOT = Path(__file__).resolve().parents[1]


def import_graph(package: str = "fuse3d") -> dict:
    """``module → {fuse3d modules it imports}``, from every import statement (lazy ones included)."""
    import ast

    base = ROOT / package
    modules = {}
    for path in base.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        modules[".".join(parts)] = (path, rel.name == "__init__")
    graph = {}
    for name, (path, is_pkg) in modules.items():
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                stem = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
                mod = ".".join(p for p in (stem, node.module or "") if p)
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def test_no_import_cycle_in_fuse3d():
    graph = import_graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if dep == node.rsplit(".", 1)[0] or node.startswith(dep + "."):
                continue  # a module and the package that re-exports it
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in list((ROOT / "fuse3d").rglob("*.py")) + list((ROOT / "viz").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}
