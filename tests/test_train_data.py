import numpy as np
import torch

from fuse3d.train.data import CHILDREN, make_object
from fuse3d.trellis.sparse import SparseSubdivide, SparseTensor


def test_children_follow_two_subdivisions():
    x = SparseTensor(torch.zeros(1, 1), torch.tensor([[0, 3, 5, 7]], dtype=torch.int32))
    fine = SparseSubdivide()(SparseSubdivide()(x)).coords[:, 1:].numpy()
    assert np.array_equal(fine, np.array([3, 5, 7]) * 4 + CHILDREN)


def test_object_sample_is_consistent():
    s = make_object(5, views=1, fine_samples=256)
    assert s.coords.shape[1] == 3 and len(s.coords) == len(s.color) == len(s.normal) == len(s.part)
    assert s.images.shape == (1, 518, 518, 3) and s.images.max() > 0
    assert np.allclose(np.linalg.norm(s.normal, axis=1), 1, atol=1e-3)
    assert s.corner_sdf.shape == (256, 8) and s.corner_color.shape == (256, 8, 3)
    # supervised fine voxels sit on the surface band: some corners inside, some outside, none far away
    assert (s.corner_sdf < 0).any() and (s.corner_sdf > 0).any() and np.abs(s.corner_sdf).max() < 4 / 64


def test_saved_objects_load_back_identical(tmp_path):
    from fuse3d.train.data import cached_objects, load_objects, save_objects

    samples = [make_object(s, views=1, fine_samples=64) for s in (3, 4)]
    save_objects(tmp_path / "o.safetensors", samples)
    back = load_objects(tmp_path / "o.safetensors")
    assert [b.seed for b in back] == [3, 4]
    for a, b in zip(samples, back):
        for name in ("coords", "color", "normal", "part", "images", "fine_index", "corner_sdf", "corner_color"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and np.array_equal(x, y), name
    # the cache is keyed by seeds and options: a second call reads the file, other options build anew
    first = cached_objects([3], tmp_path, views=1, fine_samples=64)
    files = sorted(tmp_path.glob("objects-*.safetensors"))
    again = cached_objects([3], tmp_path, views=1, fine_samples=64)
    assert sorted(tmp_path.glob("objects-*.safetensors")) == files and np.array_equal(first[0].coords, again[0].coords)
    cached_objects([3], tmp_path, views=1, fine_samples=32)
    assert len(list(tmp_path.glob("objects-*.safetensors"))) == len(files) + 1


def test_the_object_stream_hands_over_every_seed_and_fills_the_cache(tmp_path):
    from fuse3d.train.data import ObjectStream, cached_objects

    kw = dict(views=1, fine_samples=64, render_size=160)
    with ObjectStream([3, 4, 5], str(tmp_path), workers=2, **kw) as stream:
        got = []
        while stream.more:
            got.extend(stream.ready(wait=True))
    assert sorted(s.seed for s in got) == [3, 4, 5]
    cached = {s.seed: s for s in cached_objects([3, 4, 5], str(tmp_path), **kw)}  # the file the stream wrote
    assert len(list(tmp_path.glob("objects-*.safetensors"))) == 1
    for s in got:
        assert np.array_equal(s.images, cached[s.seed].images) and np.array_equal(s.corner_sdf, cached[s.seed].corner_sdf)
    again = ObjectStream([3, 4, 5], str(tmp_path), workers=2, **kw)  # read at once, no pool
    assert again.pool is None and sorted(s.seed for s in again.ready()) == [3, 4, 5] and not again.more


def test_a_closed_stream_stops_and_writes_no_partial_cache(tmp_path):
    from fuse3d.train.data import ObjectStream

    stream = ObjectStream(list(range(3, 11)), str(tmp_path), workers=2, views=1, fine_samples=64, render_size=160)
    first = stream.ready(wait=True)
    stream.close()
    assert first and not stream.more and stream.ready() == []
    assert not list(tmp_path.glob("objects-*.safetensors"))


def _build_and_record(folder, seed):
    """A builder that leaves a file per seed it built (module level: the pool pickles it)."""
    import time
    from pathlib import Path

    time.sleep(0.02)
    Path(folder, str(seed)).touch()
    return [seed]


def test_closing_a_stream_drops_the_seeds_not_yet_started(tmp_path):
    """A chunk ends while seeds are still queued: they must not be built before the process can exit.

    ``ProcessPoolExecutor.shutdown(wait=False, cancel_futures=True)`` alone, with the pool dropped
    at once, let every queued seed be built, and interpreter exit waited for them (a chunk of 6 000
    seeds hung past its call's time limit)."""
    import multiprocessing
    from functools import partial

    from fuse3d.train.stream import SampleStream

    stream = SampleStream(partial(_build_and_record, str(tmp_path)), list(range(400)), workers=2)
    stream.ready(wait=True)
    stream.close()  # and the stream's pool is dropped, as at the end of a chunk
    for worker in multiprocessing.active_children():  # what interpreter exit waits for
        worker.join(timeout=60)
    built = len(list(tmp_path.iterdir()))
    assert 1 <= built < 100, f"{built} of 400 seeds were built after the stream was closed"
