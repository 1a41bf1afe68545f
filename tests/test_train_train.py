"""Training code of the small model, on shrunken networks (same classes, a few channels) and a few objects."""
import json

import numpy as np
import pytest
import torch

from fuse3d.train import train as T
from fuse3d.testing import randomize_
from fuse3d.train.data import make_objects
from fuse3d.trellis import load_pipeline


def shrink(args: dict, cls: str) -> dict:
    """The same network at a fraction of the width and depth."""
    out = dict(args)
    width = out.get("model_channels") if cls == "SLatMeshDecoder" else 32  # its subdivisions need the width
    for key, small in (("model_channels", width), ("num_blocks", 1), ("num_heads", 4)):
        if key in out:
            out[key] = small
    if "channels" in out:
        out["channels"] = [32 for _ in out["channels"]]
    if "io_block_channels" in out:
        out["io_block_channels"] = [32]
    if "cond_channels" in out:
        out["cond_channels"] = 32
    return out


@pytest.fixture(autouse=True)
def _no_grad():  # overrides conftest's: training needs gradients
    with torch.enable_grad():
        yield


@pytest.fixture
def small(monkeypatch):
    nets = {k: (key, cls, shrink(a, cls)) for k, (key, cls, a) in T.NETWORKS.items()}
    monkeypatch.setattr(T, "NETWORKS", nets)
    monkeypatch.setattr(T, "ENCODER", {**T.ENCODER, "embed_dim": 32, "depth": 1, "num_heads": 2})
    torch.manual_seed(0)
    return T.build_networks("cpu")


@pytest.fixture(scope="module")
def objects():
    return make_objects([100000, 100001, 100002], views=2, fine_samples=256)


def test_rescaled_structure_latent_has_unit_scale_and_decodes_the_same(small, objects):
    nets = small
    occ = T.occupancy(objects, "cpu")
    with torch.no_grad():
        before = nets["ss_decoder"](nets["ss_encoder"](occ))
        sigma = T.rescale_structure_latent(nets, objects, "cpu")
        z, mean, logvar = nets["ss_encoder"](occ, return_raw=True)
        after = nets["ss_decoder"](z)
    assert len(sigma) == 8 and min(sigma) > 0
    assert torch.allclose(z.transpose(0, 1).reshape(8, -1).std(1), torch.ones(8), atol=1e-3)
    assert (after - before).abs().max() < 1e-4 * before.abs().max()


def test_checkpoint_round_trip_keeps_networks_and_ema(small, objects, tmp_path):
    nets = small
    ema = {n: T.copy.deepcopy(nets[n]) for n in T.FLOW_NETS}
    with torch.no_grad():
        for p in ema["slat_flow"].parameters():
            p.add_(0.5)
    state = {"objects": 3, "steps": {"vae": 1, "flow": 2}, "seconds": {"vae": 1.0, "flow": 2.0},
             "slat_normalization": {"mean": [0.0] * 8, "std": [1.0] * 8}, "log": []}
    T.save_checkpoint(nets, ema, state, tmp_path)
    fresh = T.build_networks("cpu")
    fresh_ema = {n: T.copy.deepcopy(fresh[n]) for n in T.FLOW_NETS}
    assert T.load_checkpoint(fresh, fresh_ema, tmp_path) == state
    for name in ("ss_decoder", "slat_flow", "encoder"):
        for a, b in zip(nets[name].parameters(), fresh[name].parameters()):
            assert torch.allclose(a, b, atol=2e-3, rtol=1e-3)  # stored in fp16
    diff = [(a - b).abs().max() for a, b in zip(ema["slat_flow"].parameters(), fresh_ema["slat_flow"].parameters())]
    assert max(diff) < 2e-3
    assert not torch.equal(next(fresh_ema["slat_flow"].parameters()), next(fresh["slat_flow"].parameters()))
    (tmp_path / "ema.safetensors").unlink()  # a checkpoint carried without its EMA: averages restart
    again, again_ema = T.build_networks("cpu"), {n: T.copy.deepcopy(fresh[n]) for n in T.FLOW_NETS}
    T.load_checkpoint(again, again_ema, tmp_path)
    for name in T.FLOW_NETS:
        assert all(torch.equal(a, b) for a, b in zip(again_ema[name].parameters(), again[name].parameters()))


@pytest.mark.parametrize("bf16", [False, True])
def test_flow_losses_train_every_flow_network(small, objects, bf16):
    nets = small
    with torch.no_grad():  # past the zero-initialised output layers, as after a few steps
        for name in ("ss_flow", "slat_flow"):
            randomize_(nets[name], torch.Generator().manual_seed(1), gain=0.5)
    norm = [torch.zeros(8), torch.ones(8)]
    data = T.FlowData(nets, objects, norm, "cpu")
    x0_ss, occ16, img, x0_slat = data.batch(np.array([2, 0, 1]), np.random.default_rng(0), n_slat=2)
    assert x0_ss.shape == (3, 8, 16, 16, 16) and img.shape == (3, 3, 518, 518)
    assert occ16.shape == (3, 1, 16, 16, 16) and set(occ16.unique().tolist()) == {0.0, 1.0}
    assert x0_slat.batch_size == 2 and len(x0_slat.feats) == len(objects[2].coords) + len(objects[0].coords)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = T.flow_losses(nets, data, np.array([0, 1, 2]), np.random.default_rng(0), n_slat=1)
    assert set(losses) == {"ss_flow", "slat_flow", "probe"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name in T.FLOW_NETS + ("probe",):
        grads = [p.grad for p in nets[name].parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name


def test_coarse_occupancy_marks_every_cell_with_a_voxel(objects):
    occ = T.occupancy(objects[:1], "cpu")
    coarse = T.coarse_occupancy(occ)
    cells = {tuple(c) for c in (objects[0].coords // 4).tolist()}
    assert coarse.shape == (1, 1, 16, 16, 16) and int(coarse.sum()) == len(cells)
    assert all(coarse[0, 0][c] == 1 for c in cells)


def test_structure_probe_learns_an_object_from_its_tokens(small, objects):
    nets = small
    probe, encoder = nets["probe"], nets["encoder"]
    img = T.images(objects[:1], np.random.default_rng(0), "cpu")
    target = T.coarse_occupancy(T.occupancy(objects[:1], "cpu"))
    logits = probe(encoder(img))
    assert logits.shape == (1, 1, 16, 16, 16)
    opt = torch.optim.Adam([*probe.parameters(), *encoder.parameters()], lr=3e-3)
    first = None
    for _ in range(30):
        loss = T.probe_loss(probe, encoder(img), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_probe_output_channel_is_an_offset_inside_every_2x2x2_patch(small):
    """Output channel k of every query lands at offset (k // 4, k // 2 % 2, k % 2) of its 2³ patch."""
    probe = small["probe"]
    with torch.no_grad():
        probe.out.weight.zero_()
        probe.out.bias.zero_()
        probe.out.bias[5] = 1.0  # inside each patch: offset (1, 0, 1)
        out = probe(torch.zeros(1, 4, T.ENCODER["embed_dim"]))[0, 0]
    assert out.sum() == 512 and out[1::2, 0::2, 1::2].sum() == 512


def test_ema_update_moves_towards_the_network(small):
    nets = small
    ema = {"ss_flow": T.copy.deepcopy(nets["ss_flow"])}
    with torch.no_grad():
        for p in nets["ss_flow"].parameters():
            p.add_(1.0)
    before = next(ema["ss_flow"].parameters()).clone()
    T.ema_update(ema, nets, step=10_000, decay=0.9)
    after = next(ema["ss_flow"].parameters())
    assert torch.allclose(after, before + 0.1, atol=1e-5)


def test_lr_warms_up_then_decays_to_a_tenth():
    assert T.lr_at(0, 0.0, 1.0, warmup=10) == pytest.approx(0.1)
    assert T.lr_at(50, 0.0, 1.0, warmup=10) == pytest.approx(1.0)
    assert T.lr_at(50, 0.5, 1.0, warmup=10) == pytest.approx(0.55)
    assert T.lr_at(50, 2.0, 1.0, warmup=10) == pytest.approx(0.1)


def test_chunks_resume_and_export_a_loadable_model(small, tmp_path):
    work = tmp_path / "work"
    common = ["--work", str(work), "--objects", "2", "--views", "1", "--workers", "1", "--vae-batch", "1",
              "--flow-batch", "2", "--ss-batch", "2", "--probe-batch", "2", "--total-minutes", "0.05", "--data-cache", str(tmp_path / "data")]
    T.main(common + ["--minutes", "0.12"])
    first = json.loads((work / "ckpt" / "state.json").read_text())
    assert first["steps"]["vae"] > 0 and first["slat_normalization"] is not None
    assert "structure_latent_scale" in first
    T.main(common + ["--minutes", "0.08"])  # resumes: counts keep growing
    second = json.loads((work / "ckpt" / "state.json").read_text())
    assert second["steps"]["flow"] > first["steps"]["flow"]
    T.main(common + ["--minutes", "0.2", "--structure-only"])
    third = json.loads((work / "ckpt" / "state.json").read_text())
    assert third["steps"]["structure"] > 0 and third["steps"]["flow"] == second["steps"]["flow"]
    T.main(["--work", str(work), "--minutes", "0", "--export", str(tmp_path / "model")])
    pipe = load_pipeline(tmp_path / "model", progress=False)
    assert pipe.model_name == T.MODEL_NAME and pipe.slat_normalization == second["slat_normalization"]
