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
