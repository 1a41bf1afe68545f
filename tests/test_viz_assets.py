"""viz.assets: per-voxel asset colours, mesh simplification, comparisons; fuse3d.data.meshes."""
import numpy as np
import pytest
import trimesh

from fuse3d import Fuse3D
from fuse3d.assets import Gaussians, voxelize_mesh
from fuse3d.data.meshes import untextured_mesh
from viz import load_example
from viz.assets import (asset_colors, change_figure, cluster_vertices, color_change, compare_figure, gaussians_figure,
                        mesh_figure, vertex_colors, voxel_colors)


def gaussians(rgb, opacity):
    n = len(rgb)
    sh = (np.asarray(rgb, np.float32) - 0.5) / 0.28209479177387814
    return Gaussians(np.zeros((n, 3)), np.full((n, 3), 0.01), np.tile([1.0, 0, 0, 0], (n, 1)), np.asarray(opacity), sh)


def test_voxel_colors_are_opacity_weighted_means():
    g = gaussians([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0]], [0.75, 0.25, 0.5, 0.5])
    c = voxel_colors(g, 2)
    assert np.allclose(c, [[0.75, 0, 0.25], [0, 1, 0]], atol=1e-5)
    with pytest.raises(ValueError):
        voxel_colors(g, 3)


def test_cluster_vertices_merges_and_drops_collapsed_faces():
    v = np.array([[0, 0, 0], [0.01, 0, 0], [1, 0, 0], [0, 1, 0]], float)
    f = np.array([[0, 2, 3], [1, 2, 3], [0, 1, 2]])
    group, faces = cluster_vertices(v, f, cell=0.5)
    assert group[0] == group[1]
    assert len(faces) == 1  # the duplicate and the collapsed face are gone


def test_mesh_figure_simplifies_and_keeps_colours():
    mesh = trimesh.creation.icosphere(subdivisions=4)
    mesh.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    assert np.allclose(vertex_colors(mesh), [1, 0, 0])
    fig = mesh_figure(mesh, max_faces=1000)
    assert len(fig.data[0].i) <= 1000
    assert set(fig.data[0].vertexcolor) == {"#ff0000"}
    assert vertex_colors(trimesh.creation.box()) is None


def test_color_change():
    assert color_change(np.zeros((2, 3)), np.array([[1, 0, 0], [1, 1, 1.0]])).tolist() == pytest.approx([1, 3 ** 0.5])
    with pytest.raises(ValueError, match="structures"):
        color_change(np.zeros((2, 3)), np.zeros((3, 3)))


def test_untextured_mesh_is_a_closed_uncoloured_user_mesh():
    obj = load_example("chair").spec
    mesh = untextured_mesh(obj, resolution=48, scale=3.0, offset=(1, 2, 3))
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.visual.kind is None
    lo, hi = (np.asarray(b) for b in obj.bounds())
    assert np.all(mesh.bounds[0] >= lo * 3 + (1, 2, 3) - 0.1) and np.all(mesh.bounds[1] <= hi * 3 + (1, 2, 3) + 0.1)
    assert len(voxelize_mesh(mesh)) > 1000


def test_run_views(tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    run = load_example("chair").run(pipe, structure="true", latent_steps=1)
    colors = asset_colors(run)
    assert colors.shape == (len(run.structure), 3) and colors.min() >= 0 and colors.max() <= 1
    other = run.retune(strength=3.0)
    fig = compare_figure({"a": run, "b": other})
    scenes = lambda f: [k for k in f.layout._props if k.startswith("scene")]  # noqa: E731
    assert [a.text for a in fig.layout.scene.annotations] == ["a", "b"] and scenes(fig) == ["scene"]
    change = change_figure({"a": run, "b": other, "c": run})
    assert [a.text for a in change.layout.scene.annotations] == ["b vs a", "c vs a"] and scenes(change) == ["scene"]
    with pytest.raises(ValueError, match="at least two"):
        change_figure({"a": run})
    assert np.allclose(change.data[1].intensity, 0)  # a run compared with itself changed nothing
    fig = gaussians_figure(run.gaussians, run, max_points=100)
    assert len(fig.data[0].x) == 100
