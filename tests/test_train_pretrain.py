"""Condition-encoder pre-training: heads, losses, a step that learns, checkpoints and export."""
import json

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
    a.data = list(samples)  # a chunk that ended with one object rendered says so in the sidecar
    enc = load_network(a.export(tmp_path / "encoder"), dtype="fp32")
    about = json.loads((tmp_path / "encoder.pretrain.json").read_text())
    assert (about["objects"], about["views"], about["seeds"]) == (1, 2, "1 of seeds 100000:100600")
    px = torch.as_tensor(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.allclose(enc(px), a.ema(px), atol=1e-5)
    with pytest.raises(ValueError, match="holds an encoder"):
        EncoderPretrainer(PretrainConfig(work=str(tmp_path), width=32, depth=2, heads=2), device="cpu").load(tmp_path / "ckpt")


def test_permuting_colours_is_the_render_of_the_object_with_permuted_colours():
    """The augmentation is exact: the renderer's lights only scale a colour."""
    import dataclasses

    from fuse3d.data import fit_view, random_object, random_view
    from fuse3d.train.pretrain import permute_colours
    from fuse3d.train.views import make_view

    rng = np.random.default_rng(4)
    spec = random_object(rng)
    view = fit_view(spec, random_view(rng), fill=0.75)
    perm = [2, 0, 1]

    def permuted(c):
        return tuple(c[i] for i in perm)

    parts = [dataclasses.replace(p, color=permuted(p.color), pattern=None if p.pattern is None else
                                 dataclasses.replace(p.pattern, color=permuted(p.pattern.color))) for p in spec.parts]
    plain = make_view(spec, view, size=160)
    swapped = make_view(dataclasses.replace(spec, parts=parts), view, size=160)
    target = stack_targets([plain, swapped], "cpu")
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # until the draw for the first image is `perm`
        out = permute_colours(target, gen)
        if torch.equal(out["albedo"][0], target["albedo"][0][..., perm]):
            break
    assert torch.equal(out["pixels"][0], target["pixels"][0][perm])
    # the permuted plain render is the render of the recoloured object (up to the 8-bit rounding)
    assert (out["pixels"][0] - target["pixels"][1]).abs().max() <= 1.5 / 255
    assert torch.allclose(out["albedo"][0], target["albedo"][1], atol=1e-6)


def test_the_view_stream_hands_over_every_render_and_fills_the_cache(tmp_path):
    from fuse3d.train.pretrain import ViewStream
    from fuse3d.train.views import cached_views

    seeds = [100010, 100011, 100012]
    stream = ViewStream(seeds, str(tmp_path), views=1, workers=2)
    got = []
    while stream.more:
        got.extend(stream.ready(wait=True))
    assert sorted(v.seed for v in got) == seeds
    cached = ViewStream(seeds, str(tmp_path), views=1, workers=2)  # now read from the cache, no pool
    assert cached.pool is None and sorted(v.seed for v in cached.ready()) == seeds and not cached.more
    again = {v.seed: v for v in cached_views(seeds, str(tmp_path), views=1)}
    for v in got:
        assert np.array_equal(v.image, again[v.seed].image)
