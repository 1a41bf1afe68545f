import json
import os
import subprocess
import sys

import pytest

from fuse3d.spec import SpecError, example_spec, load_spec


def test_demo_runs_on_the_bundled_model_and_says_so(tmp_path):
    env = {**os.environ, "FUSE3D_HOME": str(tmp_path / "home")}
    env.pop("FUSE3D_MODEL", None)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fuse3d.cli", "demo", "--out", str(out), "--quiet", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model: fuse3d-small" in proc.stdout and "procedural" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "fuse3d-small" and "rough" in summary["model_description"]
    assert (out / "asset.glb").stat().st_size > 0 and (out / "asset.ply").stat().st_size > 0
    assert len(summary["aligned_cells"]) == 2 and len(summary["lambdas"]) == 3


def test_spec_loading(tmp_path):
    spec = load_spec(example_spec("car"))
    assert len(spec.local_conditions) == 3 and spec.global_condition.name == "global"
    (tmp_path / "s.toml").write_text('seed = 3\n[[local]]\nimage = "x.png"\nbox = [0, 0, 5, 5]\n')
    with pytest.raises(SpecError, match=r"\[\[local\]\] #0: cannot read image .*x.png"):
        load_spec(tmp_path / "s.toml")
    (tmp_path / "t.toml").write_text('[global]\nimage = "g.png"\n')
    with pytest.raises(SpecError, match="needs at least one"):
        load_spec(tmp_path / "t.toml")
    (tmp_path / "u.toml").write_text('colour = 1\n[[local]]\nimage = "g.png"\n')
    with pytest.raises(SpecError, match="unknown top-level keys"):
        load_spec(tmp_path / "u.toml")
    with pytest.raises(SpecError, match="no bundled example 'sofa'; available: car, chair, conflict, robot"):
        example_spec("sofa")
