"""CUDA-graph replay of a sampling's flow forwards (fuse3d.trellis.graphs): equal to eager, used only
where it is safe, and a no-op off CUDA."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fuse3d import Fuse3D
from fuse3d.trellis import graphs as graphs_module
from fuse3d.trellis import sampler as sampler_module
from fuse3d.trellis.attention import attn_processors
from fuse3d.trellis.graphs import GraphedFlow, graphable
from fuse3d.trellis.pipeline import load_pipeline
from fuse3d.trellis.sampler import t_schedule


STEPS = 3  # sampler steps: per branch one eager call, one recorded, then replays


class Recorded(GraphedFlow):
    """A GraphedFlow that remembers every instance the sampler made."""

    made = []

    def __init__(self, flow):
        super().__init__(flow)
        Recorded.made.append(self)


@pytest.fixture
def recorded(monkeypatch):
    Recorded.made = []
    monkeypatch.setattr(sampler_module, "GraphedFlow", Recorded)
    return Recorded.made


def sample_both(pipe, device, steps=STEPS):
    """(structure latent, structured latent) of one plain generation, sampler by sampler."""
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 1374, pipe.ss_flow.cond_channels, generator=gen).to(device)
    z = pipe.ss_sampler.sample(pipe.ss_flow, pipe.structure_noise(1, 0), cond, torch.zeros_like(cond), steps=steps,
                               cfg_strength=3.0, cfg_interval=(0.0, 1.0), progress=False,
                               cuda_graphs=pipe.cuda_graphs).samples
    coords = torch.cat([torch.zeros(400, 1), torch.randint(0, 64, (400, 3), generator=gen)], 1).int().unique(dim=0)
    slat = pipe.sample_latent(cond, coords.to(device), seed=0, steps=steps, cfg_strength=3.0, cfg_interval=(0.5, 1.0),
                              progress=False)
    return z, slat.feats


def test_off_cuda_the_flag_changes_nothing(tiny_model_dir, recorded):
    pipe = load_pipeline(tiny_model_dir, device="cpu", progress=False)
    pipe.cuda_graphs = False
    eager = sample_both(pipe, "cpu")
    pipe.cuda_graphs = True
    flagged = sample_both(pipe, "cpu")
    assert recorded == [], "no graph on the CPU"
    for a, b in zip(eager, flagged):
        assert torch.equal(a, b)
    assert not graphable(pipe.slat_flow, torch.zeros(3, 8))


class _Recording(TorchDispatchMode):
    """Every aten op a recorded call runs, with the very tensors it read and wrote, and what each
    tensor an op wrote into held before (a CUDA graph's capture runs nothing: :meth:`undo`)."""

    def __init__(self):
        super().__init__()
        self.ops, self.before = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._local_scalar_dense.default,):
            raise RuntimeError(f"{func} reads the device on the host: it cannot be recorded")
        for i, a in enumerate(func._schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                t = args[i] if i < len(args) else kwargs.get(a.name)
                if isinstance(t, torch.Tensor):
                    self.before.append((t, t.clone()))
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out

    def undo(self):
        for t, old in reversed(self.before):
            t.copy_(old)


def record_on_cpu(fn, pool=None):
    """A CPU emulation of a CUDA graph, with its contract: recording runs ``fn`` once, keeps the aten
    ops it ran and undoes what they wrote into existing tensors; a replay runs those ops again on the same tensors (the static inputs, the
    intermediates, the static output) and never ``fn``'s Python. A processor whose Python decides
    what to compute at each call (a step index, a counter) is replayed wrongly here, as on a GPU.
    View ops alias their input and need no replay; a mutating op mutates its recorded arguments; any
    other op's result is copied into its recorded output."""
    with _Recording() as rec:
        out = fn()
    rec.undo()  # what the recording wrote (running sums, counters) is as if nothing ran

    def replay():
        for func, args, kwargs, result in rec.ops:
            if func.is_view:
                continue
            fresh = func(*args, **kwargs)
            if func._schema.is_mutable or not isinstance(result, (torch.Tensor, tuple, list)):
                continue
            for r, f in zip(*((result, fresh) if isinstance(result, (tuple, list)) else ((result,), (fresh,)))):
                if isinstance(r, torch.Tensor):
                    r.copy_(f)

    return replay, out, pool


def test_static_buffers_carry_each_call_and_outputs_survive_the_next_replay(tiny_model_dir):
    """The replay logic on the CPU: every call's x and t reach the recorded forward, outputs kept
    across calls stay as they were, both CFG branches have their own graph; equal to eager."""
    pipe = load_pipeline(tiny_model_dir, device="cpu", progress=False)
    gen = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 1374, pipe.ss_flow.cond_channels, generator=gen)
    coords = torch.cat([torch.zeros(300, 1), torch.randint(0, 64, (300, 3), generator=gen)], 1).int().unique(dim=0)
    for flow, noise in ((pipe.ss_flow, pipe.structure_noise(1, 0)), (pipe.slat_flow, pipe.latent_noise(coords, 0))):
        kw = dict(steps=STEPS, cfg_strength=3.0, cfg_interval=(0.0, 1.0), progress=False, keep_trajectory=True)
        eager = pipe.ss_sampler.sample(flow, noise, cond, torch.zeros_like(cond), **kw)
        graphed = GraphedFlow(flow, record=record_on_cpu, warm=lambda fn: fn())
        replayed = pipe.ss_sampler.sample(graphed, noise, cond, torch.zeros_like(cond), **kw)
        assert graphed.replays == 2 * (STEPS - 1) and len(graphed._graphs) == 2
        for a, b in zip(eager.pred_x_0, replayed.pred_x_0):  # kept outputs of every step
            a, b = (a.feats, b.feats) if hasattr(a, "feats") else (a, b)
            assert torch.equal(a, b)
        x = noise.feats if hasattr(noise, "feats") else noise
        first = graphed(noise, torch.full((1,), 700.0), cond)  # a replay (the branch is recorded)
        kept = (first.feats if hasattr(first, "feats") else first).clone()
        graphed(noise.replace(x + 1) if hasattr(noise, "feats") else x + 1, torch.full((1,), 300.0), cond)
        assert torch.equal(first.feats if hasattr(first, "feats") else first, kept), "an output survives the next replay"
    with pytest.raises(ValueError, match="one sampling"):
        graphed(pipe.latent_noise(coords[:-1], 0), torch.full((1,), 500.0), cond)


def test_only_processors_that_do_the_same_work_at_every_call_of_a_branch_are_replayed():
    """A replay skips the processors' Python: the capture (running sums per step) and interventions
    (chosen steps) must stay eager; the default attention and the enhancement (branch alone) may not."""
    from fuse3d.method.capture import CaptureProcessor, CaptureState, CaptureTarget
    from fuse3d.method.enhancement import identity_tables
    from fuse3d.method.interventions import InterveningProcessor
    from fuse3d.method.kernels import EnhanceProcessor
    from fuse3d.trellis.attention import SDPAProcessor
    from fuse3d.trellis.graphs import replayable
    from fuse3d.trellis.sampler import CallTracker

    tracker, tables = CallTracker(), identity_tables(8, torch.zeros(10))

    def state(**kw):
        return CaptureState([CaptureTarget("forward", torch.arange(3))], num_heads=2, num_cells=8, num_blocks=2,
                            num_steps=2, **kw)

    assert replayable(SDPAProcessor())
    assert replayable(EnhanceProcessor(tables, tracker, "regions")) and replayable(EnhanceProcessor(tables, tracker))
    assert not replayable(EnhanceProcessor(tables, tracker, "flex"))
    assert replayable(CaptureProcessor(state(), tracker, 0)) and replayable(CaptureProcessor(state(blocks=[1]), tracker, 0))
    assert not replayable(CaptureProcessor(state(steps=[1]), tracker, 0)), "chosen steps: decided per call"
    assert not replayable(InterveningProcessor(EnhanceProcessor(tables, tracker), tracker, heads=[0]))


@pytest.fixture
def emulated(monkeypatch):
    """The sampler graphs on the CPU too, with :func:`record_on_cpu`, wherever the processors allow;
    yields the list of GraphedFlows it made."""
    made = []

    class Emulated(GraphedFlow):
        def __init__(self, flow):
            super().__init__(flow, record=record_on_cpu, warm=lambda fn: fn())
            made.append(self)

    monkeypatch.setattr(sampler_module, "GraphedFlow", Emulated)
    monkeypatch.setattr(sampler_module, "graphable",
                        lambda flow, x: all(graphs_module.replayable(p) for p in attn_processors(flow).values()))
    return made


def fuse3d_run(tiny_model_dir, conditions, graphs: bool, **params):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    pipe.trellis.cuda_graphs = graphs
    g, locals_ = conditions
    return pipe.run(g, locals_, seed=0, structure_steps=2, latent_steps=STEPS, **params)


def captured(run) -> dict:
    return {(i, name): run["capture", i][name] for i in range(run.K + 1) for name in run["capture", i].keys()}


@pytest.mark.parametrize("strategy", ["separate", "shared"])
def test_a_run_replayed_from_graphs_equals_the_eager_run(tiny_model_dir, conditions, emulated, strategy):
    """With replays that never run the processors' Python, every sampling of a Fuse3D run is graphed
    (structure, capture, enhanced final) and the run equals the eager one: every captured sum (per
    step and per block too) and the final latent, exactly."""
    eager = fuse3d_run(tiny_model_dir, conditions, False, capture_strategy=strategy)
    assert emulated == []
    replayed = fuse3d_run(tiny_model_dir, conditions, True, capture_strategy=strategy)
    assert [type(g.flow).__name__ for g in emulated] == ["SparseStructureFlowModel", "SLatFlowModel", "SLatFlowModel"]
    assert all(g.replays > 0 for g in emulated)
    assert torch.equal(replayed.structure, eager.structure)
    a, b = captured(eager), captured(replayed)
    assert a.keys() == b.keys() and any(name == "by_step" for _, name in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(replayed.final.feats, eager.final.feats)


def test_a_capture_of_chosen_steps_replayed_would_be_wrong_which_is_why_it_stays_eager(tiny_model_dir, conditions,
                                                                                       emulated, monkeypatch):
    """The control for the test above: with ``capture_steps``, whether a call adds is decided in
    Python at each step; a replay (forced here) repeats the recorded call's decision."""
    eager = fuse3d_run(tiny_model_dir, conditions, False, capture_steps=[0, 2])  # step 1 is recorded, not captured
    monkeypatch.setattr(graphs_module, "replayable", lambda p: True)
    forced = fuse3d_run(tiny_model_dir, conditions, True, capture_steps=[0, 2])
    by_step = [r["capture", 0]["by_step"] for r in (eager, forced)]
    assert not torch.equal(by_step[0], by_step[1])


def test_graphs_are_on_by_default_and_each_pipeline_switches_alone(tiny_model_dir):
    """On by default since the GPU tests below passed (docs/performance.md); the eager switch is
    per pipeline: nothing global changes."""
    a, b = (load_pipeline(tiny_model_dir, device="cpu", progress=False) for _ in range(2))
    assert a.cuda_graphs is True and b.cuda_graphs is True
    a.cuda_graphs = False
    assert b.cuda_graphs is True


@pytest.mark.gpu
def test_graph_replays_equal_eager_for_both_flows(tiny_model_dir, recorded):
    pipe = load_pipeline(tiny_model_dir, device="cuda", progress=False)
    pipe.cuda_graphs = False
    eager = sample_both(pipe, "cuda")
    assert recorded == []
    pipe.cuda_graphs = True
    replayed = sample_both(pipe, "cuda")
    # every call of a branch after its first (eager) one is a replay
    latent_t = t_schedule(STEPS, pipe.slat_sampler_params["rescale_t"])[:STEPS]
    expected = [2 * (STEPS - 1), (STEPS - 1) + (int((latent_t >= 0.5).sum()) - 1)]
    assert [g.replays for g in recorded] == expected
    for name, a, b in zip(("structure", "latent"), eager, replayed):
        torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-3, msg=name)


@pytest.mark.gpu
def test_a_fuse3d_run_graphs_every_sampling_and_equals_eager(tiny_model_dir, conditions, recorded):
    """Structure, capture and enhanced final samplings are graphed; the run equals eager."""
    g, locals_ = conditions
    runs = []
    for graphs_on in (False, True):
        pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cuda", progress=False)
        pipe.trellis.cuda_graphs = graphs_on
        runs.append(pipe.run(g, locals_, seed=0, structure_steps=STEPS, latent_steps=STEPS))
    assert [g.flow for g in recorded] == [runs[1].trellis.ss_flow] + [runs[1].trellis.slat_flow] * 2
    assert all(g.replays > 0 for g in recorded)
    assert torch.equal(runs[0].structure, runs[1].structure)
    eager, replayed = captured(runs[0]), captured(runs[1])
    for key in eager:
        torch.testing.assert_close(replayed[key].float(), eager[key].float(), rtol=2e-3, atol=2e-3, msg=str(key))
    torch.testing.assert_close(runs[1].final.feats, runs[0].final.feats, rtol=2e-3, atol=2e-3)
