"""Content-addressed cache of stage results, in memory and on disk (safetensors + JSON, no pickle).

A stage result is an :class:`Entry`: named tensors plus JSON metadata. Its key hashes the stage name,
the keys of its inputs and its parameters, so a result is reused exactly when everything it depends
on is unchanged. Disk entries are written atomically (temporary file, flushed to disk, then renamed over the
entry) and carry a SHA-256 checksum of their tensor bytes; an entry that fails to read or to verify
is reported with a :class:`CacheWarning`, deleted and recomputed. Several processes may share one
cache folder: each entry is written whole by whoever finishes first, and readers never see a
partial file.

A cache folder that cannot be written (read-only, no space left) never stops a run: the problem is
reported once with a :class:`CacheWarning` and results stay in memory. A folder that cannot be
created at all is a :class:`CacheError`.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Union

import torch

from .trellis.storage import atomic_write

__all__ = ["Cache", "CacheError", "CacheWarning", "Entry", "stage_key"]


class CacheWarning(UserWarning):
    """A cache entry could not be used (corrupt, truncated or tampered with) and is recomputed, or
    could not be written (the result stays in memory)."""


class CacheError(OSError):
    """The cache folder cannot be created."""


def _canonical(obj):
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, torch.Tensor):
        raise TypeError("cache parameters must be JSON values, not tensors")
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cache parameters must be JSON values, got {type(obj).__name__}")


def stage_key(stage: str, inputs: Optional[Dict[str, str]] = None, params: Optional[dict] = None) -> str:
    """``sha256(stage, input keys, params)`` as hex; parameters are JSON values (floats by repr)."""
    doc = json.dumps({"stage": stage, "inputs": _canonical(inputs or {}), "params": _canonical(params or {})},
                     sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def checksum(tensors: Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


@dataclass
class Entry:
    """A stage result: ``tensors`` (name → tensor) and JSON-serialisable ``meta``."""

    tensors: Dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    source: str = "computed"  # "computed", "memory" or "disk" — where this copy came from

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


class Cache:
    """Memory + optional disk cache.

    Args:
        root: folder for disk entries (``root/<stage>/<key>.safetensors``); ``None`` keeps memory only.
        memory: keep entries in memory too.

    ``stats`` counts ``hits_memory``, ``hits_disk``, ``misses`` and ``corrupt`` lookups.
    """

    def __init__(self, root: Optional[Union[str, Path]] = None, memory: bool = True):
        self.root = Path(root) if root is not None else None
        self.memory = memory
        self._mem: Dict[str, Entry] = {}
        self._stage_of: Dict[str, str] = {}
        self._lock = threading.Lock()
        self._write_failures: set = set()
        self.writable = self.root is not None
        self.stats = {"hits_memory": 0, "hits_disk": 0, "misses": 0, "corrupt": 0, "write_failures": 0}
        if self.root is not None:
            self._check_root()

    def _check_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(e.errno, f"cannot create the cache folder {self.root}: {e.strerror or e}; "
                             "pass another cache_dir, or none for a memory-only cache") from None
        try:
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".write-probe.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            self._write_failed(self.root, e)

    def __repr__(self) -> str:
        where = str(self.root) if self.root else "memory only"
        return f"Cache({where}, {len(self._mem)} entries in memory)"

    def path(self, stage: str, key: str) -> Optional[Path]:
        return None if self.root is None else self.root / stage / f"{key}.safetensors"

    def status(self, stage: str, key: str) -> str:
        """``"memory"``, ``"disk"`` or ``"missing"``."""
        if key in self._mem:
            return "memory"
        p = self.path(stage, key)
        return "disk" if p is not None and p.is_file() else "missing"

    # ------------------------------------------------------------------ read
    def get(self, stage: str, key: str) -> Optional[Entry]:
        with self._lock:
            if key in self._mem:
                self.stats["hits_memory"] += 1
                e = self._mem[key]
                return Entry(e.tensors, e.meta, "memory")
        p = self.path(stage, key)
        if p is None or not p.is_file():
            return None
        entry = self._read(p, key)
        if entry is None:
            return None
        self.stats["hits_disk"] += 1
        if self.memory:
            with self._lock:
                self._mem[key] = entry
        return Entry(entry.tensors, entry.meta, "disk")

    def _read(self, path: Path, key: str) -> Optional[Entry]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                md = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            if md.get("key") != key:
                raise ValueError("the entry's key does not match its file name")
            if md.get("checksum") != checksum(tensors):
                raise ValueError("checksum mismatch")
            meta = json.loads(md.get("meta", "{}"))
        except Exception as e:  # corrupt header, truncated data, bad JSON, checksum …
            self.stats["corrupt"] += 1
            warnings.warn(f"cache entry {path} is unusable ({e}); it is deleted and recomputed", CacheWarning, stacklevel=3)
            try:
                path.unlink()
            except OSError:
                pass
            return None
        return Entry(tensors, meta, "disk")

    # ------------------------------------------------------------------ write
    def put(self, stage: str, key: str, entry: Entry) -> Entry:
        tensors = {k: v.detach().contiguous().cpu() for k, v in entry.tensors.items()}
        stored = Entry(tensors, dict(entry.meta), "computed")
        with self._lock:
            if self.memory:
                self._mem[key] = stored
            self._stage_of[key] = stage
        p = self.path(stage, key)
        if p is not None and self.writable:
            self._write(p, stage, key, stored)
        return stored

    def _write_failed(self, path: Path, err: OSError) -> None:
        """Report a write failure once per cause; the cache then keeps new entries in memory only."""
        self.stats["write_failures"] += 1
        self.writable = False
        cause = err.errno or type(err).__name__
        if cause in self._write_failures:
            return
        self._write_failures.add(cause)
        why = {errno.ENOSPC: "no space left on the device", errno.EACCES: "permission denied",
               errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded"}.get(err.errno, str(err))
        warnings.warn(f"cannot write to the cache folder {self.root} ({why}, at {path}); results are kept in "
                      "memory only and existing entries are still read", CacheWarning, stacklevel=4)

    def _write(self, path: Path, stage: str, key: str, entry: Entry) -> None:
        """Write an entry atomically; an OS error is reported (:meth:`_write_failed`), never raised."""
        from safetensors.torch import save

        md = {"key": key, "stage": stage, "checksum": checksum(entry.tensors), "meta": json.dumps(entry.meta),
              "format": "fuse3d-cache-1"}
        data = save(entry.tensors, metadata=md)
        try:
            atomic_write(path, data)  # also on KeyboardInterrupt: never a partial file
        except OSError as e:
            self._write_failed(path, e)

    # ------------------------------------------------------------------ compute-through
    def fetch(self, stage: str, key: str, compute: Callable[[], Entry]) -> Entry:
        """The entry for ``key``, computed with ``compute()`` (and stored) when not cached."""
        hit = self.get(stage, key)
        if hit is not None:
            return hit
        self.stats["misses"] += 1
        entry = compute()
        stored = self.put(stage, key, entry)
        return Entry(stored.tensors, stored.meta, "computed")

    def clear_memory(self) -> None:
        with self._lock:
            self._mem.clear()

    def keys(self) -> Iterable[str]:
        return list(self._mem)
