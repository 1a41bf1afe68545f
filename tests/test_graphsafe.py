"""Graph-safe forwards: after the first step of a sampling builds the structure's plans, no flow
forward reads the host, copies host data to the device or makes a data-dependent shape."""
import pytest
import torch

from fuse3d import Fuse3D
from fuse3d.trellis.graphsafe import HostSyncMode


class ForwardRecorder:
    """Each flow forward's host calls, with the spatial cache (one per sampling's voxels) it ran on."""

    def __init__(self, trellis):
        self.calls = {"ss_flow": [], "slat_flow": []}
        self._restore = []
        for name in self.calls:
            module = getattr(trellis, name)
            original = module.forward
            module.forward = self._wrapped(name, original)
            self._restore.append((module, original))

    def _wrapped(self, name, original):
        def forward(x, *args, **kwargs):
            with HostSyncMode() as found:
                out = original(x, *args, **kwargs)
            structure = id(x._cache) if hasattr(x, "_cache") else None  # a sampling's voxels and their plans
            self.calls[name].append((structure, found.calls))
            return out
        return forward

    def close(self):
        for module, original in self._restore:
            module.forward = original

    def after_first_per_structure(self, name):
        seen, out = set(), []
        for structure, calls in self.calls[name]:
            if structure in seen:
                out.extend(calls)
            seen.add(structure)
        return out


def test_the_mode_finds_host_reads_copies_and_data_dependent_shapes():
    x = torch.randn(5)
    with HostSyncMode() as found:
        x.sum().item()
        x.tolist()
        bool(x[0] > 0)
        x[x > 0]
        x.nonzero()
        torch.tensor([1, 2])
        torch.arange(3).to("cpu")
        y = x * 2 + torch.as_tensor(x)  # an existing tensor: no copy
    assert [c.op for c in found.calls] == ["item", "tolist", "__bool__", "boolean-mask index", "nonzero", "tensor",
                                           "to(device)"]
    assert all(c.where.startswith("outside") for c in found.calls) and y.shape == (5,)
    with pytest.raises(RuntimeError, match="not graph-safe: item"):
        with HostSyncMode(strict=True):
            x.max().item()


@pytest.mark.parametrize("strategy,inpainting,tokens", [("shared", False, "full"), ("separate", True, "full"),
                                                       ("separate", False, "foreground")])
def test_flow_forwards_are_graph_safe_after_the_first_step(tiny_model_dir, conditions, strategy, inpainting, tokens):
    """Every processor runs here: the capture (separate and shared; with conditions of unequal
    lengths, padded, as the foreground tokens give), the enhanced final sampling (regions backend)
    and the default one of the structure flow; TRELLIS's own sampling too."""
    fuse3d = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    recorder = ForwardRecorder(fuse3d.trellis)
    try:
        g, locals_ = conditions
        fuse3d.run(g, locals_, seed=0, structure_steps=3, latent_steps=3, capture_strategy=strategy,
                   inpainting=inpainting, capture_tokens=tokens)
    finally:
        recorder.close()
    assert len(recorder.calls["slat_flow"]) >= 10 and len({s for s, _ in recorder.calls["slat_flow"]}) >= 2
    assert [c for _, calls in recorder.calls["ss_flow"] for c in calls] == []
    assert recorder.after_first_per_structure("slat_flow") == []
    # the first forward on each structure builds its plans, and only those do host work
    first = [str(c) for _, calls in recorder.calls["slat_flow"] for c in calls]
    assert first and all(c.split(" at ")[1].startswith(("fuse3d/trellis/sparse.py", "fuse3d/trellis/attention.py",
                                                           "fuse3d/method/kernels.py")) for c in first)


@pytest.mark.gpu
def test_each_flow_forward_records_in_a_cuda_graph_and_replays_equal_to_eager(tiny_model_dir):
    """After one eager forward on the voxels (it builds their plans), a forward of either flow records
    in a CUDA graph, and replaying it on new inputs gives the eager result."""
    from fuse3d.trellis.pipeline import load_pipeline
    from fuse3d.trellis.sparse import SparseTensor

    pipe = load_pipeline(tiny_model_dir, device="cuda", progress=False)
    gen = torch.Generator("cuda").manual_seed(0)
    cond = torch.randn(2, 1374, pipe.ss_flow.cond_channels, device="cuda", generator=gen)
    t = torch.full((2,), 600.0, device="cuda")
    coords = torch.cat([torch.stack([torch.full((300,), b), *torch.randint(0, 64, (3, 300))], 1)
                        for b in range(2)]).int().unique(dim=0).cuda()
    cases = {"ss_flow": lambda x: pipe.ss_flow(x, t, cond),
             "slat_flow": lambda f: pipe.slat_flow(SparseTensor(f, coords, 2, spatial_cache=cache), t, cond).feats}
    cache = {}
    inputs = {"ss_flow": lambda: torch.randn(2, 8, 16, 16, 16, device="cuda", generator=gen),
              "slat_flow": lambda: torch.randn(len(coords), 8, device="cuda", generator=gen)}
    for name, forward in cases.items():
        static = inputs[name]()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            forward(static)  # the eager first step: plans into the cache, kernels chosen
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = forward(static)
        fresh = inputs[name]()
        static.copy_(fresh)
        graph.replay()
        torch.testing.assert_close(out, forward(fresh), rtol=2e-3, atol=2e-3, msg=name)
