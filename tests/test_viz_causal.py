"""viz.causal: the head × block table of ablation effects."""
import numpy as np

from viz import intervention_figure


def test_intervention_figure_draws_the_table_with_its_labels():
    effects = {"effect": np.array([[0.1, 0.0], [0.3, 0.2]]), "heads": [2, 5], "blocks": [0, 1]}
    fig = intervention_figure(effects, part="the seat")
    heat = fig.data[0]
    assert list(heat.y) == ["head 2", "head 5"] and list(heat.x) == ["block 0", "block 1"]
    assert np.allclose(np.asarray(heat.z), effects["effect"]) and "the seat" in fig.layout.title.text
    allblocks = intervention_figure({"effect": np.ones((3, 1)), "heads": [0, 1, 2], "blocks": ["all"]})
    assert list(allblocks.data[0].x) == ["all blocks"]
