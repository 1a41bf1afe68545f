"""The stage cache when things go wrong: unwritable folders, a full disk, interrupted writes and
runs, and several processes sharing one folder."""
import errno
import json
import subprocess
import sys
import warnings

import pytest
import torch

from fuse3d import Fuse3D
from fuse3d.cache import Cache, CacheError, CacheWarning, Entry

FAST = dict(structure_steps=2, latent_steps=2)





@pytest.fixture(scope="module")
def reference(tiny_model_dir, conditions):
    """The final latent of a memory-only run: what every run below must reproduce."""
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    return pipe.run(conditions[0], conditions[1][1:], seed=3, **FAST).final.feats.clone()


def run_with(tiny_model_dir, conditions, cache_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False, cache_dir=cache_dir)
    return pipe, pipe.run(conditions[0], conditions[1][1:], seed=3, **FAST)


def consistent(root):
    """Every file under the cache folder is a whole, verified entry; no temporary file is left."""
    files = list(root.rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")], "a temporary file was left behind"
    entries = [f for f in files if f.suffix == ".safetensors"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = Cache(root)  # its write probe may warn (an unwritable folder); reading is checked below
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        for f in entries:
            assert reader.get(f.parent.name, f.stem) is not None
    return len(entries)


def test_a_folder_that_cannot_be_created_is_an_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CacheError, match="cannot create the cache folder .*file/cache"):
        Cache(tmp_path / "file" / "cache")


def test_an_unwritable_folder_warns_once_and_runs_from_memory(tiny_model_dir, conditions, reference, tmp_path,
                                                              monkeypatch):
    import fuse3d.cache as cache_module

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cache_module.tempfile, "mkstemp", denied)
    with pytest.warns(CacheWarning, match="permission denied") as caught:
        pipe, run = run_with(tiny_model_dir, conditions, tmp_path / "ro")
        final = run.final.feats
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    assert not pipe.cache.writable and torch.equal(final, reference)
    assert consistent(tmp_path / "ro") == 0


def test_a_full_disk_warns_once_leaves_no_partial_file_and_changes_no_result(tiny_model_dir, conditions,
                                                                             reference, tmp_path, monkeypatch):
    import fuse3d.cache as cache_module

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.os, "fsync", full)  # fails after the bytes went to the temporary file
    with pytest.warns(CacheWarning, match="no space left on the device") as caught:
        pipe, run = run_with(tiny_model_dir, conditions, tmp_path / "full")
        final = run.final.feats
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    assert pipe.cache.stats["write_failures"] == 1, "after the first failure nothing more is tried"
    assert torch.equal(final, reference)
    assert consistent(tmp_path / "full") == 0


def test_an_interrupted_write_leaves_the_cache_consistent(tiny_model_dir, conditions, reference, tmp_path,
                                                          monkeypatch):
    import fuse3d.cache as cache_module

    real_fsync, calls = cache_module.os.fsync, []

    def interrupt_third(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(cache_module.os, "fsync", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run_with(tiny_model_dir, conditions, tmp_path / "c")[1].final
    assert consistent(tmp_path / "c") == 2, "the two entries written before the interrupt are whole"
    monkeypatch.setattr(cache_module.os, "fsync", real_fsync)
    _, again = run_with(tiny_model_dir, conditions, tmp_path / "c")
    assert torch.equal(again.final.feats, reference)
    assert consistent(tmp_path / "c") > 2


def test_keyboard_interrupt_mid_run_leaves_the_cache_consistent(tiny_model_dir, conditions, reference, tmp_path,
                                                                 monkeypatch):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False, cache_dir=tmp_path / "k")
    flow, calls = pipe.trellis.slat_flow, []
    real = flow.forward

    def interrupt_later(*a, **k):
        calls.append(1)
        if len(calls) == 5:  # inside a latent sampling, after the structure and some stages are stored
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(flow, "forward", interrupt_later)
    with pytest.raises(KeyboardInterrupt):
        pipe.run(conditions[0], conditions[1][1:], seed=3, **FAST)
    stored = consistent(tmp_path / "k")
    assert stored >= 2
    monkeypatch.setattr(flow, "forward", real)
    _, again = run_with(tiny_model_dir, conditions, tmp_path / "k")
    assert torch.equal(again.final.feats, reference)
    assert consistent(tmp_path / "k") > stored


CHILD = """
import sys, json, numpy as np, torch
from PIL import Image
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from conftest import two_locals
from test_cache import FAST
from fuse3d import Fuse3D
g, locals_ = two_locals()
pipe = Fuse3D.from_pretrained({model!r}, device="cpu", progress=False, cache_dir={cache!r})
run = pipe.run(g, locals_[1:], seed=3, **FAST)
save_file({{"final": run.final.feats.contiguous()}}, sys.argv[1])
print(json.dumps(pipe.cache.stats))
"""


def test_two_processes_share_one_cache_folder(tiny_model_dir, reference, tmp_path):
    from pathlib import Path

    from safetensors.torch import load_file

    code = CHILD.format(tests=str(Path(__file__).parent), model=str(tiny_model_dir), cache=str(tmp_path / "shared"))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"out{i}.safetensors")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        json.loads(out.strip().splitlines()[-1])
    finals = [load_file(str(tmp_path / f"out{i}.safetensors"))["final"] for i in range(2)]
    assert torch.equal(finals[0], reference) and torch.equal(finals[1], reference)
    assert consistent(tmp_path / "shared") > 0


def test_entries_round_trip_and_a_tampered_entry_is_recomputed(tmp_path):
    cache = Cache(tmp_path)
    entry = Entry({"x": torch.arange(6).reshape(2, 3)}, {"note": "hi"})
    cache.put("stage", "k1", entry)
    fresh = Cache(tmp_path)
    back = fresh.get("stage", "k1")
    assert back.source == "disk" and torch.equal(back["x"], entry["x"]) and back.meta == {"note": "hi"}
    path = tmp_path / "stage" / "k1.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="checksum mismatch"):
        assert Cache(tmp_path).get("stage", "k1") is None
    assert not path.exists()
