"""Training data handed over while it is built: train on the first samples while the rest render.

A chunk on a machine that starts bare would otherwise spend minutes building its data before the
first step. :class:`SampleStream` runs the builder of each seed in a process pool and gives the
finished samples to the training loop as they come (in completion order); once every seed is in,
the full set is written to the cache, so a later chunk on the same machine reads it at once.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Generic, List, Optional, Sequence, TypeVar

T = TypeVar("T")

#: How much lower than the training loop the builders run (``os.nice`` increment).
WORKER_NICENESS = 10


def _builder_process() -> None:
    """Start of each builder process: one thread, and a lower priority than the training loop, so that
    a GPU step is not kept waiting for a CPU core (14 builders on 16 cores slowed a flow step from
    0.20 s to 0.30–0.44 s)."""
    os.nice(WORKER_NICENESS)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


class SampleStream(Generic[T]):
    """The samples of ``seeds``: ``build(seed) -> [samples]`` in ``workers`` processes (``build`` must
    be picklable: a module-level function or a :func:`functools.partial` of one).

    When ``path`` names a file that exists, ``load(path)`` gives everything at once and no pool starts;
    otherwise, once the last seed is built, ``save(path, samples)`` keeps them (the save is skipped
    when the stream is closed first). With ``workers <= 1`` everything is built here, at once.
    """

    def __init__(self, build: Callable[[int], List[T]], seeds: Sequence[int], workers: int,
                 path: Optional[Path] = None, load: Optional[Callable] = None, save: Optional[Callable] = None):
        self.path, self._save = (Path(path) if path is not None else None), save
        self.buffer: List[T] = []
        self.pending, self.pool = [], None
        self._all: List[T] = []
        if self.path is not None and self.path.is_file():
            self.buffer = load(self.path)
        elif workers <= 1:
            self.buffer = [s for seed in seeds for s in build(seed)]
            self._keep(self.buffer)
        else:
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(workers, initializer=_builder_process)
            self.pending = [self.pool.submit(build, s) for s in seeds]

    @property
    def more(self) -> bool:
        """Whether samples are still to come."""
        return bool(self.buffer or self.pending)

    def ready(self, wait: bool = False) -> List[T]:
        """Samples finished since the last call (blocking for at least one seed when ``wait``)."""
        if self.buffer:
            out, self.buffer = self.buffer, []
            return out
        if wait and self.pending:
            from concurrent.futures import FIRST_COMPLETED
            from concurrent.futures import wait as wait_for

            wait_for(self.pending, return_when=FIRST_COMPLETED)
        done = [f for f in self.pending if f.done()]
        self.pending = [f for f in self.pending if not f.done()]
        out = [s for f in done for s in f.result()]
        self._all.extend(out)
        if not self.pending and self.pool is not None:
            self._keep(self._all)
            self.close()
        return out

    def _keep(self, samples: List[T]) -> None:
        if self.path is not None and self._save is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._save(self.path, samples)

    def close(self) -> None:
        """Stop building (the seeds not yet built are dropped); safe to call twice."""
        if self.pool is not None:
            # Cancelled here: shutdown(cancel_futures=True) alone does not cancel them once the pool is
            # dropped at once, as below, and interpreter exit then waited for every queued seed to be
            # built (tests/test_train_data.py::test_closing_a_stream_drops_the_seeds_not_yet_started).
            for f in self.pending:
                f.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
            self.pending = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
