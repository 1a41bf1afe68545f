import json
import os
import subprocess
import sys

from fuse3d.bundled import default_model_path


def test_demo_runs_on_the_bundled_model_and_says_so(tmp_path):
    env = {**os.environ, "FUSE3D_HOME": str(tmp_path / "home")}
    env.pop("FUSE3D_MODEL", None)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fuse3d.cli", "demo", "--out", str(out), "--quiet", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model: fuse3d-small" in proc.stdout and "procedural" in proc.stdout
    # the bundled model carries its own defaults, tuned on held-out objects, and the output names them
    own = json.loads((default_model_path() / "pipeline.json").read_text())["fuse3d"]["defaults"]
    assert (f"alignment defaults: heads {own['heads']} (0-based), threshold {own['threshold']:g} — tuned by "
            "fuse3d.train.evaluate") in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "fuse3d-small" and "it knows only such objects" in summary["model_description"]
    assert (out / "asset.glb").stat().st_size > 0 and (out / "asset.ply").stat().st_size > 0
    assert len(summary["aligned_cells"]) == 2 and len(summary["lambdas"]) == 3
    # each local image steers with its region, not its whole object (the chair's back and seat)
    assert all(0 < s < 0.6 * f for s, f in zip(summary["selected_patches"], summary["foreground_patches"]))
    assert "locals (selected / foreground patches): local_0 " in proc.stdout
