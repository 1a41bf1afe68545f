import pytest
import torch
import torch.nn.functional as F

from fuse3d.trellis.graphsafe import HostSyncMode
from fuse3d.trellis.sparse import (
    SparseConv3d,
    SparseDownsample,
    SparseSubdivide,
    SparseTensor,
    SparseUpsample,
    dense_convolutions,
    neighbour_map,
    sparse_cat,
)


def random_voxels(n_per_batch=(40, 25), res=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = []
    for b, n in enumerate(n_per_batch):
        flat = torch.randperm(res**3, generator=g)[:n].sort().values
        xyz = torch.stack([flat // res**2, (flat // res) % res, flat % res], dim=1)
        coords.append(torch.cat([torch.full((n, 1), b), xyz], dim=1))
    return torch.cat(coords).int()


def test_neighbour_map_matches_brute_force():
    coords = random_voxels()
    nbr = neighbour_map(coords, 3)
    lookup = {tuple(c.tolist()): i for i, c in enumerate(coords)}
    offsets = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)]
    for i, c in enumerate(coords.tolist()):
        for k, (dx, dy, dz) in enumerate(offsets):
            j = lookup.get((c[0], c[1] + dx, c[2] + dy, c[3] + dz), -1)
            assert nbr[i, k].item() == j
    # the centre offset is the voxel itself
    assert torch.equal(nbr[:, 13], torch.arange(len(coords)))


def test_submanifold_conv_equals_dense_conv_at_active_voxels():
    torch.manual_seed(0)
    coords = random_voxels(res=8)
    x = SparseTensor(torch.randn(len(coords), 5), coords)
    conv = SparseConv3d(5, 7, 3)
    torch.nn.init.normal_(conv.conv.bias)
    out = conv(x)
    dense = x.dense(8)  # [B, C, 8, 8, 8], zeros at inactive voxels
    w = conv.conv.weight.permute(0, 4, 1, 2, 3)  # [out, in, kx, ky, kz]
    ref = F.conv3d(dense, w, conv.conv.bias, padding=1)
    c = coords.long()
    expected = ref[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
    assert (out.feats - expected).abs().max() < 1e-5
    # a second call reuses the cached neighbour map of this voxel set
    assert "neighbours_3" in x._cache


def test_conv_1x1_is_linear():
    coords = random_voxels()
    x = SparseTensor(torch.randn(len(coords), 4), coords)
    conv = SparseConv3d(4, 3, 1)
    out = conv(x)
    w = conv.conv.weight.reshape(3, 4)
    assert torch.allclose(out.feats, x.feats @ w.t() + conv.conv.bias, atol=1e-6)


def test_downsample_cells_sorted_and_upsample_returns():
    coords = random_voxels(res=8)
    x = SparseTensor(torch.randn(len(coords), 3), coords)
    down = SparseDownsample(2)(x)
    cells = down.coords.long()
    keys = ((cells[:, 0] * 8 + cells[:, 1]) * 8 + cells[:, 2]) * 8 + cells[:, 3]
    assert torch.all(keys[1:] > keys[:-1]), "cells sorted by (batch, x, y, z), unique"
    # each voxel's cell is coord // 2 and the pooled value is sum / (count + 1) (published behaviour)
    parent = coords.long().clone()
    parent[:, 1:] //= 2
    for i, cell in enumerate(cells.tolist()):
        members = (parent == torch.tensor(cell)).all(dim=1)
        expected = x.feats[members].sum(0) / (members.sum() + 1)
        assert torch.allclose(down.feats[i], expected, atol=1e-6)
    up = SparseUpsample(2)(down)
    assert torch.equal(up.coords, x.coords)
    member_cell = {tuple(c): i for i, c in enumerate(cells.tolist())}
    for j in range(len(coords)):
        assert torch.equal(up.feats[j], down.feats[member_cell[tuple(parent[j].tolist())]])


def test_downsampling_the_same_voxels_again_reuses_its_cells():
    """Every sampler step downsamples the same voxels: the cells (and the coarse tensors' cache, so
    their neighbour maps) are built once, and a later forward reads nothing from the host."""
    coords = random_voxels(res=8)
    x = SparseTensor(torch.randn(len(coords), 3), coords)
    first = SparseDownsample(2)(x)
    first.cache("probe", lambda: "built at the first step")
    with HostSyncMode() as found:
        again = SparseDownsample(2)(x.replace(x.feats * 2))
    reads = found.calls
    assert reads == [] and again.cache("probe", lambda: "rebuilt") == "built at the first step"
    assert torch.equal(again.coords, first.coords) and torch.allclose(again.feats, 2 * first.feats)
    assert torch.equal(SparseUpsample(2)(again).coords, x.coords)


def test_upsample_without_downsample_is_an_error():
    x = SparseTensor(torch.randn(3, 2), random_voxels((3,)))
    with pytest.raises(ValueError, match="SparseDownsample"):
        SparseUpsample(2)(x)


def test_subdivide_child_order():
    coords = torch.tensor([[0, 1, 2, 3], [1, 0, 0, 0]], dtype=torch.int32)
    x = SparseTensor(torch.tensor([[1.0], [2.0]]), coords)
    y = SparseSubdivide()(x)
    assert y.coords.shape == (16, 4)
    assert y.coords[:8, 1:].tolist() == [[2 + i, 4 + j, 6 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    assert y.feats[:8].eq(1).all() and y.feats[8:].eq(2).all()
    assert y.coords[8:, 0].eq(1).all()


def test_batch_broadcast_arithmetic_and_layout():
    coords = random_voxels((4, 6))
    x = SparseTensor(torch.ones(10, 2), coords)
    y = x * torch.tensor([[2.0, 3.0], [5.0, 7.0]]) + 1
    assert y.feats[:4].tolist() == [[3.0, 4.0]] * 4
    assert y.feats[4:].tolist() == [[6.0, 8.0]] * 6
    assert [(s.start, s.stop) for s in x.layout] == [(0, 4), (4, 10)]
    assert x[1].batch_size == 1 and len(x[1]) == 6
    both = sparse_cat([x[0], x[1]])
    assert torch.equal(both.coords, x.coords)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="coords must be"):
        SparseTensor(torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="disagree"):
        SparseTensor(torch.zeros(4, 2), torch.zeros(3, 4, dtype=torch.int32))


def test_chunked_conv_equals_one_shot(monkeypatch):
    import fuse3d.trellis.sparse as sp

    torch.manual_seed(0)
    coords = random_voxels((50, 40))
    x = SparseTensor(torch.randn(90, 6), coords)
    conv = SparseConv3d(6, 5, 3)
    whole = conv(x).feats
    monkeypatch.setattr(sp, "GATHER_BYTES", 27 * 6 * 4 * 7)  # 7 rows per chunk
    x2 = SparseTensor(x.feats, coords)
    assert torch.allclose(conv(x2).feats, whole, atol=1e-6)


@torch.enable_grad()
def test_conv_backward_is_the_flipped_gather(monkeypatch):
    import fuse3d.trellis.sparse as sp

    torch.manual_seed(0)
    coords = random_voxels((30, 20), res=6)
    feats = torch.randn(50, 3, dtype=torch.float64, requires_grad=True)
    conv = SparseConv3d(3, 4, 3).double()
    torch.nn.init.normal_(conv.conv.bias)
    out = conv(SparseTensor(feats, coords)).feats
    g = torch.randn_like(out)
    (out * g).sum().backward()
    # reference: autograd through a dense convolution evaluated at the active voxels
    f2 = feats.detach().clone().requires_grad_(True)
    w2 = conv.conv.weight.detach().clone().requires_grad_(True)
    dense = SparseTensor(f2, coords).dense(6)
    ref = F.conv3d(dense, w2.permute(0, 4, 1, 2, 3), conv.conv.bias.detach(), padding=1)
    c = coords.long()
    ((ref[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]) * g).sum().backward()
    assert torch.allclose(feats.grad, f2.grad, atol=1e-10)
    assert torch.allclose(conv.conv.weight.grad, w2.grad, atol=1e-10)
    assert torch.allclose(conv.conv.bias.grad, g.sum(0), atol=1e-10)
    # chunked backward gives the same gradients
    monkeypatch.setattr(sp, "GATHER_BYTES", 27 * 4 * 8 * 7)
    feats.grad = None
    conv.conv.weight.grad = None
    (conv(SparseTensor(feats, coords)).feats * g).sum().backward()
    assert torch.allclose(feats.grad, f2.grad, atol=1e-10) and torch.allclose(conv.conv.weight.grad, w2.grad, atol=1e-10)


@torch.enable_grad()
def test_the_dense_training_path_equals_the_sparse_one_with_gradients():
    """dense_convolutions() (training only) gives the submanifold convolution's outputs and gradients."""
    torch.manual_seed(0)
    coords = random_voxels((30, 20), res=6)
    conv = SparseConv3d(3, 4, 3).double()
    torch.nn.init.normal_(conv.conv.bias)
    grads = []
    for dense in (False, True):
        feats = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        conv.zero_grad()
        with dense_convolutions(conv, dense):
            out = conv(SparseTensor(feats, coords)).feats
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads.append((out.detach(), feats.grad, conv.conv.weight.grad.clone(), conv.conv.bias.grad.clone()))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)
    assert conv.dense is False, "restored on exit"


@torch.enable_grad()  # the tests run under no_grad (conftest)
def test_per_element_operands_get_their_rows_summed_gradients():
    """``x * scale`` with ``scale [B, C]`` reads row ``batch_index``; the gradient of ``scale`` is the sum
    over each element's rows."""
    coords = random_voxels((5, 9, 3))
    feats = torch.randn(17, 4)
    scale = torch.randn(3, 4, requires_grad=True)
    (SparseTensor(feats, coords) * scale).feats.sum().backward()
    expected = torch.stack([feats[sl].sum(0) for sl in SparseTensor(feats, coords).layout])
    assert torch.allclose(scale.grad, expected, atol=1e-6)
