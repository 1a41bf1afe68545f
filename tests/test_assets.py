import math
import os

import numpy as np
import pytest
import torch
import trimesh
from scipy import ndimage
from scipy.spatial.transform import Rotation

from fuse3d.assets import (
    CUBE_CORNERS,
    PLY_PROPERTIES,
    SH_C0,
    Z_UP_TO_Y_UP,
    Gaussians,
    Mesh,
    export,
    export_glb,
    export_ply,
    extract_mesh,
    normalize_vertices,
    read_ply,
    transfer_colors,
    voxelize_mesh,
    voxels_from_grid,
    voxels_from_points,
)
from fuse3d.assets.mesh import _vertex_table
from fuse3d.trellis import SparseTensor, build

R = 64  # fine grid of a mesh decoder with resolution 16
RADIUS = 0.3
RED, BLUE = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])


# ============================================================================ synthetic decoder outputs
class StandInMeshDecoder:
    """What Mesh.from_decoder_output needs of a SLatMeshDecoder."""

    resolution = R // 4
    use_color = True
    feature_layout = {"sdf": (0, 8, (8,)), "deform": (8, 32, (8, 3)), "weights": (32, 53, (21,)), "color": (53, 101, (8, 6))}


def sphere_features(radius, batch, bias_compensated=True, seed=0):
    """Fine voxels within 2 voxels of a sphere; corner sdf = |p| - radius (+1/R to cancel the bias).

    Colours: red on corners above z = 0, blue below. ``deform`` and ``weights`` are random.
    """
    g = np.stack(np.meshgrid(*[np.arange(R)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (g + 0.5) / R - 0.5
    coords = g[np.abs(np.linalg.norm(centres, axis=1) - radius) < 2 / R]
    corners = (coords[:, None, :] + CUBE_CORNERS[None]) / R - 0.5  # [N, 8, 3]
    sdf = np.linalg.norm(corners, axis=-1) - radius + (1 / R if bias_compensated else 0)
    rgb = np.where(corners[..., 2:] > 0, RED, BLUE)
    normal_map = corners / np.linalg.norm(corners, axis=-1, keepdims=True)
    rng = np.random.default_rng(seed)
    feats = np.concatenate([
        sdf, rng.normal(size=(len(coords), 24)), rng.normal(size=(len(coords), 21)),
        np.concatenate([rgb, normal_map], -1).reshape(len(coords), 48),
    ], axis=1)
    batch_col = np.full((len(coords), 1), batch)
    return torch.tensor(feats, dtype=torch.float32), torch.tensor(np.concatenate([batch_col, coords], 1), dtype=torch.int32)


def sorted_rows(a):
    return a[np.lexsort(a.T)]


@pytest.fixture(scope="module")
def sphere_output():
    """Batch 0: sphere of radius 0.3; batch 1: radius 0.2."""
    f0, c0 = sphere_features(RADIUS, 0)
    f1, c1 = sphere_features(0.2, 1, seed=1)
    return SparseTensor(torch.cat([f0, f1]), torch.cat([c0, c1]))


@pytest.fixture(scope="module")
def sphere_mesh(sphere_output):
    return Mesh.from_decoder_output(StandInMeshDecoder(), sphere_output, fill_interior=True)


# ============================================================================ mesh extraction
def test_sphere_mesh_lies_on_sphere_and_is_closed(sphere_mesh):
    radii = np.linalg.norm(sphere_mesh.vertices, axis=1)
    assert sphere_mesh.num_vertices > 1000
    assert np.abs(radii - RADIUS).max() < 0.25 / R
    tm = sphere_mesh.to_trimesh()
    assert tm.is_watertight
    assert len(tm.split(only_watertight=False)) == 1
    assert tm.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.01)


def test_sphere_mesh_normals_point_outward(sphere_mesh):
    tm = sphere_mesh.to_trimesh()
    dots = np.einsum("ij,ij->i", tm.face_normals, tm.triangles_center)
    assert dots.mean() > 0
    assert (dots > 0).mean() > 0.999


def test_sphere_mesh_colours_red_above_blue_below(sphere_mesh):
    z, colors = sphere_mesh.vertices[:, 2], sphere_mesh.vertex_colors
    assert colors.dtype == np.float32 and colors.shape == sphere_mesh.vertices.shape
    assert np.allclose(colors[z > 1 / R], RED)
    assert np.allclose(colors[z < -1 / R], BLUE)


def test_mesh_picks_the_batch_element(sphere_output):
    small = Mesh.from_decoder_output(StandInMeshDecoder(), sphere_output, batch=1, fill_interior=True)
    assert np.abs(np.linalg.norm(small.vertices, axis=1) - 0.2).max() < 0.25 / R
    with pytest.raises(ValueError, match="batch=2 is out of range"):
        Mesh.from_decoder_output(StandInMeshDecoder(), sphere_output, batch=2)


def test_published_field_keeps_the_inner_shell_surface(sphere_output, sphere_mesh):
    """Without fill_interior the untouched (+1) interior makes an inward-facing inner sphere."""
    raw = Mesh.from_decoder_output(StandInMeshDecoder(), sphere_output)
    radii = np.linalg.norm(raw.vertices, axis=1)
    outer = radii > RADIUS - 1 / R
    assert outer.sum() == sphere_mesh.num_vertices
    assert np.allclose(sorted_rows(raw.vertices[outer]), sorted_rows(sphere_mesh.vertices))  # same outer sphere
    components = raw.to_trimesh().split(only_watertight=False)
    assert sorted(np.sign([c.volume for c in components])) == [-1, 1]
    assert radii.min() < RADIUS - 1.5 / R


def test_sdf_bias_grows_the_surface_by_one_fine_voxel():
    feats, coords = sphere_features(RADIUS, 0, bias_compensated=False)
    mesh = extract_mesh(coords[:, 1:], feats[:, :8], R, fill_interior=True)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - (RADIUS + 1 / R)).max() < 0.25 / R
    assert mesh.vertex_colors is None


def test_shared_vertices_get_the_mean_corner_value():
    coords = np.array([[0, 0, 0], [1, 0, 0]])
    values = np.stack([np.zeros(8), np.full(8, 2.0)])[..., None]  # cube 0: 0 everywhere, cube 1: 2
    keys, means = _vertex_table(coords, values, grid_resolution=4)
    idx = np.stack([keys // 25, keys // 5 % 5, keys % 5], 1)
    assert len(keys) == 12 and np.all(np.diff(keys) > 0)
    assert np.allclose(means[idx[:, 0] == 0, 0], 0)
    assert np.allclose(means[idx[:, 0] == 1, 0], 1)  # shared face x = 1
    assert np.allclose(means[idx[:, 0] == 2, 0], 2)


def test_colour_comes_from_the_nearest_active_grid_vertex_clamped():
    # One cube, deep inside (sdf -3): the surface crosses each outgoing edge 3/4 of the way to the
    # untouched (+1) neighbour, so the nearest grid vertex is untouched and the active end is used.
    corner_colors = np.linspace(-0.5, 1.5, 24).reshape(1, 8, 3)  # partly outside [0, 1]: clamped
    mesh = extract_mesh(np.array([[5, 6, 7]]), np.full((1, 8), -3.0), R, corner_colors)
    grid = (mesh.vertices.astype(np.float64) + 0.5) * R - [5, 6, 7]  # corner (dx, dy, dz) at 0/1
    assert mesh.to_trimesh().is_watertight and mesh.num_vertices == 24
    active_end = np.clip(np.rint(grid), 0, 1).astype(int)
    assert np.abs(grid - active_end).max() == pytest.approx((3 + 1 / R) / (4 + 1 / R), abs=1e-5)
    corner = active_end[:, 0] + 2 * active_end[:, 1] + 4 * active_end[:, 2]
    assert np.allclose(mesh.vertex_colors, np.clip(corner_colors[0, corner], 0, 1))


def test_no_zero_crossing_gives_an_empty_mesh(tmp_path):
    coords = np.array([[3, 4, 5], [3, 4, 6]])
    mesh = extract_mesh(coords, np.full((2, 8), 0.5), R, np.zeros((2, 8, 3)))
    assert mesh.is_empty and mesh.num_vertices == 0 and mesh.vertex_colors.shape == (0, 3)
    assert extract_mesh(np.zeros((0, 3)), np.zeros((0, 8)), R).is_empty
    target = tmp_path / "empty.glb"
    with pytest.raises(ValueError, match="the mesh is empty"):
        export_glb(mesh, target)
    assert list(tmp_path.iterdir()) == []


def test_extract_mesh_validates_its_inputs(sphere_output):
    with pytest.raises(ValueError, match=r"coords must lie in \[0, 64\)"):
        extract_mesh(np.array([[64, 0, 0]]), np.zeros((1, 8)), R)
    with pytest.raises(ValueError, match=r"corner_sdf must be \[N, 8\]"):
        extract_mesh(np.zeros((2, 3)), np.zeros((2, 7)), R)
    with pytest.raises(ValueError, match="feature_layout describes 101 channels"):
        Mesh.from_decoder_output(StandInMeshDecoder(), sphere_output.replace(sphere_output.feats[:, :53]))
    with pytest.raises(ValueError, match=r"vertex_colors must be \[V, 3\]"):
        Mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), np.zeros((2, 3)))


def test_real_mesh_decoder_output_meshes_its_voxel_block():
    torch.manual_seed(0)
    decoder = build("SLatMeshDecoder", resolution=16, model_channels=256, latent_channels=8, num_blocks=1, num_heads=4,
                    attn_mode="swin", window_size=4, representation_config={"use_color": True})
    block = torch.stack(torch.meshgrid(*[torch.arange(6, 9)] * 3, indexing="ij"), -1).reshape(-1, 3)
    slat = SparseTensor(torch.randn(len(block), 8), torch.cat([torch.zeros(len(block), 1, dtype=torch.long), block], 1))
    mesh = Mesh.from_decoder_output(decoder, decoder.decode_features(slat))
    # The zero-initialised output layer predicts sdf 0 → -1/R after the bias: the whole block is inside.
    assert mesh.to_trimesh().is_watertight
    assert np.allclose(mesh.bounds(), [[24 / R - 0.5] * 3, [36 / R - 0.5] * 3], atol=0.05 / R)
    assert mesh.vertex_colors is not None and (mesh.vertex_colors >= 0).all() and (mesh.vertex_colors <= 1).all()


# ============================================================================ GLB
def test_glb_round_trip_is_y_up_with_colours(sphere_mesh, tmp_path):
    path = export(sphere_mesh, tmp_path / "sphere.glb")
    assert [p.name for p in tmp_path.iterdir()] == ["sphere.glb"]  # no temporary file left behind
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == sphere_mesh.num_vertices and len(loaded.faces) == sphere_mesh.num_faces
    assert np.allclose(loaded.vertices, sphere_mesh.vertices @ Z_UP_TO_Y_UP, atol=1e-6)
    # TRELLIS's top (+z) is glTF's +y
    top = sphere_mesh.vertices[:, 2].argmax()
    assert loaded.vertices[:, 1].argmax() == top
    assert np.allclose(loaded.vertices[top], [0, RADIUS, 0], atol=1 / R)
    rgba = loaded.visual.vertex_colors
    assert (rgba[:, 3] == 255).all()
    assert np.array_equal(rgba[:, :3], np.round(sphere_mesh.vertex_colors * 255).astype(np.uint8))
    assert (rgba[loaded.vertices[:, 1] > 1 / R, :3] == [255, 0, 0]).all()


def test_export_dispatch_errors(sphere_mesh, tmp_path):
    with pytest.raises(ValueError, match=r"suffix must be one of \['.glb', '.ply'\]"):
        export(sphere_mesh, tmp_path / "sphere.obj")
    with pytest.raises(TypeError, match="a .ply file holds a Gaussians, got Mesh"):
        export(sphere_mesh, tmp_path / "sphere.ply")
    assert list(tmp_path.iterdir()) == []


# ============================================================================ Gaussians
class StandInGaussianDecoder:
    """What Gaussians.from_decoder_output needs of a SLatGaussianDecoder (G = 2 Gaussians per voxel)."""

    resolution = 64
    feature_layout = {"xyz": (0, 6, (2, 3)), "features_dc": (6, 12, (2, 1, 3)), "scaling": (12, 18, (2, 3)),
                      "rotation": (18, 26, (2, 4)), "opacity": (26, 28, (2, 1))}
    offset_perturbation = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.0, 0.0]])

    def __init__(self, scaling_activation="softplus"):
        self.rep_config = {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
                           "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 2, "3d_filter_kernel_size": 0.0009,
                           "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": scaling_activation}


def gaussian_output():
    """One voxel at (10, 20, 30); Gaussian 0 has all-zero raw values, Gaussian 1 hand-picked ones."""
    feats = torch.zeros(1, 28)
    feats[0, 3:6] = torch.tensor([0.2, 0.0, 100.0])  # xyz of Gaussian 1
    feats[0, 9:12] = torch.tensor([1.0, 2.0, -3.0])  # features_dc of Gaussian 1
    feats[0, 15:18] = torch.tensor([math.log(2.0), 0.0, 1.0])  # scaling of Gaussian 1 (anisotropic)
    feats[0, 22:26] = torch.tensor([0.0, 10.0, 0.0, 0.0])  # rotation of Gaussian 1 (lr 0.1 → [1, 1, 0, 0])
    feats[0, 27] = math.log(1 / 0.1 - 1)  # opacity of Gaussian 1: cancels the bias → 0.5
    return SparseTensor(feats, torch.tensor([[0, 10, 20, 30]], dtype=torch.int32))


def test_gaussians_follow_the_published_activations():
    g = Gaussians.from_decoder_output(StandInGaussianDecoder(), gaussian_output())
    assert len(g) == 2
    centre = (np.array([10, 20, 30]) + 0.5) / 64
    half = 0.5 * 1.5 / 64
    expected0 = centre + np.tanh([0.5, 0.0, -0.5]) * half - 0.5
    expected1 = centre + np.tanh([0.2, 0.0, 100.0]) * half - 0.5
    assert np.allclose(g.positions, [expected0, expected1], atol=1e-6)
    assert np.allclose(g.positions[1, 2], (30.5 + 0.75) / 64 - 0.5, atol=1e-6)  # tanh saturates at +1
    # softplus(inv_softplus(0.004)) = 0.004 and sqrt(0.004² + 0.0009²) = 0.0041
    assert np.allclose(g.scales[0], 0.0041, rtol=1e-5)
    inv_softplus_bias = 0.004 + math.log(-math.expm1(-0.004))
    expected = [math.hypot(math.log1p(math.exp(raw + inv_softplus_bias)), 0.0009) for raw in (math.log(2.0), 0.0, 1.0)]
    assert np.allclose(g.scales[1], expected, rtol=1e-5)
    assert np.allclose(g.rotations, [[1, 0, 0, 0], [2**-0.5, 2**-0.5, 0, 0]], atol=1e-6)
    assert np.allclose(g.opacities, [0.1, 0.5], atol=1e-6)
    assert np.allclose(g.sh_dc, [[0, 0, 0], [1, 2, -3]])
    assert np.allclose(g.rgb, [[0.5, 0.5, 0.5], [0.5 + SH_C0, 1.0, 0.0]], atol=1e-6)


def test_exp_scaling_activation():
    g = Gaussians.from_decoder_output(StandInGaussianDecoder("exp"), gaussian_output())
    # exp(log 2 + log 0.004) = 0.008; sqrt(0.008² + 0.0009²) = 0.0080505...
    expected = [math.sqrt(0.008**2 + 0.0009**2), 0.0041, math.hypot(0.004 * math.e, 0.0009)]
    assert np.allclose(g.scales, [[0.0041] * 3, expected], rtol=1e-5)
    with pytest.raises(ValueError, match="scaling_activation must be 'softplus' or 'exp'"):
        Gaussians.from_decoder_output(StandInGaussianDecoder("relu"), gaussian_output())


def test_real_gaussian_decoder_output():
    decoder = build("SLatGaussianDecoder", resolution=16, model_channels=64, latent_channels=8, num_blocks=1, num_heads=4,
                    attn_mode="swin", window_size=4, representation_config={
                        "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
                        "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 4, "3d_filter_kernel_size": 0.0009,
                        "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": "softplus"})
    xyz = torch.tensor([[1, 2, 3], [8, 8, 8], [15, 0, 7]])
    slat = SparseTensor(torch.randn(3, 8), torch.cat([torch.zeros(3, 1, dtype=torch.long), xyz], 1))
    g = Gaussians.from_decoder_output(decoder, decoder.decode_features(slat))
    assert len(g) == 12
    # zero-initialised output layer: only the fixed offset perturbation moves the Gaussians off the centres
    centres = np.repeat((xyz.numpy() + 0.5) / 16 - 0.5, 4, axis=0)
    offsets = np.tile(np.tanh(decoder.offset_perturbation.numpy()), (3, 1)) * 0.75 / 16
    assert np.allclose(g.positions - centres, offsets, atol=1e-6)
    assert np.abs(g.positions - centres).max() <= 0.75 / 16
    assert np.allclose(g.scales, 0.0041, rtol=1e-5) and np.allclose(g.opacities, 0.1)


def test_gaussians_validate_shapes():
    with pytest.raises(ValueError, match=r"Gaussians.rotations must be \[G, 4\] = \[2, 4\], got \[2, 3\]"):
        Gaussians(np.zeros((2, 3)), np.ones((2, 3)), np.zeros((2, 3)), np.ones(2), np.zeros((2, 3)))


# ============================================================================ PLY
def covariances(rotations_wxyz, scales):
    rot = Rotation.from_quat(np.asarray(rotations_wxyz, dtype=np.float64)[:, [1, 2, 3, 0]]).as_matrix()
    return rot @ (np.asarray(scales, dtype=np.float64)[:, :, None] ** 2 * np.transpose(rot, (0, 2, 1)))


def test_ply_round_trip(tmp_path):
    g = Gaussians.from_decoder_output(StandInGaussianDecoder(), gaussian_output())
    path = export(g, tmp_path / "g.ply")
    assert [p.name for p in tmp_path.iterdir()] == ["g.ply"]
    raw = path.read_bytes()
    header = raw[: raw.index(b"end_header\n") + len(b"end_header\n")].decode()
    assert header.startswith("ply\nformat binary_little_endian 1.0\nelement vertex 2\n")
    assert [line.split()[2] for line in header.splitlines() if line.startswith("property float")] == list(PLY_PROPERTIES)
    assert len(raw) == len(header) + 2 * 17 * 4

    ply = read_ply(path)
    assert list(ply) == list(PLY_PROPERTIES) and all(v.dtype == np.float32 for v in ply.values())
    xyz = np.stack([ply["x"], ply["y"], ply["z"]], 1)
    assert np.allclose(xyz, g.positions @ Z_UP_TO_Y_UP, atol=1e-7)
    assert np.allclose(xyz[:, [0, 2]], g.positions[:, [0, 1]] * [1, -1], atol=1e-7)  # (x, y, z) -> (x, z, -y)
    assert (ply["nx"] == 0).all() and (ply["ny"] == 0).all() and (ply["nz"] == 0).all()
    assert np.allclose(np.stack([ply[f"f_dc_{i}"] for i in range(3)], 1), g.sh_dc)
    assert np.allclose(ply["opacity"], [math.log(0.1 / 0.9), 0.0], atol=1e-5)
    scales = np.exp(np.stack([ply[f"scale_{i}"] for i in range(3)], 1))
    assert np.allclose(scales, g.scales, rtol=1e-5)
    quats = np.stack([ply[f"rot_{i}"] for i in range(4)], 1)
    assert np.allclose(np.linalg.norm(quats, axis=1), 1, atol=1e-6)
    # the Gaussians' shapes rotate with the frame: Σ_file = Mᵀ Σ M for rows p_file = p M
    expected = Z_UP_TO_Y_UP.T @ covariances(g.rotations, g.scales) @ Z_UP_TO_Y_UP
    assert np.allclose(covariances(quats, scales), expected, atol=1e-10)
    # the identity rotation becomes the frame rotation itself: -90° about x, (w, x, y, z) = ±(1, -1, 0, 0)/√2
    assert np.allclose(quats[0] * np.sign(quats[0, 0]), [2**-0.5, -(2**-0.5), 0, 0], atol=1e-6)


def test_ply_without_transform_and_overwrite(tmp_path):
    g = Gaussians.from_decoder_output(StandInGaussianDecoder(), gaussian_output())
    path = tmp_path / "g.ply"
    path.write_bytes(b"old")
    export_ply(g, path, transform=None)
    ply = read_ply(path)
    assert np.allclose(np.stack([ply["x"], ply["y"], ply["z"]], 1), g.positions)
    assert np.allclose(np.stack([ply[f"rot_{i}"] for i in range(4)], 1), g.rotations, atol=1e-7)
    with pytest.raises(ValueError, match="transform must be a \\[3, 3\\] rotation matrix"):
        export_ply(g, path, transform=np.diag([1.0, 1.0, -1.0]))
    assert sorted(os.listdir(tmp_path)) == ["g.ply"]


def test_ply_rejects_zero_gaussians_and_bad_files(tmp_path):
    empty = Gaussians(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="there are no Gaussians"):
        export_ply(empty, tmp_path / "e.ply")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match="format 'ascii' is not supported"):
        read_ply(tmp_path / "a.ply")
    (tmp_path / "b.ply").write_bytes(b"not a ply")
    with pytest.raises(ValueError, match="is not a PLY file"):
        read_ply(tmp_path / "b.ply")


# ============================================================================ voxelization
def outside_component(coords, resolution):
    """Bool grid of voxels reachable from outside the grid through empty voxels (6-connected)."""
    occupied = np.zeros((resolution + 2,) * 3, dtype=bool)
    occupied[tuple(coords[:, 1:].numpy().T + 1)] = True
    labels, _ = ndimage.label(~occupied)
    return (labels == labels[0, 0, 0])[1:-1, 1:-1, 1:-1]


def assert_sorted_unique(coords):
    assert coords.dtype == torch.int32 and coords.shape[1] == 4 and (coords[:, 0] == 0).all()
    keys = (coords[:, 1].long() * 4096 + coords[:, 2].long() * 64 + coords[:, 3].long()).numpy()
    assert np.all(np.diff(keys) > 0)


def test_voxelize_box_gives_exactly_its_shell():
    box = trimesh.creation.box(extents=(0.7, 0.45, 0.3))  # faces off voxel boundaries at 64³
    coords = voxelize_mesh(box, 64, normalize=False)
    assert_sorted_unique(coords)
    solid = np.zeros((64,) * 3, dtype=bool)
    solid[9:55, 17:47, 22:42] = True
    shell = solid & ~ndimage.binary_erosion(solid)
    assert np.array_equal(coords[:, 1:].numpy(), np.argwhere(shell))


def test_voxelize_sphere_is_a_closed_thin_shell(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=5.0)
    sphere.apply_translation([100.0, 0.0, -20.0])
    coords = voxelize_mesh(sphere, 64)
    assert_sorted_unique(coords)
    xyz = coords[:, 1:].numpy()
    assert xyz.min() == 0 and xyz.max() == 63
    # no holes: the centre is not reachable from outside, and every axis ray from it hits the shell
    outside = outside_component(coords, 64)
    assert not outside[32, 32, 32] and not outside[31, 31, 31]
    assert outside.sum() + len(xyz) < 64**3
    # thin: every voxel centre is within half a voxel diagonal (+ the icosphere's deviation) of the surface
    centres = (xyz + 0.5) / 64 - 0.5
    radius = np.linalg.norm(normalize_vertices(sphere.vertices)[0], axis=1).max()
    assert np.abs(np.linalg.norm(centres, axis=1) - radius).max() < (math.sqrt(3) / 2 + 0.1) / 64 + 0.02
    area = 4 * math.pi * (radius * 64) ** 2
    assert area < len(xyz) < 3 * area
    # the same mesh from a file, and as a fuse3d Mesh
    sphere.export(tmp_path / "sphere.ply")
    assert torch.equal(voxelize_mesh(tmp_path / "sphere.ply", 64), coords)
    assert torch.equal(voxelize_mesh(Mesh(sphere.vertices, sphere.faces), 64), coords)


def test_voxelize_from_y_up():
    cone = trimesh.creation.cone(radius=0.3, height=1.0)  # tip at +z
    y_up = trimesh.Trimesh(cone.vertices @ Z_UP_TO_Y_UP, cone.faces)  # tip at +y, as in a GLB
    coords = voxelize_mesh(y_up, 32, from_y_up=True)
    assert torch.equal(coords, voxelize_mesh(cone, 32))
    tip_layer = coords[coords[:, 3] == 31]
    assert 0 < len(tip_layer) <= 4
    with pytest.raises(ValueError, match="mesh without faces"):
        voxelize_mesh(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), dtype=int)))
    with pytest.raises(TypeError, match="expected a Mesh, a trimesh.Trimesh or a path"):
        voxelize_mesh(np.zeros((3, 3)))


def test_voxels_from_grid():
    grid = np.random.default_rng(0).random((16, 16, 16)) > 0.9
    coords = voxels_from_grid(torch.from_numpy(grid))
    assert_sorted_unique(coords)
    assert np.array_equal(coords[:, 1:].numpy(), np.argwhere(grid))
    with pytest.raises(ValueError, match=r"cubic \[R, R, R\] array, got shape \(16, 16, 8\)"):
        voxels_from_grid(grid[:, :, :8])
    with pytest.raises(ValueError, match=r"grid must be \[64, 64, 64\]"):
        voxels_from_grid(grid, resolution=64)
    with pytest.raises(ValueError, match="grid must be a bool array, got dtype float64"):
        voxels_from_grid(grid.astype(float))
    with pytest.raises(ValueError, match="no occupied voxel"):
        voxels_from_grid(np.zeros((8, 8, 8), dtype=bool))


def test_voxels_from_points():
    coords = voxels_from_points(np.array([[3, 1, 2], [0, 5, 5], [3, 1, 2], [0, 5, 4]]), resolution=8)
    assert coords.tolist() == [[0, 0, 5, 4], [0, 0, 5, 5], [0, 3, 1, 2]]
    with pytest.raises(ValueError, match=r"points must be \[N, 3\]"):
        voxels_from_points(np.zeros((4, 2), dtype=int))
    with pytest.raises(ValueError, match="points is empty"):
        voxels_from_points(np.zeros((0, 3), dtype=int))
    with pytest.raises(ValueError, match="must be integer voxel indices, got dtype float64"):
        voxels_from_points(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"points must lie in \[0, 8\), got values in \[-1, 8\]"):
        voxels_from_points(np.array([[-1, 0, 0], [8, 0, 0]]), resolution=8)


def test_normalize_vertices():
    v = np.array([[1.0, 2.0, 3.0], [5.0, 3.0, 4.0]])
    normalized, center, scale = normalize_vertices(v)
    assert np.allclose(center, [3.0, 2.5, 3.5]) and scale == 0.25
    assert np.allclose(normalized, [[-0.5, -0.125, -0.125], [0.5, 0.125, 0.125]])
    with pytest.raises(ValueError, match="all vertices are at one point"):
        normalize_vertices(np.ones((3, 3)))


def test_transfer_colors(sphere_mesh):
    g = Gaussians(
        positions=[[0, 0, 0.3], [0, 0, -0.3]], scales=np.ones((2, 3)), rotations=[[1, 0, 0, 0]] * 2,
        opacities=[1, 1], sh_dc=np.array([[1, -1, -1], [-1, -1, 1]]) / SH_C0 / 2,
    )
    colors = transfer_colors(sphere_mesh, g.positions, g.rgb)
    assert colors.shape == (sphere_mesh.num_vertices, 3) and colors.dtype == np.float32
    z = sphere_mesh.vertices[:, 2]
    assert np.allclose(colors[z > 0.01], RED) and np.allclose(colors[z < -0.01], BLUE)
    assert np.allclose(transfer_colors(np.zeros((1, 3)), [[1, 0, 0], [0.1, 0, 0]], [[0.0], [1.0]]), [[1.0]])
    with pytest.raises(ValueError, match=r"source_colors must be \[P, C\] with P = 2"):
        transfer_colors(sphere_mesh, g.positions, g.rgb[:1])


@pytest.mark.parametrize("fill_interior", [True, False])
def test_random_fields_mesh_with_every_vertex_coloured_from_an_active_corner(fill_interior):
    """Random decoder fields (as random weights give) make Lewiner put vertices *inside* cubes for
    ambiguous cases; each must take the colour of an active corner of its cube (this crashed with
    "a mesh vertex lies on no edge of an active cube" when only edge endpoints were tried)."""
    rng = np.random.default_rng(0)
    grid, interior_vertices = 16, 0
    for _ in range(40):
        coords = np.unique(rng.integers(2, 14, size=(int(rng.integers(5, 300)), 3)), axis=0)
        sdf = rng.normal(0, rng.choice([0.01, 0.1, 1.0, 100.0]), size=(len(coords), 8))
        colors = rng.random((len(coords), 8, 3))
        mesh = extract_mesh(coords, sdf, grid, colors, fill_interior=fill_interior)
        if not mesh.num_vertices:
            continue
        pos = (mesh.vertices + 0.5) * grid
        interior_vertices += int(((np.abs(pos - np.rint(pos)) > 1e-6).sum(1) >= 2).sum())
        keys, means = _vertex_table(coords, colors, grid)
        corner = np.clip(np.floor(pos).astype(np.int64)[:, None] + CUBE_CORNERS[None], 0, grid)
        corner_keys = (corner[..., 0] * (grid + 1) + corner[..., 1]) * (grid + 1) + corner[..., 2]
        allowed = np.isin(corner_keys, keys)
        assert allowed.any(1).all()
        # the vertex's colour is the mean colour of one of its cube's active corners
        rows = np.searchsorted(keys, corner_keys).clip(0, len(keys) - 1)
        match = (np.abs(means[rows] - mesh.vertex_colors[:, None]).max(-1) < 1e-5) & allowed
        assert match.any(1).all()
    assert interior_vertices > 0, "the fields should exercise vertices inside cubes"
