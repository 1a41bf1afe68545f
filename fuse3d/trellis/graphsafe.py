"""Finding what keeps a forward from being graph-safe: host reads, host-to-device copies, data-dependent shapes.

A CUDA graph replays recorded kernels; a forward that reads a device tensor on the host
(``.item()``, ``.tolist()``, ``bool(t)``), copies host data to the device (``torch.tensor([...])``),
or makes a tensor whose shape depends on its data (``nonzero``, a boolean-mask index) cannot be
recorded, and on any GPU each such call stalls the CPU until the queue drains. What depends only on
the voxels (sparse layouts, windows, cells, region plans) is built once per structure and kept in
the :class:`~fuse3d.trellis.sparse.SparseTensor`'s spatial cache, so a forward on the same voxels
needs none of these.

:class:`HostSyncMode` finds them on any device, the CPU included::

    with HostSyncMode() as found:
        flow(x_t, t, cond)
    assert not found.calls, found.report()
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["HostSyncMode", "HostCall"]

#: Tensor methods and functions that read a tensor's values on the host
HOST_READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}
#: operations whose output shape depends on the data (they read a count on the host)
DATA_DEPENDENT = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount"}
#: tensors made from host data (a host-to-device copy on a GPU)
FROM_HOST = {"tensor", "as_tensor", "from_numpy"}

_PACKAGE = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class HostCall:
    """One operation that is not graph-safe, and the line of fuse3d that made it."""

    op: str
    where: str

    def __str__(self) -> str:
        return f"{self.op} at {self.where}"


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        if frame.filename.startswith(_PACKAGE) and not frame.filename.endswith("graphsafe.py"):
            return f"{Path(frame.filename).relative_to(Path(_PACKAGE).parent)}:{frame.lineno}"
    return "outside fuse3d"


def _kind(func, args, kwargs) -> str:
    name = getattr(func, "__name__", "")
    if name in HOST_READS or name in DATA_DEPENDENT:
        return name
    if name in FROM_HOST:
        data = args[0] if args else kwargs.get("data")
        return "" if isinstance(data, torch.Tensor) and name != "from_numpy" else name
    if name == "to" and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
        moved = [a for a in list(args[1:]) + [kwargs.get("device")] if isinstance(a, (str, torch.device))]
        if moved:  # a host tensor sent to a device (on a GPU, a copy each call; on the CPU, a no-op)
            return "to(device)"
    if name == "where" and len(args) == 1 and not kwargs:
        return "where(condition)"
    if name == "repeat_interleave" and "output_size" not in kwargs and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return "repeat_interleave(repeats)"
    if name == "__getitem__" and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
            return "boolean-mask index"
    return ""


class HostSyncMode(TorchFunctionMode):
    """Record every host read, host-to-device copy and data-dependent shape made inside it.

    ``calls`` lists them in order (:class:`HostCall`: the operation and the fuse3d line that made it);
    with ``strict=True`` the first one raises :class:`RuntimeError` instead, at the line that made it.
    Only Python-level torch calls are seen; what a compiled kernel does inside itself is not.
    """

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = strict
        self.calls: List[HostCall] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _kind(func, args, kwargs)
        if kind:
            call = HostCall(kind, _caller())
            if self.strict:
                raise RuntimeError(f"not graph-safe: {call}")
            self.calls.append(call)
        return func(*args, **kwargs)

    def __enter__(self) -> "HostSyncMode":
        super().__enter__()
        return self

    def report(self) -> str:
        """The calls, one per line, counted by operation and line."""
        counts = {}
        for c in self.calls:
            counts[str(c)] = counts.get(str(c), 0) + 1
        return "\n".join(f"{n}× {c}" for c, n in counts.items()) or "none"
