"""Linear probes of encoder tokens."""
import torch

from fuse3d.train.probe import load_encoder, probe_encoder, ridge_r2, softmax_probe
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
    assert {"part_accuracy", "part_majority", "albedo_r2", "normal_r2", "position_r2", "kind_accuracy"} <= set(scores)
    assert 0 <= scores["part_accuracy"] <= 1 and scores["patches_fit"] > 50
