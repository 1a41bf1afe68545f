"""Linear probes of encoder tokens."""
import numpy as np
import pytest
import torch

from fuse3d.data import random_object, voxelize
from fuse3d.train.probe import kind_mean_r2, kind_means, load_encoder, object_extents, probe_encoder, ridge_r2, softmax_probe
from fuse3d.train.views import make_views


def test_probes_recover_what_is_linear_and_not_what_is_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, :3] @ torch.randn(3, 3, generator=g)).argmax(1)
    assert softmax_probe(x[:300], y[:300], x[300:], y[300:], 3) > 0.95
    assert softmax_probe(x[:300], torch.randint(0, 3, (300,), generator=g), x[300:], y[300:], 3) < 0.6
    w = torch.randn(8, 3, generator=g)
    assert ridge_r2(x[:300], x[:300] @ w, x[300:], x[300:] @ w, alpha=1e-3) > 0.999
    assert ridge_r2(x[:300], torch.randn(300, 3, generator=g), x[300:], torch.randn(100, 3, generator=g)) < 0.1


def test_probe_encoder_reports_every_score():
    fit, test = make_views([930000, 930001, 930002], views=1, size=160), make_views([940000, 940001], views=1, size=160)
    scores = probe_encoder(load_encoder("random:32,1,2"), fit, test)
    assert {"part_accuracy", "part_majority", "albedo_r2", "normal_r2", "position_r2", "kind_accuracy",
            "extents_r2", "extents_r2_kind", "extents_r2_within_kind"} <= set(scores)
    assert 0 <= scores["part_accuracy"] <= 1 and scores["patches_fit"] > 50


def test_extents_are_the_objects_bounding_boxes_and_the_kind_baseline_is_its_means():
    fit = make_views([930000, 930001], views=2, size=160)
    ext = object_extents(fit)
    c = np.asarray(voxelize(random_object(930001)).coords)[:, 1:]
    assert ext.shape == (4, 3) and torch.allclose(ext[2], torch.as_tensor((c.max(0) - c.min(0) + 1) / 64.0, dtype=torch.float32))
    assert torch.equal(ext[0], ext[1])  # two views of one object
    kinds = torch.tensor([0, 0, 1, 1])
    y = torch.tensor([[1.0], [3.0], [10.0], [14.0]])
    # the kinds' means are 2 and 12: squared residuals 1 + 1 + 4 + 4 = 10, about the overall mean 7: 110
    assert kind_mean_r2(kinds, y, kinds, y) == pytest.approx(1 - 10 / 110)
    assert kind_means(kinds, y, torch.tensor([1, 0, 5])).flatten().tolist() == [12.0, 2.0, 7.0]  # 5: no such kind
