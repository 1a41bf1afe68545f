"""The trainer on the tiny architecture (the same classes at toy width) and a few objects."""
import json
import shutil

import numpy as np
import pytest
import torch

from fuse3d.tiny_model import randomize_
from fuse3d.train import losses as L
from fuse3d.train import train as T
from fuse3d.train.config import parse
from fuse3d.train.data import make_objects
from fuse3d.trellis import load_pipeline
from fuse3d.trellis.architectures import SMALL, TINY
from fuse3d.trellis.checkpoint import read_json, read_safetensors, save_network, write_json, write_safetensors


@pytest.fixture(autouse=True)
def _grad():  # overrides conftest's: training needs gradients
    with torch.enable_grad():
        yield


@pytest.fixture(scope="module")
def encoder_prefix(tmp_path_factory):
    """A tiny 'pre-trained' encoder in the ckpts format, with the sidecar the pre-trainer writes."""
    folder = tmp_path_factory.mktemp("encoder")
    enc = randomize_(TINY.build_encoder(), torch.Generator().manual_seed(3)).eval()
    save_network(enc, folder / "encoder", "DinoV2Encoder", enc.config)
    write_json(folder / "encoder.pretrain.json", {"objects": 5, "views": 20, "seeds": "seeds 100000:100005", "steps": 7,
                                                 "targets": ["part-category shares", "object-space position"]})
    return folder / "encoder"


@pytest.fixture(scope="module")
def objects():
    return make_objects([100000, 100001, 100002], views=2, fine_samples=256, render_size=160)


def tiny_config(tmp_path, encoder_prefix, **kw):
    base = dict(work=str(tmp_path / "work"), encoder=str(encoder_prefix), architecture="tiny", objects=3, views=2,
                workers=1, vae_batch=2, flow_batch=2, ss_batch=3, render_size=160)
    return T.TrainConfig(**{**base, **kw})


@pytest.fixture
def trainer(tmp_path, encoder_prefix, objects):
    torch.manual_seed(0)
    t = T.Trainer(tiny_config(tmp_path, encoder_prefix), device="cpu")
    t.data = objects
    return t


def test_config_is_the_command_line_and_is_checked(tmp_path, encoder_prefix):
    cfg = parse(T.TrainConfig, ["--work", "w", "--encoder", "e", "--flows", "ss", "--no-dense-conv"])
    assert cfg.flow_names == ["ss"] and cfg.dense_conv is False and cfg.architecture == "small"
    with pytest.raises(ValueError, match="--flows takes ss, slat or ss,slat"):
        T.TrainConfig(work="w", encoder="e", flows="ss,vae")
    with pytest.raises(ValueError, match="--decoders takes gs, mesh or gs,mesh"):
        T.TrainConfig(work="w", encoder="e", decoders="rf")
    with pytest.raises(ValueError, match="unknown architecture 'huge'"):
        T.TrainConfig(work="w", encoder="e", architecture="huge")
    with pytest.raises(ValueError, match="has width 64; the small architecture's flows read 128"):
        T.Trainer(tiny_config(tmp_path, encoder_prefix, architecture="small"), device="cpu")


def test_the_small_architecture_fits_the_folder_budget_with_wide_heads():
    exported = sum(p.numel() for n in SMALL.exported() for p in SMALL.build(n).parameters())
    exported += sum(p.numel() for p in SMALL.build_encoder().parameters())
    assert exported * 2 < 20e6, "fp16 weights within the 20 MB model folder"
    for flow in ("ss_flow", "slat_flow"):
        args = SMALL.networks[flow].args
        assert args["model_channels"] // args["num_heads"] >= 32, "heads wide enough to carry a match"
    assert SMALL.width == SMALL.networks["slat_flow"].args["cond_channels"]


def test_rescaled_structure_latent_has_unit_scale_and_decodes_the_same(trainer, objects):
    nets = trainer.nets
    occ = L.occupancy(objects, "cpu")
    with torch.no_grad():
        before = nets["ss_decoder"](nets["ss_encoder"](occ))
        sigma = T.rescale_structure_latent(nets, objects, "cpu")
        z, mean, logvar = nets["ss_encoder"](occ, return_raw=True)
        after = nets["ss_decoder"](z)
    assert len(sigma) == 8 and min(sigma) > 0
    assert torch.allclose(z.transpose(0, 1).reshape(8, -1).std(1), torch.ones(8), atol=1e-3)
    assert (after - before).abs().max() < 1e-4 * before.abs().max()


def _flow_ready(trainer, objects):
    with torch.no_grad():  # past the zero-initialised output layers, as after a few steps
        for name in T.FLOW_NETS:
            randomize_(trainer.nets[name], torch.Generator().manual_seed(1), gain=0.5)
    trainer.flow_data = T.FlowData(trainer.nets, trainer.encoder, objects, [torch.zeros(8), torch.ones(8)], "cpu")


def test_flow_data_holds_the_frozen_encoders_tokens(trainer, objects):
    _flow_ready(trainer, objects)
    data = trainer.flow_data
    assert data.tokens.shape == (3, 2, 1374, TINY.width) and data.tokens.dtype == torch.bfloat16
    with torch.no_grad():
        ref = trainer.encoder(torch.as_tensor(objects[1].images[1:2]).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(data.tokens[1, 1].float(), ref[0], atol=0.05)
    x0_ss, tokens, x0_slat = data.batch(np.array([2, 0, 1]), np.random.default_rng(0), n_slat=2)
    assert x0_ss.shape == (3, 8, 16, 16, 16) and tokens.shape == (3, 1374, TINY.width)
    assert x0_slat.batch_size == 2 and len(x0_slat.feats) == len(objects[2].coords) + len(objects[0].coords)


def test_flow_data_grows_as_objects_arrive_and_equals_building_it_at_once(trainer, objects):
    norm = [torch.zeros(8), torch.ones(8)]
    whole = T.FlowData(trainer.nets, trainer.encoder, objects, norm, "cpu")
    grown = T.FlowData(trainer.nets, trainer.encoder, objects[:1], norm, "cpu", capacity=1)
    for s in objects[1:]:  # past its capacity: the token tensor grows
        grown.add([s])
    assert len(grown) == 3 and torch.allclose(grown.tokens.float(), whole.tokens.float(), atol=1e-2)
    for a, b in zip(grown.slat + grown.ss, whole.slat + whole.ss):  # batched alone or together: float rounding
        assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(grown.coords, whole.coords))


def test_seed_ranges_cover_exactly_the_seeds():
    assert T.seed_ranges([7, 3, 4, 5, 9, 4]) == [[3, 6], [7, 8], [9, 10]]
    assert T.seeds_in(T.seed_ranges([7, 3, 4, 5, 9])) == [3, 4, 5, 7, 9] and T.seed_ranges([]) == []


@pytest.mark.parametrize("bf16", [False, True])
def test_one_step_trains_both_flows_and_never_the_frozen_encoder(trainer, objects, bf16):
    _flow_ready(trainer, objects)
    trainer.config.bf16 = bf16
    groups = [list(trainer.nets[n].parameters()) for n in T.FLOW_NETS]
    opt = torch.optim.AdamW([p for g in groups for p in g], lr=1e-4)
    before = {n: [p.detach().clone() for p in trainer.nets[n].parameters()] for n in T.FLOW_NETS}
    ema_before = [p.clone() for p in trainer.ema["slat_flow"].parameters()]
    losses = trainer.step("flow", opt, groups, trainer.flow_losses, lr=1e-4)
    assert set(losses) == {"ss_flow", "slat_flow"} and all(np.isfinite(v) for v in losses.values())
    for n in T.FLOW_NETS:
        assert any(not torch.equal(a, b) for a, b in zip(before[n], trainer.nets[n].parameters())), n
    assert all(p.grad is None for p in trainer.encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, trainer.ema["slat_flow"].parameters()))
    assert trainer.state.steps["flow"] == 1 and trainer.state.flow_steps == {"ss_flow": 1, "slat_flow": 1}


def test_the_dense_convolution_path_gives_the_same_loss(trainer, objects):
    _flow_ready(trainer, objects)
    out = []
    for dense in (False, True):
        trainer.config.dense_conv, trainer.config.bf16 = dense, False
        trainer.rng = np.random.default_rng(5)
        torch.manual_seed(5)
        out.append(trainer.flow_losses(np.array([0, 1, 2]))["slat_flow"].item())
    assert out[0] == pytest.approx(out[1], rel=1e-5)


def test_flows_ss_trains_the_structure_flow_alone(tmp_path, encoder_prefix, objects):
    t = T.Trainer(tiny_config(tmp_path, encoder_prefix, flows="ss"), device="cpu")
    t.data = objects
    _flow_ready(t, objects)
    assert set(t.flow_losses(np.array([0, 1, 2]))) == {"ss_flow"} and t._trained_flows() == ["ss_flow"]
    group = [list(t.nets["ss_flow"].parameters())]
    t.step("flow", torch.optim.AdamW(group[0], lr=1e-4), group, t.flow_losses, lr=1e-4)
    assert t.state.steps["flow"] == 1 and t.state.flow_steps == {"ss_flow": 1, "slat_flow": 0}
    assert "1 structure-flow + 0 latent-flow steps" in t.description()  # the model says what each flow had


def test_time_mean_sets_where_the_flows_train(tmp_path, encoder_prefix, objects, monkeypatch):
    torch.manual_seed(0)
    for mean in (1.0, 0.0, -1.0):  # the median time of a logit-normal is sigmoid(mean)
        assert L.sample_times(20000, "cpu", mean).median().item() == pytest.approx(torch.sigmoid(torch.tensor(mean)).item(), abs=0.01)
    assert parse(T.TrainConfig, ["--work", "w", "--time-mean", "-0.5"]).time_mean == -0.5
    seen = []
    monkeypatch.setattr(T, "sample_times", lambda b, device, mean=1.0: seen.append(mean) or L.sample_times(b, device, mean))
    t = T.Trainer(tiny_config(tmp_path, encoder_prefix, flows="ss", time_mean=-0.5), device="cpu")
    t.data = objects
    _flow_ready(t, objects)
    t.flow_losses(np.array([0, 1, 2]))
    assert seen == [-0.5]


def test_checkpoint_round_trip_keeps_networks_and_ema(tmp_path, encoder_prefix, trainer):
    with torch.no_grad():
        for p in trainer.ema["slat_flow"].parameters():
            p.add_(0.5)
    trainer.state.steps = {"vae": 1, "decoders": 3, "flow": 2}
    trainer.state.flow_steps = {"ss_flow": 2, "slat_flow": 1}
    trainer.save()
    fresh = T.Trainer(tiny_config(tmp_path, encoder_prefix, seed=9), device="cpu")
    fresh.load()
    assert fresh.state == trainer.state
    older = read_json(trainer.ckpt / "state.json")  # before --flows, every flow step trained both flows
    del older["flow_steps"]
    write_json(trainer.ckpt / "state.json", older)
    fresh.load()
    assert fresh.state.flow_steps == {"ss_flow": 2, "slat_flow": 2}
    trainer.save()
    for name in ("ss_decoder", "slat_flow"):
        for a, b in zip(trainer.nets[name].parameters(), fresh.nets[name].parameters()):
            assert torch.allclose(a, b, atol=2e-3, rtol=1e-3)  # stored in fp16
    diff = [(a - b).abs().max() for a, b in zip(trainer.ema["slat_flow"].parameters(), fresh.ema["slat_flow"].parameters())]
    assert max(diff) < 2e-3
    for part in trainer.ckpt.glob("ema.*.safetensors"):  # a checkpoint carried without its EMA: averages restart
        part.unlink()
    again = T.Trainer(tiny_config(tmp_path, encoder_prefix), device="cpu")
    again.load()
    for name in T.FLOW_NETS:
        assert all(torch.equal(a, b) for a, b in zip(again.ema[name].parameters(), again.nets[name].parameters()))


def test_a_chunk_writes_one_layout_and_updates_the_files_it_resumed_from(tmp_path, encoder_prefix, trainer):
    """What lost a chunk's weights on 2026-12-07: the kept checkpoint is split by network
    (``ema.NET.safetensors``); the chunk wrote a whole ``ema.safetensors`` beside those files, and
    copying back the split names returned the old weights. A chunk now always writes the split
    layout, replaces an older trainer's whole-group file, and a folder holding both is refused."""
    trainer.save()
    layout = sorted(f"{g}.{n}.safetensors" for g, names in {**T.CKPT_GROUPS, "ema": T.FLOW_NETS}.items() for n in names)
    assert sorted(f.name for f in trainer.ckpt.glob("*.safetensors")) == layout
    # an older trainer's checkpoint: the EMA as one whole-group file
    ema_files = sorted(trainer.ckpt.glob("ema.*.safetensors"))
    write_safetensors(trainer.ckpt / "ema.safetensors", {k: v for f in ema_files for k, v in read_safetensors(f).items()})
    with pytest.raises(ValueError, match="one of them is stale"):
        T.Trainer(tiny_config(tmp_path, encoder_prefix), device="cpu").load()
    old = (trainer.ckpt / "ema.slat_flow.safetensors").read_bytes()
    for f in ema_files:
        f.unlink()
    resumed = T.Trainer(tiny_config(tmp_path, encoder_prefix), device="cpu")
    resumed.load()
    with torch.no_grad():
        for p in resumed.ema["slat_flow"].parameters():
            p.add_(0.5)
    resumed.save()
    assert sorted(f.name for f in trainer.ckpt.glob("*.safetensors")) == layout
    assert (trainer.ckpt / "ema.slat_flow.safetensors").read_bytes() != old
    again = T.Trainer(tiny_config(tmp_path, encoder_prefix), device="cpu")
    again.load()
    assert all(torch.equal(a, b.half().float()) for a, b in
               zip(again.ema["slat_flow"].parameters(), resumed.ema["slat_flow"].parameters()))


def test_a_checkpoint_from_before_the_decoder_phase_resumes_with_none_of_it(tmp_path, encoder_prefix, trainer):
    trainer.save()
    state = json.loads((trainer.ckpt / "state.json").read_text())
    for counter in ("steps", "seconds"):
        del state[counter]["decoders"]
    (trainer.ckpt / "state.json").write_text(json.dumps(state))
    fresh = T.Trainer(tiny_config(tmp_path, encoder_prefix), device="cpu")
    fresh.load()
    assert fresh.state.steps["decoders"] == 0 and fresh.state.seconds["decoders"] == 0.0


def test_the_decoder_phase_trains_the_decoders_alone_on_the_frozen_latent_space(tmp_path, encoder_prefix, capsys):
    """``--decoder-minutes``: after the autoencoders, only the two latent decoders change; the
    encoders, the latent normalisation and the flows stay, so trained flows remain valid."""
    work = tmp_path / "work"
    common = ["--work", str(work), "--architecture", "tiny", "--objects", "2", "--views", "0", "--workers", "1",
              "--vae-batch", "1", "--render-size", "160", "--total-minutes", "0.02", "--data-cache", str(tmp_path / "data")]
    T.main(common + ["--minutes", "0.1"])  # the autoencoders; no condition images, so no flow phase
    assert "the flow phase needs them" in capsys.readouterr().out
    before = T.Trainer(T.parse(T.TrainConfig, common), device="cpu")
    before.load()
    T.main(common + ["--minutes", "0.2", "--decoder-minutes", "0.05"])
    after = T.Trainer(T.parse(T.TrainConfig, common), device="cpu")
    after.load()
    assert after.state.steps["decoders"] > 0 and after.state.steps["vae"] == before.state.steps["vae"]
    assert after.state.slat_normalization == before.state.slat_normalization
    for name, net in after.nets.items():
        same = all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), before.nets[name].state_dict().values()))
        assert same == (name not in T.DECODER_NETS.values()), name


def test_resuming_with_another_encoder_is_refused(tmp_path, encoder_prefix, trainer):
    trainer.save()
    other = tmp_path / "other"
    enc = randomize_(TINY.build_encoder(), torch.Generator().manual_seed(4))
    save_network(enc, other, "DinoV2Encoder", enc.config)
    with pytest.raises(ValueError, match="trained with another condition encoder"):
        T.Trainer(tiny_config(tmp_path, other), device="cpu").load()


def test_ema_update_moves_towards_the_network(trainer):
    nets = trainer.nets
    ema = {"ss_flow": T.copy.deepcopy(nets["ss_flow"])}
    with torch.no_grad():
        for p in nets["ss_flow"].parameters():
            p.add_(1.0)
    before = next(ema["ss_flow"].parameters()).clone()
    T.ema_update(ema, nets, step=10_000, decay=0.9)
    assert torch.allclose(next(ema["ss_flow"].parameters()), before + 0.1, atol=1e-5)


def test_lr_warms_up_then_decays_to_a_tenth():
    assert T.lr_at(0, 0.0, 1.0, warmup=10) == pytest.approx(0.1)
    assert T.lr_at(50, 0.0, 1.0, warmup=10) == pytest.approx(1.0)
    assert T.lr_at(50, 0.5, 1.0, warmup=10) == pytest.approx(0.55)
    assert T.lr_at(50, 2.0, 1.0, warmup=10) == pytest.approx(0.1)


def test_chunks_resume_and_export_a_loadable_model(tmp_path, encoder_prefix):
    work = tmp_path / "work"
    common = ["--work", str(work), "--encoder", str(encoder_prefix), "--architecture", "tiny", "--objects", "2",
              "--views", "1", "--workers", "1", "--vae-batch", "1", "--flow-batch", "2", "--ss-batch", "2",
              "--render-size", "160", "--total-minutes", "0.05", "--data-cache", str(tmp_path / "data")]
    T.main(common + ["--minutes", "0.12"])
    first = json.loads((work / "ckpt" / "state.json").read_text())
    assert first["steps"]["vae"] > 0 and first["slat_normalization"] is not None
    assert first["structure_latent_scale"] is not None and first["architecture"] == "tiny"
    T.main(common + ["--minutes", "0.1"])  # resumes: counts keep growing
    second = json.loads((work / "ckpt" / "state.json").read_text())
    assert second["steps"]["flow"] > first["steps"]["flow"]
    T.main(common + ["--minutes", "0", "--export", str(tmp_path / "model")])
    pipe = load_pipeline(tmp_path / "model", progress=False)
    assert pipe.model_name == "fuse3d-tiny" and pipe.slat_normalization == second["slat_normalization"]
    assert "pre-trained on 20 renders of 5 procedural objects" in pipe.description and "frozen" in pipe.description
    with torch.no_grad():  # the exported encoder is the frozen one
        px = torch.rand(1, 3, 518, 518)
        ref = T.load_network(encoder_prefix, dtype="fp32")(px)
        assert torch.allclose(pipe.image_encoder(px), ref, atol=0.05)


def test_chunks_stream_their_objects_and_record_every_seed_trained_on(tmp_path, encoder_prefix, capsys):
    """Worker processes build the objects while the chunk trains; a later chunk may take new seeds, and
    the checkpoint (and the exported model's description) counts every object trained on."""
    work = tmp_path / "work"
    common = ["--work", str(work), "--encoder", str(encoder_prefix), "--architecture", "tiny", "--views", "1",
              "--workers", "2", "--vae-batch", "1", "--flow-batch", "2", "--ss-batch", "2", "--render-size", "160",
              "--total-minutes", "0.05"]
    T.main(common + ["--objects", "3", "--minutes", "0.12"])
    out = capsys.readouterr().out
    assert "3 of 3 objects ready" in out or "all 3 objects in" in out
    first = json.loads((work / "ckpt" / "state.json").read_text())
    assert first["seeds"] == [[100000, 100003]] and first["objects"] == 3
    T.main(common + ["--objects", "2", "--seed-base", "100010", "--minutes", "0.1"])
    second = json.loads((work / "ckpt" / "state.json").read_text())
    assert second["seeds"] == [[100000, 100003], [100010, 100012]] and second["objects"] == 5
    assert second["steps"]["flow"] > first["steps"]["flow"]
    T.main(common + ["--minutes", "0", "--export", str(tmp_path / "model")])
    assert "(5 objects," in load_pipeline(tmp_path / "model", progress=False).description


def test_the_autoencoder_phase_runs_without_an_encoder_and_the_flows_then_take_one(tmp_path, encoder_prefix, capsys):
    """The autoencoders read no condition tokens, so they can train while the encoder pre-trains."""
    work = tmp_path / "work"
    common = ["--work", str(work), "--architecture", "tiny", "--objects", "2", "--views", "1", "--workers", "1",
              "--vae-batch", "1", "--flow-batch", "2", "--ss-batch", "2", "--render-size", "160",
              "--total-minutes", "0.05", "--data-cache", str(tmp_path / "data")]
    T.main(common + ["--minutes", "0.12", "--copy-to", str(tmp_path / "out1")])
    first = json.loads((work / "ckpt" / "state.json").read_text())
    # --copy-to: state.json and the files of every network the chunk trained, as the checkpoint holds them
    vae_files = sorted(f"vae.{n}.safetensors" for n in T.VAE_NETS)
    assert sorted(f.name for f in (tmp_path / "out1").iterdir()) == sorted(vae_files + ["state.json"])
    assert all((tmp_path / "out1" / f).read_bytes() == (work / "ckpt" / f).read_bytes() for f in vae_files)
    assert first["encoder"] is None and first["steps"]["vae"] > 0 and first["steps"]["flow"] == 0
    assert first["slat_normalization"] is not None and "the flow phase needs --encoder" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs the --encoder"):
        T.main(common + ["--minutes", "0", "--export", str(tmp_path / "model")])
    for group in ("flows", "ema"):  # kept without the untrained flows, as a small checkpoint
        for part in (work / "ckpt").glob(f"{group}.*.safetensors"):
            part.unlink()
    T.main(common + ["--encoder", str(encoder_prefix), "--minutes", "0.08", "--copy-to", str(tmp_path / "out2")])
    second = json.loads((work / "ckpt" / "state.json").read_text())
    ema_files = sorted(f"ema.{n}.safetensors" for n in T.FLOW_NETS)  # the autoencoders stayed as they were
    assert sorted(f.name for f in (tmp_path / "out2").iterdir()) == sorted(ema_files + ["state.json"])
    kept = tmp_path / "kept" / "ckpt"  # the first chunk's copies, brought up to date by the second's
    kept.mkdir(parents=True)
    for f in [*(tmp_path / "out1").iterdir(), *(tmp_path / "out2").iterdir()]:
        shutil.copy(f, kept)
    resumed = T.Trainer(T.parse(T.TrainConfig, ["--work", str(kept.parent)] + common[2:] + ["--encoder", str(encoder_prefix)]),
                        device="cpu")
    resumed.load()
    assert resumed.state.steps == second["steps"]
    assert (kept / "ema.ss_flow.safetensors").read_bytes() == (work / "ckpt" / "ema.ss_flow.safetensors").read_bytes()
    assert second["steps"]["flow"] > 0 and second["steps"]["vae"] == first["steps"]["vae"]
    assert second["encoder"] == T.weights_digest(T.load_network(encoder_prefix, dtype="fp32"))
    with pytest.raises(ValueError, match="no --encoder was given"):  # the flows now belong to that encoder
        T.Trainer(T.parse(T.TrainConfig, common), device="cpu").load()
    # a longer schedule later leaves the autoencoders (and so the flows' latent space) as they are
    capsys.readouterr()
    longer = [a if a != "0.05" else "5" for a in common]
    T.main(longer + ["--encoder", str(encoder_prefix), "--minutes", "0.05"])
    third = json.loads((work / "ckpt" / "state.json").read_text())
    assert third["steps"]["vae"] == first["steps"]["vae"] and third["steps"]["flow"] > second["steps"]["flow"]
    assert third["slat_normalization"] == second["slat_normalization"]
    assert "the autoencoder phase stays closed" in capsys.readouterr().out


def test_the_kept_gpu_checkpoint_resumes_on_the_small_architecture(tmp_path):
    """checkpoints/2026-12-02 (docs/training.md): the pre-trained encoder and the bundled model's
    training checkpoint, kept with the flows only as their moving averages (split by network) (the file the flows
    themselves would need does not fit the device's carry). The trainer must take both; the flows
    resume from their averages, which are the bundled model's flows, and the decoders are the
    bundled ones."""
    import shutil
    from pathlib import Path

    from fuse3d.bundled import BUNDLED, SMALL_MODEL_NAME

    kept = Path(__file__).resolve().parents[1] / "checkpoints" / "2026-12-02"
    work = tmp_path / "work"
    shutil.copytree(kept / "latest", work / "ckpt")
    trainer = T.Trainer(T.TrainConfig(work=str(work), encoder=str(kept / "encoder"), objects=2400), device="cpu")
    trainer.load()
    assert trainer.state.steps == {"vae": 4294, "decoders": 1899, "flow": 41661} and trainer.state.objects == 46998
    assert trainer.state.seeds[0][0] == 100000 and trainer.state.seeds[-1][1] <= 900000  # never a test seed
    assert trainer.state.encoder == T.weights_digest(trainer.encoder)
    assert trainer.encoder.width == SMALL.width and len(trainer.encoder.vit.blocks) == 6
    bundled = load_pipeline(BUNDLED / SMALL_MODEL_NAME, progress=False)
    assert f"{trainer.state.objects} objects" in bundled.description
    assert trainer.state.flow_steps == {"ss_flow": 36440, "slat_flow": 20600}  # chunks 14-16 the structure flow, 17-19 the latent flow
    assert "36440 structure-flow + 20600 latent-flow steps" in bundled.description
    for name in (*T.FLOW_NETS, "slat_decoder_gs"):
        ours, theirs = trainer.nets[name].state_dict(), getattr(bundled, name).state_dict()
        assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-3) for k in theirs), name
    for part in (work / "ckpt").glob("ema.*.safetensors"):  # kept split by network, each file small
        part.unlink()  # trained flows with neither the flows nor their averages: refused
    with pytest.raises(ValueError, match=r"neither the flows \(flows.\*.safetensors\) nor their EMA"):
        T.Trainer(T.TrainConfig(work=str(work), encoder=str(kept / "encoder")), device="cpu").load()
