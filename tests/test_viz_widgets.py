"""viz.widgets.HeadTuner: redraws from the cache (no network runs) and shows the right masks."""
import pytest

from fuse3d import Fuse3D
from viz import HeadTuner, load_example
from viz.attention import CHANGES, mask_changes

from conftest import NetworkCounter


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    example = load_example("chair")
    run = example.run(pipe, structure="true", latent_steps=1, lazy=True).compute("capture")  # the only network work
    return pipe, run, example.truth(run)


def test_tuner_redraws_without_running_a_network(setup):
    pipe, run, truth = setup
    calls = NetworkCounter(pipe.trellis)
    try:
        tuner = HeadTuner(run, truth=truth)
        tuner.set(heads=[1, 2, 3], threshold=0.3)
        tuner.set(refine=False)
        tuner.threshold.value = 0.7  # a slider move redraws too
        tuner.heads[9].value = True
        tuner.local.value = 1
    finally:
        calls.remove()
    assert calls.total() == 0, calls.calls
    assert tuner.tuned.params.heads == (1, 2, 3, 9)
    assert tuner.tuned.params.threshold == 0.7 and tuner.tuned.params.refine is False
    assert "IoU vs true part" in tuner.status.value and "local_1" in tuner.status.value


def test_tuner_figure_shows_the_retuned_masks(setup):
    _, run, _ = setup
    tuner = HeadTuner(run)
    tuner.set(heads=[0, 5], threshold=0.4, refine=True, k=1)
    tuned = run.retune(heads=[0, 5], threshold=0.4, refine=True)
    classes = mask_changes(tuned.raw_mask(1).numpy(), tuned.refined_mask(1).numpy())[run.voxel_cell.numpy()]
    face_class = classes[tuner.surface.face_voxel]
    for code, trace in enumerate(tuner.figure.data):
        assert trace.name == CHANGES[code]
        assert len(trace.i) == 2 * int((face_class == code).sum())
    assert tuner.last_redraw_s > 0


def test_tuner_without_heads_keeps_the_last_drawing(setup):
    _, run, _ = setup
    tuner = HeadTuner(run)
    before = [len(t.i) for t in tuner.figure.data]
    tuner.set(heads=[])
    assert "at least one head" in tuner.status.value
    assert [len(t.i) for t in tuner.figure.data] == before
    assert "application/vnd.jupyter.widget-view+json" in tuner._repr_mimebundle_()
