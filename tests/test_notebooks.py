"""The notebooks are stored clean and thin; executing them is ``pytest --nbval-lax notebooks/``."""
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def test_all_notebooks_present():
    assert [p.stem for p in NOTEBOOKS] == ["01_walkthrough", "02_heads_and_thresholds", "03_reverse_alignment",
                                           "04_lambda_sweeps", "05_ablations", "06_applications", "07_explore"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_and_names_its_model(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "Fuse3D.from_pretrained(None" in code[0].source and "print(viz.model_label(pipe))" in code[0].source
    for cell in code:
        assert "def " not in cell.source and "class " not in cell.source, "logic belongs in viz"
    tagged = [c for c in code if "docs-figure" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert (ROOT / "docs" / f"{path.stem}.png").is_file()
