"""viz.render: off-screen pyvista stills."""
import numpy as np
import trimesh

from viz.render import camera_position, render_mesh, render_voxels

BLOCK = np.array([[x, y, z] for x in range(30, 34) for y in range(30, 34) for z in range(30, 34)])


def colourful(image, channel):
    a = np.asarray(image).astype(int)
    others = [c for c in range(3) if c != channel]
    return int(((a[..., channel] > 150) & (a[..., others].max(-1) < 100)).sum())


def test_render_voxels_with_colours_and_values(tmp_path):
    colors = np.tile([0.9, 0.1, 0.1], (len(BLOCK), 1))
    img = render_voxels(BLOCK, colors=colors, size=(320, 240), path=tmp_path / "v.png", title="test")
    assert img.size == (320, 240) and (tmp_path / "v.png").is_file()
    assert colourful(img, 0) > 2000  # red cubes drawn
    img = render_voxels(BLOCK, values=np.linspace(0, 1, len(BLOCK)), size=(320, 240))
    assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 50  # a colour map and a colour bar


def test_render_mesh_uses_vertex_colours():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    mesh.visual.vertex_colors = np.tile([20, 40, 230, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    img = render_mesh(mesh, size=(300, 300))
    assert colourful(img, 2) > 5000


def test_camera_position_is_z_up():
    eye, focus, up = camera_position(0, 0, 2)
    assert np.allclose(eye, (2, 0, 0)) and focus == (0, 0, 0) and up == (0, 0, 1)
    eye, _, _ = camera_position(90, 90, 1)
    assert np.allclose(eye, (0, 0, 1), atol=1e-9)
