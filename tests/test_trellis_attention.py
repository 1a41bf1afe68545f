import pytest
import torch

from fuse3d.trellis.graphsafe import HostSyncMode
from fuse3d.trellis import ExplicitProcessor, SDPAProcessor, SparseTensor, attn_processors, build, set_attn_processor
from fuse3d.trellis.attention import MultiHeadAttention, window_partition

from test_trellis_sparse import random_voxels


class Recorder:
    """A processor that records its calls and defers to SDPA."""

    def __init__(self):
        self.calls = []

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        self.calls.append((tuple(q.shape), tuple(k.shape), batch))
        return SDPAProcessor()(attn, q, k, v, batch=batch, mask=mask)


def test_explicit_processor_equals_sdpa():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, ctx_channels=16, type="cross")
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 7, 16)
    a = attn(x, ctx)
    attn.processor = ExplicitProcessor()
    assert (attn(x, ctx) - a).abs().max() < 1e-5


def test_ragged_sparse_batch_runs_per_element():
    torch.manual_seed(0)
    coords = random_voxels((12, 20))
    x = SparseTensor(torch.randn(32, 32), coords)
    ctx = torch.randn(2, 5, 16)
    attn = MultiHeadAttention(32, 4, ctx_channels=16, type="cross")
    rec = Recorder()
    attn.processor = rec
    out = attn(x, ctx)
    assert [c[2] for c in rec.calls] == [range(0, 1), range(1, 2)]
    # element 1 alone gives the same rows
    alone = attn(x[1], ctx[1:])
    assert (out.feats[12:] - alone.feats).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_ragged_batch_under_default_processor_is_padded_and_exact(kind):
    """The default fused processor pads a ragged batch into one call; rows equal per-element runs."""
    torch.manual_seed(0)
    coords = random_voxels((12, 20, 7))
    x = SparseTensor(torch.randn(39, 32), coords)
    ctx = torch.randn(3, 5, 16) if kind == "cross" else None
    attn = MultiHeadAttention(32, 4, ctx_channels=16 if kind == "cross" else None, type=kind, qk_rms_norm=True)
    padded = attn(x, ctx).feats
    attn.processor = Recorder()  # any other processor: one element at a time
    per_element = attn(x, ctx).feats
    assert len(attn.processor.calls) == 3
    assert (padded - per_element).abs().max() < 1e-5


def test_equal_length_sparse_batch_is_one_call():
    coords = torch.cat([random_voxels((9,)), random_voxels((9,))])
    coords[9:, 0] = 1
    x = SparseTensor(torch.randn(18, 32), coords)
    attn = MultiHeadAttention(32, 4, type="self", qk_rms_norm=True)
    rec = Recorder()
    attn.processor = rec
    attn(x)
    assert rec.calls == [((2, 9, 4, 8), (2, 9, 4, 8), range(0, 2))]


def test_windowed_attention_equals_per_window_attention():
    torch.manual_seed(0)
    coords = random_voxels((60, 30), res=8)
    x = SparseTensor(torch.randn(90, 16), coords)
    attn = MultiHeadAttention(16, 2, type="self", attn_mode="windowed", window_size=4, shift_window=2)
    out = attn(x).feats
    # reference: explicit attention inside each shifted window
    c = coords.long().clone()
    c[:, 1:] = (c[:, 1:] + 2) // 4
    q, k, v = attn.to_qkv(x.feats).reshape(90, 3, 2, 8).unbind(1)
    ref = torch.empty(90, 2, 8)
    for key in torch.unique(c, dim=0):
        idx = (c == key).all(1).nonzero()[:, 0]
        w = torch.einsum("qhd,khd->hqk", q[idx], k[idx]).mul(attn.scale).softmax(-1)
        ref[idx] = torch.einsum("hqk,khd->qhd", w, v[idx])
    ref = attn.to_out(ref.reshape(90, 16))
    assert (out - ref).abs().max() < 1e-5


def test_window_partition_groups_by_window():
    coords = torch.tensor([[0, 0, 0, 0], [0, 7, 7, 7], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.int32)
    order, wid = window_partition(coords, 4, 0)
    assert order.tolist() == [0, 2, 1, 3]
    assert wid.tolist() == [0, 0, 1, 2]


def test_set_attn_processor_by_module_path():
    model = build("SparseStructureFlowModel", resolution=4, in_channels=2, model_channels=32, cond_channels=8,
                  out_channels=2, num_blocks=2, num_heads=4, patch_size=1, qk_rms_norm=True)
    procs = attn_processors(model)
    assert set(procs) == {f"blocks.{i}.{a}" for i in range(2) for a in ("self_attn", "cross_attn")}
    rec = Recorder()
    set_attn_processor(model, {"blocks.1.cross_attn": rec})
    model(torch.randn(1, 2, 4, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 8))
    assert len(rec.calls) == 1 and rec.calls[0][1] == (1, 3, 4, 8)
    with pytest.raises(KeyError, match="no attention module"):
        set_attn_processor(model, {"blocks.9.cross_attn": rec})


@pytest.mark.parametrize("path", ["padded", "windowed"])
@torch.enable_grad()  # the tests run under no_grad (conftest)
def test_gathered_attention_has_the_per_element_gradients(path):
    """The padded and windowed paths gather rows with ``index_select`` (whose backward is a scatter-add,
    far faster on a GPU than the sort-based backward of advanced indexing); the gradients are those
    of attention run element by element (or window by window, through the explicit processor)."""
    torch.manual_seed(1)
    coords = random_voxels((12, 20, 7))
    feats = torch.randn(39, 32, requires_grad=True)
    if path == "padded":
        attn = MultiHeadAttention(32, 4, type="self")
        fast = attn(SparseTensor(feats, coords)).feats
        whole = SparseTensor(feats, coords)
        slow = torch.cat([attn(whole[b]).feats for b in range(whole.batch_size)])
    else:
        attn = MultiHeadAttention(32, 4, type="self", attn_mode="windowed", window_size=4)
        fast = attn(SparseTensor(feats, coords)).feats
        attn.processor = ExplicitProcessor()
        slow = attn(SparseTensor(feats, coords)).feats
    weights = torch.randn_like(fast)
    g_fast, = torch.autograd.grad((fast * weights).sum(), feats)
    g_slow, = torch.autograd.grad((slow * weights).sum(), feats)
    assert (fast - slow).abs().max() < 1e-5 and (g_fast - g_slow).abs().max() < 1e-4


def test_windowed_attention_reads_nothing_from_the_host_once_its_plan_is_built():
    """The window plan (sort order, slots, window count, mask) is built once per structure; a forward
    on the same voxels (``x.replace(feats)``, as every sampler step does) then makes no host read."""
    torch.manual_seed(2)
    attn = MultiHeadAttention(32, 4, type="self", attn_mode="windowed", window_size=4, shift_window=2)
    x = SparseTensor(torch.randn(39, 32), random_voxels((12, 20, 7)))
    first = attn(x).feats
    x.layout  # the layout too is per structure
    with HostSyncMode() as found:
        again = attn(x.replace(x.feats.clone())).feats
    reads = found.calls
    assert reads == [] and torch.equal(first, again)
