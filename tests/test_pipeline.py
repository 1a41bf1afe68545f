"""The staged Fuse3D pipeline on the tiny model: stages, retune without networks, cache, bad inputs."""

import pytest
import torch

from fuse3d import Fuse3D
from fuse3d.cache import Cache, CacheWarning
from fuse3d.conditions import split_global

from conftest import NetworkCounter


FAST = dict(structure_steps=2, latent_steps=2)


@pytest.fixture(scope="module")
def fuse3d(tiny_model_dir):
    return Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)


@pytest.fixture(scope="module")
def run(fuse3d, conditions):
    g, locals_ = conditions
    return fuse3d.run(g, locals_, seed=0, **FAST)


def test_all_stages_run_with_documented_shapes(run, fuse3d):
    K, H = 2, fuse3d.trellis.slat_flow.num_heads
    n, m = len(run.structure), len(run.cells)
    assert run.structure.shape == (n, 4) and n > 0
    assert run.voxel_cell.shape == (n,) and int(run.voxel_cell.max()) == m - 1
    for k in range(K):
        assert run.head_scores(k).shape == (H, m)
        assert run.block_scores(k).shape == (run.num_blocks, H, m)
        assert run.step_scores(k).shape == (2, H, m)
        s = run.forward_scores(k)
        assert s.shape == (m,) and float(s.min()) == 0.0 and float(s.max()) == 1.0
        assert run.raw_mask(k).dtype == torch.bool and run.refined_mask(k).shape == (m,)
        assert run.aligned_voxels(k).shape == (n,)
    assert run.reverse_map.shape[:2] == (H, m)
    assert torch.equal(run.unaligned, ~(run.refined_mask(0) | run.refined_mask(1)))
    u = run.unified_tokens
    sizes = [5 + len(run.selected_patches(0)), 5 + len(run.selected_patches(1)), 5 + len(run.global_patches)]
    assert u.token_region.tolist() == [0] * sizes[0] + [1] * sizes[1] + [2] * sizes[2]
    assert torch.equal(u.tokens[: sizes[0]][5:], run.tokens(0)[5 + run.selected_patches(0)])
    assert len(run.lambdas) == 3 and all(l >= 1 for l in run.lambdas)
    assert run.final.feats.shape == (n, 8) and torch.isfinite(run.final.feats).all()
    assert run.summary()["model"] == "fuse3d-tiny-random"
    assert "fuse3d-tiny-random" in run._repr_html_()


def test_global_image_is_the_largest_selection(conditions):
    g, (l1, l2) = conditions
    chosen, rest = split_global([l1, g, l2])
    assert chosen is g and rest == [l1, l2]


def test_retune_calls_no_network(run, fuse3d):
    counter = NetworkCounter(fuse3d.trellis)
    try:
        for changes in ({"threshold": 0.4}, {"heads": [1, 2, 3]}, {"refine": False}, {"refine_k": 8},
                        {"strength": 3.0}, {"lambda_mode": "adaptive"}, {"lambdas": [2.0, 0.5]}):
            r = run.retune(**changes).compute("enhancement")
            assert r.enhancement.cell_regions.shape[0] == len(run.cells)
        assert counter.total() == 0, counter.calls
        # the change shows where it should
        lower = run.retune(threshold=0.2, refine=False)
        assert lower.raw_mask(0).sum() >= run.raw_mask(0).sum()
        assert run.retune(lambdas=[2.0, 0.5]).lambdas[:2] == [2.0, 0.5]
        assert counter.total() == 0
        # the final latent does need the network
        run.retune(strength=2.0).final
        assert counter.calls.get("slat_flow", 0) > 0
    finally:
        counter.remove()


def test_disk_cache_reload_is_bit_identical_and_corruption_is_recomputed(tiny_model_dir, conditions, tmp_path):
    g, locals_ = conditions
    a = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False, cache_dir=tmp_path)
    first = a.run(g, locals_, seed=1, **FAST)
    b = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False, cache_dir=tmp_path)
    counter = NetworkCounter(b.trellis)
    second = b.run(g, locals_, seed=1, **FAST)
    assert counter.total() == 0
    assert torch.equal(first.final.feats, second.final.feats)
    assert torch.equal(first.head_scores(1), second.head_scores(1))
    # only what was read came off the disk (a cached final latent needs none of its inputs)
    assert {r["stage"] for r in second.stages() if r["status"] == "done (disk)"} >= {"structure", "final", "capture"}
    assert all(r["status"] in ("done (disk)", "cached (disk)", "not computed") for r in second.stages())
    # corrupt the final latent's file: detected, reported, recomputed (same values)
    path = b.cache.path("final", second.key("final"))
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    c = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False, cache_dir=tmp_path)
    with pytest.warns(CacheWarning, match="unusable"):
        third = c.run(g, locals_, seed=1, **FAST)
    assert c.cache.stats["corrupt"] == 1
    assert torch.equal(third.final.feats, first.final.feats)
    assert c.cache.path("final", third.key("final")).is_file()


def test_capture_chunks_when_memory_runs_out(fuse3d, conditions, monkeypatch):
    g, locals_ = conditions
    whole = fuse3d.run(g, locals_, seed=2, lazy=True, **FAST)
    ref = [whole.head_scores(k) for k in range(2)]
    fresh = Fuse3D(fuse3d.trellis, Cache(), progress=False)
    import fuse3d.method.capture as capture_module

    original = capture_module.separate_capture
    sizes = []

    def limited(trellis, plan, which, progress=False):
        sizes.append(len(which))
        if len(which) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 9 GiB (simulated)")
        return original(trellis, plan, which, progress)

    monkeypatch.setattr(capture_module, "separate_capture", limited)
    chunked = fresh.run(g, locals_, seed=2, lazy=True, **FAST)
    for k in range(2):
        assert torch.allclose(chunked.head_scores(k), ref[k], atol=1e-5)
    assert sizes[0] == 3 and sizes[-1] == 1


def test_ablations_and_options_run(run):
    fg = run.retune(capture_tokens="foreground")
    assert fg.head_scores(0).shape == run.head_scores(0).shape
    assert not torch.equal(fg.head_scores(0), run.head_scores(0))
    no_rev = run.retune(reverse_alignment=False)
    assert len(no_rev.global_patches) == int(no_rev["encode", 2]["selected"].sum())
    off = run.retune(enhancement=False)
    assert torch.equal(off.enhancement.dense(), torch.ones_like(off.enhancement.dense()))
    inp = run.retune(inpainting=True)
    assert set(inp.unified_tokens.token_region.tolist()) == {0, 1}  # no global tokens
    keep = ~(inp.aligned_voxels(0) | inp.aligned_voxels(1))
    z0 = inp["capture", 2]["slat0"]
    fin = inp.final.feats
    std, mean = inp.trellis.slat_std, inp.trellis.slat_mean
    if keep.any():  # unaligned voxels end on the global image's latent
        assert torch.allclose(fin[keep], z0[keep] * std + mean, atol=1e-4)
    crop = run.retune(fusion="crop")
    assert crop.tokens(0).shape == run.tokens(0).shape and not torch.equal(crop.tokens(0), run.tokens(0))


def test_user_structure(fuse3d, conditions):
    g, locals_ = conditions
    grid = torch.zeros(64, 64, 64, dtype=torch.bool)
    grid[20:40, 20:40, 20:40] = True
    r = fuse3d.run(g, locals_, structure=grid, lazy=True, **FAST)
    assert len(r.structure) == 20 ** 3 and r.summary()["params"]["seed"] == 0
    assert r.retune(threshold=0.5).key("structure") == r.key("structure")


def test_export(run, tmp_path):
    from fuse3d.assets import read_ply

    ply = run.export(tmp_path / "a.ply")
    props = read_ply(ply)
    assert len(props["x"]) == len(run.gaussians)
    assert b"comment fuse3d_model: fuse3d-tiny-random" in ply.read_bytes()[:400]
    with pytest.raises(ValueError, match="export writes .glb"):
        run.export(tmp_path / "a.obj")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run.export(tmp_path / "missing" / "a.ply")
    assert not (tmp_path / "a.obj").exists()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"threshold": 1.5}, ValueError, r"threshold must be in \[0, 1\]"),
    ({"threshold": -0.1}, ValueError, r"threshold must be in \[0, 1\]"),
    ({"heads": [0, 16]}, ValueError, r"heads \[16\] out of range: the model has heads 0..15"),
    ({"strength": float("nan")}, ValueError, "strength must be a finite number >= 0"),
    ({"lambdas": [1.0, -2.0]}, ValueError, "λ must be a finite number >= 0"),
    ({"lambdas": [1.0]}, ValueError, "one λ per local condition"),
    ({"global_lambda": float("inf")}, ValueError, "global λ must be a finite number"),
    ({"capture_tokens": "all"}, ValueError, "capture_tokens must be one of"),
    ({"tresholds": 0.5}, TypeError, "unknown Fuse3D parameter"),
])
def test_bad_parameters_fail_before_any_work(fuse3d, conditions, kwargs, error, match):
    g, locals_ = conditions
    counter = NetworkCounter(fuse3d.trellis)
    try:
        with pytest.raises(error, match=match):
            fuse3d.run(g, locals_, **kwargs)
        assert counter.total() == 0
    finally:
        counter.remove()


def test_missing_weights(tmp_path):
    from fuse3d.trellis.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="missing checkpoint file"):
        (tmp_path / "m").mkdir()
        Fuse3D.from_pretrained(tmp_path / "m", progress=False)


@pytest.mark.gpu
def test_flex_enhancement_equals_explicit_on_cuda():
    from fuse3d.method.enhancement import enhancement_tables
    from fuse3d.method.kernels import enhanced_attention, flex_enhanced_attention

    torch.manual_seed(0)
    cells, tokens, heads, d = 4000, 900, 16, 64
    q = torch.randn(1, cells, heads, d, device="cuda")
    k = torch.randn(1, tokens, heads, d, device="cuda")
    v = torch.randn(1, tokens, heads, d, device="cuda")
    aligned = [torch.rand(cells) > 0.6, torch.rand(cells) > 0.8]
    region = torch.repeat_interleave(torch.arange(3), torch.tensor([300, 200, 400]))
    tables = enhancement_tables(aligned, ~(aligned[0] | aligned[1]), region, [3.0, 5.0, 2.0]).to("cuda")
    ref = enhanced_attention(q, k, v, d ** -0.5, tables)
    out = flex_enhanced_attention(q, k, v, d ** -0.5, tables)
    err = (out.float() - ref.float()).abs().max().item()
    from fuse3d.method.kernels import region_split_attention

    regions = region_split_attention(q.half(), k.half(), v.half(), d ** -0.5, tables).float()
    print(f"regions (fp16 inputs) vs explicit: {(regions - ref).abs().max().item():.2e}")
    half = flex_enhanced_attention(q.half(), k.half(), v.half(), d ** -0.5, tables).float()
    print(f"flex vs explicit max abs difference: {err:.2e} (fp32), {(half - ref).abs().max().item():.2e} (fp16 inputs)")
    assert err < 1e-3


def test_shared_strategy_scores_locals_against_the_global_queries(run, fuse3d):
    counter = NetworkCounter(fuse3d.trellis)
    try:
        shared = run.retune(capture_strategy="shared")
        for k in range(2):
            assert shared.head_scores(k).shape == run.head_scores(k).shape
            assert torch.isfinite(shared.head_scores(k)).all()
        # one sampling (latent steps 2, CFG on part of them) instead of one per image
        calls = counter.calls["slat_flow"]
        assert 2 <= calls <= 4
        # its reverse map comes from the same sampling as the global image's own capture run
        assert torch.allclose(shared.reverse_map.float(), run.reverse_map.float(), atol=2e-3)
    finally:
        counter.remove()


def _with_defaults(tiny_model_dir, tmp_path, defaults):
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    doc = json.loads((folder / "pipeline.json").read_text())
    doc.setdefault("fuse3d", {})["defaults"] = defaults
    (folder / "pipeline.json").write_text(json.dumps(doc))
    return folder


def test_a_model_folder_may_carry_its_own_alignment_defaults(tiny_model_dir, conditions, tmp_path):
    from fuse3d.params import PAPER_DEFAULTS

    plain = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    assert plain.defaults is PAPER_DEFAULTS and not plain.defaults.from_model
    own = Fuse3D.from_pretrained(_with_defaults(tiny_model_dir, tmp_path, {
        "heads": [3, 7], "threshold": 0.4, "source": "tuned on seeds 910000:910004"}), device="cpu", progress=False)
    assert own.defaults.from_model and own.defaults.heads == (3, 7)
    g, locals_ = conditions
    run = own.run(g, locals_, lazy=True, **FAST)
    assert run.params.heads == (3, 7) and run.params.threshold == 0.4
    assert own.run(g, locals_, lazy=True, heads=[1], **FAST).params.heads == (1,), "the user's choice wins"
    summary = run.summary()
    assert summary["defaults"] == {"heads": [3, 7], "threshold": 0.4, "source": "tuned on seeds 910000:910004"}
    assert plain.run(g, locals_, lazy=True, **FAST).summary()["defaults"]["heads"] == [0, 4, 12]


@pytest.mark.parametrize("defaults, match", [
    ({"heads": [99], "source": "x"}, r"fuse3d.defaults.heads \[99\] must be in 0..15"),
    ({"threshold": 3, "source": "x"}, r"threshold must be in \[0, 1\]"),
    ({"heads": [1]}, "must be"),
])
def test_malformed_model_defaults_name_the_file(tiny_model_dir, tmp_path, defaults, match):
    from fuse3d.trellis.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=match):
        Fuse3D.from_pretrained(_with_defaults(tiny_model_dir, tmp_path, defaults), device="cpu", progress=False)


def test_the_summary_reports_cached_stages_without_computing_them(tiny_model_dir, conditions, tmp_path):
    g, locals_ = conditions
    first = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False, cache_dir=tmp_path)
    first.run(g, locals_, seed=4, **FAST)
    again = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False, cache_dir=tmp_path)
    counter = NetworkCounter(again.trellis)
    try:
        run = again.run(g, locals_, seed=4, **FAST)  # the final latent is a cache hit: nothing upstream is read
        s = run.summary()
        assert len(s["aligned_cells"]) == 2 and len(s["lambdas"]) == 3 and s["global_tokens"] > 0
        assert counter.total() == 0
    finally:
        counter.remove()


def test_the_published_demo_sampler_preset(fuse3d, conditions):
    g, locals_ = conditions
    run = fuse3d.run(g, locals_, lazy=True, sampler="published-demo")
    from fuse3d.stages import STAGES, ParamView, sampler

    ss = sampler(run, ParamView(run.params, STAGES["structure"]), "structure")
    lat = sampler(run, ParamView(run.params, STAGES["final"]), "latent")
    assert (ss["steps"], ss["cfg_strength"]) == (12, 7.5) and (lat["steps"], lat["cfg_strength"]) == (12, 3.0)
    assert ss["rescale_t"] == fuse3d.trellis.ss_sampler_params["rescale_t"], "the rest stays pipeline.json's"
    over = run.retune(latent_steps=3)
    assert sampler(over, ParamView(over.params, STAGES["final"]), "latent")["steps"] == 3, "explicit values win"
    with pytest.raises(ValueError, match="sampler must be one of"):
        fuse3d.run(g, locals_, lazy=True, sampler="fast")


def test_without_cls_and_register_tokens(run):
    """Appendix C.1: no CLS/REG in the capture nor in the unified tokens."""
    bare = run.retune(prefix_tokens=False)
    u = bare.unified_tokens
    assert (u.token_patch >= 0).all()
    assert len(u.tokens) == len(bare.selected_patches(0)) + len(bare.selected_patches(1)) + len(bare.global_patches)
    assert bare["capture", 0]["fed_tokens"].min() == 5, "no prefix token fed"
    assert not torch.equal(bare.head_scores(0), run.head_scores(0))
    assert torch.isfinite(bare.final.feats).all()


def test_a_model_with_fewer_heads_than_the_papers_defaults_to_all_of_them():
    from fuse3d.params import PAPER_DEFAULTS, ModelDefaults

    assert ModelDefaults.read(None, 16) == PAPER_DEFAULTS
    four = ModelDefaults.read({}, 4)
    assert four.heads == (0, 1, 2, 3) and four.threshold == PAPER_DEFAULTS.threshold and "all 4 heads" in four.source
    assert ModelDefaults.read({"defaults": {"heads": [2], "threshold": 0.4, "source": "own"}}, 4).heads == (2,)
