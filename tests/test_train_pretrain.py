"""Condition-encoder pre-training: heads, losses, a step that learns, checkpoints and export."""
import numpy as np
import pytest
import torch

from fuse3d.train.config import command_line, parse
from fuse3d.train.pretrain import (PATCH_TARGETS, DenseHeads, EncoderPretrainer, PretrainConfig, dense_losses,
                                   stack_targets)
from fuse3d.train.views import object_views


@pytest.fixture(scope="module")
def samples():
    return object_views(100001, views=2, size=200)


def tiny(tmp_path, **kw):
    return PretrainConfig(work=str(tmp_path), width=32, depth=1, heads=2, batch=2, lr=2e-3, **kw)


def test_config_is_the_command_line(tmp_path):
    cfg = parse(PretrainConfig, ["--work", str(tmp_path), "--depth", "3", "--no-bf16"])
    assert cfg.depth == 3 and cfg.bf16 is False and cfg.work == str(tmp_path)
    assert "--total-minutes" in command_line(PretrainConfig).format_help()
    with pytest.raises(SystemExit):
        parse(PretrainConfig, [])  # --work is required


def test_heads_read_every_target_and_the_losses_are_finite(samples):
    heads = DenseHeads(16)
    tokens = torch.randn(2, 1374, 16)
    pred = heads(tokens)
    assert pred["part"].shape == (2, 1369, PATCH_TARGETS["part"]) and pred["kind"].shape == (2, 7)
    losses = dense_losses(pred, stack_targets(samples, "cpu"))
    assert set(losses) == {"part", "coverage", "albedo", "normal", "position", "kind", "eye"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_a_few_steps_fit_one_batch(samples, tmp_path):
    trainer = EncoderPretrainer(tiny(tmp_path), device="cpu")
    first = sum(trainer.step(samples, 2e-3).values())
    for _ in range(25):
        last = sum(trainer.step(samples, 2e-3).values())
    assert last < 0.6 * first
    assert trainer.state.steps == 26


def test_checkpoints_resume_and_export_a_loadable_encoder(samples, tmp_path):
    from fuse3d.trellis.checkpoint import load_network

    a = EncoderPretrainer(tiny(tmp_path), device="cpu")
    a.step(samples, 1e-3)
    a.save(tmp_path / "ckpt")
    b = EncoderPretrainer(tiny(tmp_path, seed=5), device="cpu")
    b.load(tmp_path / "ckpt")
    assert b.state.steps == 1
    for (k, x), (_, y) in zip(a.encoder.state_dict().items(), b.encoder.state_dict().items()):
        assert torch.equal(x, y), k
    enc = load_network(a.export(tmp_path / "encoder"), dtype="fp32")
    px = torch.as_tensor(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.allclose(enc(px), a.ema(px), atol=1e-5)
    with pytest.raises(ValueError, match="holds an encoder"):
        EncoderPretrainer(PretrainConfig(work=str(tmp_path), width=32, depth=2, heads=2), device="cpu").load(tmp_path / "ckpt")
