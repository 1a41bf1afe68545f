"""viz.voxels: exposed faces of voxel sets, and the plotly traces built from them."""
import numpy as np
import pytest

from viz.voxels import as_xyz, exposed_faces, rgb_strings, voxel_figure, voxel_mesh, voxel_scatter

BLOCK = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)])


@pytest.mark.parametrize("coords, faces, vertices", [
    ([[0, 0, 0]], 6, 8),
    ([[0, 0, 0], [1, 0, 0]], 10, 12),
    (BLOCK, 24, 26),
    ([[0, 0, 0], [2, 0, 0]], 12, 16),  # apart: nothing shared
    ([[0, 0, 0], [1, 1, 0]], 12, 14),  # edge neighbours share two corners, no face
])
def test_exposed_face_and_vertex_counts(coords, faces, vertices):
    s = exposed_faces(np.array(coords))
    assert len(s.quads) == faces
    assert len(s.triangles) == 2 * faces
    assert len(s.vertices) == vertices  # duplicate corners merged
    assert len(np.unique(s.vertices, axis=0)) == len(s.vertices)


def test_faces_point_outwards():
    s = exposed_faces(BLOCK + 5)
    q = s.vertices[s.quads].astype(float)
    normal = np.cross(q[:, 1] - q[:, 0], q[:, 2] - q[:, 1])
    outward = q.mean(1) - (BLOCK + 5).mean(0) - 0.5
    assert np.all((normal * outward).sum(1) > 0)
    tri = s.vertices[s.triangles].astype(float)  # both triangles keep the quad's winding
    tri_normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all((tri_normal * np.repeat(outward, 2, axis=0)).sum(1) > 0)


def test_face_voxel_maps_faces_to_their_voxel():
    coords = np.array([[0, 3, 4, 5], [0, 3, 4, 6]])  # (batch, x, y, z) rows, stacked in z
    s = exposed_faces(coords)
    assert np.bincount(s.face_voxel).tolist() == [5, 5]
    for f, v in zip(s.quads, s.face_voxel):
        corners = s.vertices[f]
        assert np.all(corners >= coords[v, 1:]) and np.all(corners <= coords[v, 1:] + 1)
    assert np.array_equal(s.triangle_voxel, np.repeat(s.face_voxel, 2))


def test_positions_are_in_trellis_frame():
    s = exposed_faces(np.array([[0, 0, 0], [63, 63, 63]]))
    p = s.positions(64)
    assert p.min() == -0.5 and p.max() == 0.5


def test_bad_coords():
    with pytest.raises(ValueError, match="duplicates"):
        exposed_faces(np.array([[0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="non-negative"):
        exposed_faces(np.array([[-1, 0, 0]]))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        as_xyz(np.zeros((3, 2)))
    assert len(exposed_faces(np.zeros((0, 3), int)).quads) == 0


def test_voxel_mesh_colours_each_face_by_its_voxel():
    s = exposed_faces(np.array([[0, 0, 0], [1, 0, 0]]))
    m = voxel_mesh(s, values=[0.25, 0.75])
    assert m.intensitymode == "cell"
    assert np.array_equal(np.asarray(m.intensity), np.where(s.triangle_voxel == 0, 0.25, 0.75).astype(np.float32))
    m = voxel_mesh(s, colors=np.array([[1.0, 0, 0], [0, 0, 1.0]]), faces=s.face_voxel == 1)
    assert set(m.facecolor) == {"#0000ff"} and len(m.i) == 10
    assert voxel_mesh(s, colors="#123456").color == "#123456"


def test_rgb_strings():
    assert rgb_strings(np.array([[1.0, 0.5, 0.0]])).tolist() == ["#ff8000"]
    assert rgb_strings(np.array([[255, 0, 16]])).tolist() == ["#ff0010"]


def test_voxel_figure_and_scatter():
    fig = voxel_figure(BLOCK, values=np.linspace(0, 1, 8), colorbar_title="score")
    assert fig.layout.scene.aspectmode == "data"
    assert fig.data[0].colorbar.title.text == "score"
    sc = voxel_scatter(BLOCK, colors=np.ones((8, 3)))
    assert len(sc.x) == 8 and np.isclose(sc.x[0], 0.5 / 64 - 0.5)
