"""fuse3d.causal: per-head effects of ablations in the final sampling."""
def test_head_effects_measure_the_colour_change_of_each_ablation(tiny_model_dir, conditions):
    import numpy as np

    from fuse3d import Fuse3D
    from fuse3d.causal import head_effects, top_heads

    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    g, locals_ = conditions
    run = pipe.run(g, locals_, seed=0, structure_steps=2, latent_steps=2)
    e = head_effects(run, 0, blocks=None, heads=[0, 5], progress=False)
    assert e["effect"].shape == (2, 1) and e["blocks"] == ["all"] and (e["effect"] > 0).all()
    each = head_effects(run, 0, heads=[5], progress=False)
    assert each["effect"].shape == (1, run.num_blocks) and (each["effect"] >= 0).all()
    best = top_heads(e, n=1)
    assert best[0][0] == [0, 5][int(np.argmax(e["effect"][:, 0]))] and best[0][2] == e["effect"].max()
