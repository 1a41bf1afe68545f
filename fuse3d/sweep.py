"""Sweeps: cases × a grid of Fuse3D parameters, scored against ground truth where it exists.

A **case** is a bundled example (``"chair"``), a run spec file, or a procedural object drawn from a
seed (:mod:`fuse3d.data`; its true part of every voxel is known). The **grid** is any
:class:`~fuse3d.params.Fuse3DParams` fields with a list of values each; a sweep evaluates every
combination (a *setting*) on every case.

Each case's expensive stages (the condition encoder, the structure, the capture samplings, and the
final sampling only when ``final=True``) run once per distinct value of the fields they read; every
setting is then a retune from the cache (:meth:`fuse3d.pipeline.Run.retune`), which runs no network.
The result is a tidy table (pandas), one row per case × setting × local image::

    case, source, setting, <grid fields>, local, part, cells, aligned_cells_raw, aligned_cells,
    voxels, aligned_voxels, iou, precision, recall, select_all_iou, global_tokens, lambda,
    global_lambda, fused_color_error, status, error, seconds

``iou``, ``precision`` and ``recall`` compare the aligned (refined) voxels with the local image's
true part (procedural cases and bundled examples; empty for spec files); ``select_all_iou`` is what
selecting every voxel scores; ``fused_color_error`` (``final=True``, procedural cases) is the mean
absolute RGB error of the fused part against the local image's restyled object. A case that fails
is one row with ``status="failed"`` and its error; it never stops the sweep.

**Executors.** :class:`InProcess` (default) runs the cases one after another in this process.
:class:`RayExecutor` runs one Ray task per case (``pip install fuse3d[ray]``), with ``num_gpus`` from
the device, retried when its worker dies. The content-addressed disk cache, on a path every worker
sees, is the only state: a finished case's rows are themselves a cache entry (stage ``"sweep"``), so
a sweep started again after an interrupt skips every finished case without running any network,
and resumes an unfinished one from its cached stages. Only JSON text crosses a task's boundary.

Example::

    from fuse3d.sweep import Sweep, cases
    sweep = Sweep(cases(seeds=range(910000, 910004)),
                  grid={"heads": [[0], [1], [0, 1]], "threshold": [0.4, 0.5, 0.6]},
                  params={"latent_steps": 6})
    result = sweep.run(pipe)                       # or executor=RayExecutor("auto")
    result.scores()                                # mean IoU per setting
    result.best()                                  # the setting with the best mean IoU
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .cache import Entry, stage_key
from .metrics import fused_color_scores, mask_scores
from .params import Fuse3DParams

if TYPE_CHECKING:
    import pandas

__all__ = ["Case", "InProcess", "RayExecutor", "Sweep", "SweepError", "SweepResult", "cases", "load_sweep_spec",
           "run_case"]

#: Stages that run a network or a sampling; a grid field none of them depends on is a cheap retune.
EXPENSIVE_STAGES = ("encode", "structure", "capture", "final")
#: The version of the rows :func:`run_case` writes (part of each case's cache key).
ROWS_VERSION = 1
SOURCES = ("example", "seed", "spec")
STRUCTURES = ("true", "sampled")


class SweepError(ValueError):
    """A sweep's cases, grid or spec file are malformed."""


# ============================================================================ cases
@dataclass(frozen=True)
class Case:
    """One case of a sweep: a bundled example's name, a procedural seed, or a run spec file's path."""

    source: str
    ref: str

    def __post_init__(self):
        if self.source not in SOURCES:
            raise SweepError(f"a case's source must be one of {SOURCES}, got {self.source!r}")

    @property
    def name(self) -> str:
        return {"example": self.ref, "seed": f"seed-{self.ref}", "spec": Path(self.ref).stem}[self.source]

    def load(self):
        """``(global, locals, seed, params, example)``; ``example`` is a
        :class:`fuse3d.data.ExampleSet` (ground truth) or ``None`` for a spec file."""
        from .data import ExampleSet
        from .spec import example_spec, load_spec

        if self.source == "seed":
            ex = ExampleSet.from_seed(int(self.ref))
        elif self.source == "example":
            path = example_spec(self.ref)
            ex = ExampleSet.from_folder(path.parent, load_spec(path))
        else:
            spec = load_spec(self.ref)
            return spec.global_condition, spec.local_conditions, spec.seed, dict(spec.params), None
        return ex.global_condition, ex.local_conditions, ex.seed, dict(ex.params), ex


def _seeds(value) -> List[int]:
    if isinstance(value, str):
        try:
            start, stop = (int(v) for v in value.split(":"))
        except ValueError:
            raise SweepError(f"seeds must be START:STOP or a list of integers, got {value!r}") from None
        return list(range(start, stop))
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    seeds = list(value)
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"seeds must be integers, got {seeds!r}")
    return [int(s) for s in seeds]


def cases(examples: Iterable[str] = (), seeds: Union[str, int, Iterable[int]] = (),
          specs: Iterable[Union[str, Path]] = ()) -> List[Case]:
    """Cases from bundled example names, procedural seeds (a range, a list or ``"START:STOP"``) and
    run spec files, in that order."""
    from .spec import EXAMPLES

    out = []
    for name in ([examples] if isinstance(examples, str) else examples):
        if not (EXAMPLES / str(name) / "spec.toml").is_file():
            known = sorted(p.name for p in EXAMPLES.iterdir() if (p / "spec.toml").is_file())
            raise SweepError(f"no bundled example {name!r}; known: {', '.join(known)}")
        out.append(Case("example", str(name)))
    out += [Case("seed", str(s)) for s in _seeds(seeds)]
    out += [Case("spec", str(Path(p).resolve())) for p in ([specs] if isinstance(specs, (str, Path)) else specs)]
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise SweepError(f"cases must have distinct names, got {names}")
    return out


# ============================================================================ grid
def settings_of(grid: Dict[str, Sequence]) -> List[dict]:
    """Every combination of the grid's values, the first field varying slowest."""
    known = set(Fuse3DParams.names())
    unknown = sorted(set(grid) - known)
    if unknown:
        raise SweepError(f"unknown Fuse3D parameter(s) in the grid: {unknown}; known: {', '.join(sorted(known))}")
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise SweepError(f"grid field {name!r} needs a non-empty list of values, got {values!r}")
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def expensive_fields(names: Iterable[str], final: bool = False) -> List[str]:
    """The fields among ``names`` whose every value costs samplings: those a network stage reads
    (encoder, structure, capture); with ``final``, every field, since the final sampling depends on
    every stage before it."""
    from .stages import STAGES

    names = list(names)
    if final:
        return names
    return [n for n in names if any(n in STAGES[s].fields for s in EXPENSIVE_STAGES if s != "final")]


def _label(value) -> Union[str, float, int, bool, None]:
    """A grid value as a table cell: scalars as they are, sequences as JSON text (``"[0, 4, 12]"``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value if not isinstance(value, tuple) else list(value))


# ============================================================================ one case
_PIPES: Dict[tuple, object] = {}


def _pipe_for(model: Optional[str], cache_dir: Optional[str], device: Optional[str]):
    """One loaded model per (model, cache, device) in this process (a Ray worker reuses it across cases)."""
    from .pipeline import Fuse3D

    key = (model, cache_dir, device)
    if key not in _PIPES:
        _PIPES[key] = Fuse3D.from_pretrained(model, device=device, cache_dir=cache_dir, progress=False)
    return _PIPES[key]


def _digest(arrays: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.packbits(np.asarray(a, bool)).tobytes() + str(np.shape(a)).encode())
    return h.hexdigest()


def _case_rows(case: Case, loaded: tuple, pipe, settings: List[dict], params: dict, final: bool,
               structure: str) -> List[dict]:
    """Rows of one loaded case (no failure handling, no cache of the rows: :func:`run_case` does both)."""
    import warnings

    from .conditions import UpscaleWarning

    g, locals_, seed, case_params, example = loaded
    true = example is not None and structure == "true"
    with warnings.catch_warnings():
        if case.source == "seed":  # procedural renders are 256 px on purpose (as the evaluation's)
            warnings.simplefilter("ignore", UpscaleWarning)
        run = pipe.run(g, locals_, seed=seed, structure=example.structure if true else None, lazy=True,
                       **{**case_params, **params})
    truth = example.truth(run) if example is not None else None
    centres = (run.structure[:, 1:].numpy() + 0.5) / 64 - 0.5
    rows = []
    for index, setting in enumerate(settings):
        r = run.retune(**setting)
        rgb = r.gaussians.voxel_colors(len(r.structure)) if final else None
        lambdas = r.lambdas
        global_lambda = lambdas[r.K] if len(lambdas) > r.K else math.nan
        for k in range(r.K):
            aligned = r.aligned_voxels(k).numpy()
            row = {"case": case.name, "source": case.source, "setting": index, **{n: _label(v) for n, v in setting.items()},
                   "local": k, "part": example.parts[k] if example is not None else None,
                   "cells": int(len(r.cells)), "aligned_cells_raw": int(r.raw_mask(k).sum()),
                   "aligned_cells": int(r.refined_mask(k).sum()), "voxels": int(len(aligned)),
                   "aligned_voxels": int(aligned.sum()), "iou": math.nan, "precision": math.nan, "recall": math.nan,
                   "select_all_iou": math.nan, "global_tokens": int(len(r.global_patches)), "lambda": float(lambdas[k]),
                   "global_lambda": float(global_lambda), "fused_color_error": math.nan}
            if truth is not None:
                t = truth[k]
                row.update(**mask_scores(aligned, t), select_all_iou=float(t.mean()))
                if final and example.variants[k] is not None:
                    row["fused_color_error"] = fused_color_scores(rgb[t], example.local_target(k, centres)[t])["error"]
            rows.append(row)
    return rows


def _rows_key(case: Case, loaded: tuple, pipe, settings: List[dict], params: dict, final: bool, structure: str) -> str:
    """The cache key of a case's rows: its conditions' contents, its truth, the model and the sweep."""
    g, locals_, seed, case_params, example = loaded
    truth = _digest([example.voxels.part == p for p in example.part_indices]) if example is not None else None
    inputs = {"model": pipe.trellis.fingerprint, "conditions": [c.key for c in [*locals_, g]]}
    doc = {"case": asdict(case) if case.source != "spec" else {"source": "spec"}, "seed": seed,
           "params": {**case_params, **params}, "settings": settings, "final": final, "structure": structure,
           "truth": truth, "version": ROWS_VERSION}
    return stage_key("sweep", inputs, json.loads(json.dumps(doc, default=list)))


def run_case(case: Case, pipe, settings: List[dict], params: Optional[dict] = None, final: bool = False,
             structure: str = "true") -> List[dict]:
    """The rows of one case (see the module docstring), from the cache when this exact case and sweep
    finished before; a failure is one row with ``status="failed"``, never an exception."""
    params = dict(params or {})
    t0 = time.perf_counter()
    try:
        loaded = case.load()
        key = _rows_key(case, loaded, pipe, settings, params, final, structure)
        entry = pipe.cache.fetch("sweep", key, lambda: Entry({}, {"rows": _case_rows(case, loaded, pipe, settings,
                                                                                      params, final, structure)}))
        rows = entry.meta["rows"]
        status = "ok" if entry.source == "computed" else "cached"
        return [{**r, "status": status, "error": "", "seconds": round(time.perf_counter() - t0, 3)} for r in rows]
    except Exception as e:  # a failing case is reported in the table and never stops the sweep
        return [failure_row(case, f"{type(e).__name__}: {e}", time.perf_counter() - t0)]


def failure_row(case: Case, error: str, seconds: float = math.nan) -> dict:
    """The one row a failed case leaves in the table."""
    return {"case": case.name, "source": case.source, "status": "failed", "error": error,
            "seconds": seconds if math.isnan(seconds) else round(seconds, 3)}


# ============================================================================ jobs and executors
def run_job(job_json: str) -> str:
    """A case as JSON text in, its rows as JSON text out: what an executor's task runs. The job holds
    the case, the settings, the fixed parameters, ``final``, ``structure``, and the model, cache
    folder and device to load (once per process), and optionally the number of CPU threads to run on."""
    job = json.loads(job_json)
    if job.get("threads"):
        import torch

        torch.set_num_threads(int(job["threads"]))
    pipe = _pipe_for(job["model"], job["cache_dir"], job["device"])
    rows = run_case(Case(**job["case"]), pipe, job["settings"], job["params"], job["final"], job["structure"])
    return json.dumps(rows)


class InProcess:
    """Run the cases one after another in this process, on the pipe given to :meth:`Sweep.run`."""

    def map(self, jobs: List[dict], pipe) -> Iterator[Tuple[int, List[dict]]]:
        for i, job in enumerate(jobs):
            yield i, run_case(Case(**job["case"]), pipe, job["settings"], job["params"], job["final"], job["structure"])

    def __repr__(self) -> str:
        return "InProcess()"


class RayExecutor:
    """One Ray task per case (``pip install fuse3d[ray]``).

    Args:
        address: ``"auto"`` (a running cluster, else a new local one), ``"local"`` (a new local
            cluster), or a cluster's address (``"ray://host:10001"``, ``"host:6379"``). Ignored when
            Ray is already initialised in this process.
        workers: CPUs of a new local cluster (default: all); each task takes one CPU.
        gpus_per_case: GPUs each task asks for (default: 1 when this machine has CUDA, else 0; a
            fraction shares a GPU between tasks).
        retries: how often a task is run again when its worker process dies.
        threads: CPU threads of each task's torch (default: this process's ``torch.get_num_threads()``).
            On the CPU a float sum depends on the number of threads that share it, so a worker with
            another count can flip a score at a threshold (seen: 3 of 138 reverse-aligned tokens);
            with the same count, the table equals the in-process one bit for bit on the same machine.
            Pass 1 for throughput when many workers share the cores.
        task: what each task runs on a job's JSON text (default :func:`run_job`; tests wrap it).
    """

    def __init__(self, address: Optional[str] = "auto", workers: Optional[int] = None,
                 gpus_per_case: Optional[float] = None, retries: int = 3, threads: Optional[int] = None,
                 task: Callable[[str], str] = run_job):
        self.address, self.workers, self.retries, self.task = address, workers, int(retries), task
        self.gpus_per_case, self.threads = gpus_per_case, threads

    def __repr__(self) -> str:
        return (f"RayExecutor(address={self.address!r}, workers={self.workers}, gpus_per_case={self.gpus_per_case}, "
                f"threads={self.threads})")

    def _init(self):
        try:
            import ray
        except ImportError:
            raise ImportError("the Ray executor needs Ray: pip install 'fuse3d[ray]'") from None
        if ray.is_initialized():
            return ray
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.address not in (None, "auto", "local"):
            ray.init(address=self.address, **kw)
            return ray
        if self.address == "auto":
            try:
                ray.init(address="auto", **kw)
                return ray
            except ConnectionError:
                pass  # no cluster runs here: start one
        ray.init(num_cpus=self.workers, **kw)
        return ray

    def map(self, jobs: List[dict], pipe) -> Iterator[Tuple[int, List[dict]]]:
        ray = self._init()
        import torch

        gpus = self.gpus_per_case if self.gpus_per_case is not None else (1 if torch.cuda.is_available() else 0)
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=self.retries)(self.task)
        pending = {}
        for i, job in enumerate(jobs):
            job = {**job, "device": job["device"] or ("cuda" if gpus else "cpu"),
                   "threads": self.threads or torch.get_num_threads()}
            pending[remote.remote(json.dumps(job))] = i
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                yield i, json.loads(ray.get(done[0]))
            except Exception as e:  # the worker died on every try, or the task could not start
                yield i, [failure_row(Case(**jobs[i]["case"]), _ray_error(e, self.retries))]


def _ray_error(e: Exception, retries: int) -> str:
    """A Ray failure as one line: the task's own exception, or what killed its worker."""
    import re

    cause = getattr(e, "cause", None)  # a RayTaskError carries the task's exception
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() or [""]
    return f"{type(e).__name__} (tried {retries + 1} time(s)): {lines[0]}"


# ============================================================================ the sweep
@dataclass
class Sweep:
    """Cases × a grid of Fuse3D parameters (see the module docstring).

    Args:
        cases: from :func:`cases`.
        grid: ``{field: [values]}`` over :class:`~fuse3d.params.Fuse3DParams` fields.
        params: fixed parameters of every run (over each case's own, under the grid's).
        final: also run each setting's final sampling and score the fused part's colour (costly:
            one latent sampling per setting and case).
        structure: ``"true"`` (a case's true voxels where it has them, so that alignment is judged
            apart from shape, as the evaluation does) or ``"sampled"`` (from the global image).
    """

    cases: List[Case]
    grid: Dict[str, Sequence]
    params: dict = field(default_factory=dict)
    final: bool = False
    structure: str = "true"

    def __post_init__(self):
        self.cases = list(self.cases)
        if not self.cases:
            raise SweepError("a sweep needs at least one case")
        if self.structure not in STRUCTURES:
            raise SweepError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        self.grid = {k: list(v) if not isinstance(v, (str, bytes)) and isinstance(v, Sequence) else v
                     for k, v in self.grid.items()}
        self.settings = settings_of(self.grid)
        unknown = sorted(set(self.params) - set(Fuse3DParams.names()))
        if unknown:
            raise SweepError(f"unknown Fuse3D parameter(s) in params: {unknown}")
        for s in self.settings:  # every setting is valid before any work starts
            try:
                Fuse3DParams().updated(**{**self.params, **s})
            except (TypeError, ValueError) as e:
                raise SweepError(f"setting {s} is not valid: {e}") from None

    @property
    def expensive(self) -> List[str]:
        """Grid fields that cost samplings per value (the others are retunes from the cache)."""
        return expensive_fields(self.grid, self.final)

    def jobs(self, model: Optional[str], cache_dir: Optional[str], device: Optional[str]) -> List[dict]:
        return [{"case": asdict(c), "settings": self.settings, "params": self.params, "final": self.final,
                 "structure": self.structure, "model": model, "cache_dir": cache_dir, "device": device}
                for c in self.cases]

    def run(self, pipe=None, *, model: Optional[str] = None, cache_dir: Optional[Union[str, Path]] = None,
            device: Optional[str] = None, executor=None, progress: bool = True) -> "SweepResult":
        """Run every case and gather the table.

        Args:
            pipe: a loaded :class:`~fuse3d.pipeline.Fuse3D` (its model and cache are used); else one is
                loaded from ``model`` (``None``: the bundled default) with ``cache_dir``.
            executor: :class:`InProcess` (default) or :class:`RayExecutor`; Ray's workers load the model
                themselves and share results through the disk cache, so they need one.
        """
        from tqdm.auto import tqdm

        executor = executor or InProcess()
        if pipe is None:
            from .pipeline import Fuse3D

            pipe = Fuse3D.from_pretrained(model, device=device, cache_dir=cache_dir, progress=False)
        root = pipe.cache.root
        if isinstance(executor, RayExecutor) and root is None:
            raise SweepError("Ray workers share their results through the disk cache: give the pipe a cache_dir "
                             "(Fuse3D.from_pretrained(..., cache_dir=PATH)) on a path every worker sees")
        jobs = self.jobs(str(pipe.trellis.source), None if root is None else str(root), device)
        t0 = time.perf_counter()
        results: List[Optional[List[dict]]] = [None] * len(jobs)
        failed = 0
        with tqdm(total=len(jobs), desc=f"Sweep ({len(self.settings)} settings)", unit="case",
                  disable=not progress) as bar:
            for i, rows in executor.map(jobs, pipe):
                results[i] = rows
                failed += any(r.get("status") == "failed" for r in rows)
                bar.set_postfix(failed=failed)
                bar.update()
        rows = [r for case_rows in results for r in (case_rows or [])]
        return SweepResult(self, rows, pipe.model_name, round(time.perf_counter() - t0, 2), repr(executor))


# ============================================================================ results
class SweepResult:
    """A finished sweep: :attr:`table` (pandas, one row per case × setting × local image) and helpers."""

    def __init__(self, sweep: Sweep, rows: List[dict], model: str, seconds: float, executor: str = ""):
        import pandas as pd

        self.sweep, self.model, self.seconds, self.executor = sweep, model, seconds, executor
        columns = ["case", "source", "setting", *sweep.grid, "local", "part", "cells", "aligned_cells_raw",
                   "aligned_cells", "voxels", "aligned_voxels", "iou", "precision", "recall", "select_all_iou",
                   "global_tokens", "lambda", "global_lambda", "fused_color_error", "status", "error", "seconds"]
        table = pd.DataFrame(rows)
        for c in columns:
            if c not in table:
                table[c] = None
        self.table = table[columns].reset_index(drop=True)

    @property
    def failures(self) -> "pandas.DataFrame":
        """One row per failed case: its name and error."""
        t = self.table
        return t[t["status"] == "failed"][["case", "source", "error"]].reset_index(drop=True)

    @property
    def ok(self) -> "pandas.DataFrame":
        return self.table[self.table["status"] != "failed"]

    def scores(self, metric: str = "iou") -> "pandas.DataFrame":
        """Per setting: the grid's values and ``metric`` averaged over the cases and local images that
        ran, best first."""
        ok = self.ok
        if ok.empty:
            raise SweepError("no case of the sweep ran; see .failures")
        keys = ["setting", *self.sweep.grid]
        out = ok.groupby(keys, dropna=False, sort=False)[metric].mean().reset_index()
        return out.sort_values(metric, ascending=metric.endswith("error"), kind="stable").reset_index(drop=True)

    def best(self, metric: str = "iou") -> dict:
        """``{"setting": {field: value}, metric: score}``: the setting with the best mean ``metric``
        (the highest, or the lowest for an ``*_error``)."""
        top = self.scores(metric).iloc[0]
        return {"setting": self.sweep.settings[int(top["setting"])], metric: float(top[metric])}

    def heatmap(self, rows: str, cols: str, metric: str = "iou") -> "pandas.DataFrame":
        """``metric`` averaged over cases and locals (and any other grid field), ``rows`` × ``cols``."""
        for f in (rows, cols):
            if f not in self.sweep.grid:
                raise SweepError(f"{f!r} is not a grid field; the grid has {list(self.sweep.grid)}")
        ok = self.ok
        table = ok.pivot_table(index=rows, columns=cols, values=metric, aggfunc="mean", sort=False)
        return table

    def save(self, out: Union[str, Path]) -> List[Path]:
        """Write ``table.csv`` (and ``table.parquet`` when pyarrow is installed) and ``sweep.json`` (the
        cases, grid, model, executor, wall time, failures and best setting) into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "table.csv"]
        self.table.to_csv(written[0], index=False)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            written.append(out / "table.parquet")
            self.table.to_parquet(written[1], index=False)
        has_truth = self.ok["iou"].notna().any() if not self.ok.empty else False
        meta = {"model": self.model, "executor": self.executor, "seconds": self.seconds,
                "cases": [c.name for c in self.sweep.cases], "grid": self.sweep.grid, "params": self.sweep.params,
                "final": self.sweep.final, "structure": self.sweep.structure, "settings": len(self.sweep.settings),
                "failures": self.failures.to_dict("records"),
                "best": self.best() if has_truth else None}
        written.append(out / "sweep.json")
        written[-1].write_text(json.dumps(meta, indent=1, default=list) + "\n")
        return written

    def __repr__(self) -> str:
        return (f"SweepResult(model={self.model!r}, {len(self.sweep.cases)} cases × {len(self.sweep.settings)} settings, "
                f"{len(self.failures)} failed, {self.seconds:.1f} s)")


# ============================================================================ spec files
SPEC_KEYS = {"model", "cases", "grid", "params", "final", "structure"}
CASE_KEYS = {"examples", "seeds", "specs"}


def load_sweep_spec(path: Union[str, Path]) -> Tuple[Sweep, Optional[str]]:
    """``(sweep, model)`` from a TOML file::

        model = "default"                    # optional: a model folder or Hugging Face repo id
        final = false                        # optional: score the fused colour (a sampling per setting)
        structure = "true"                   # optional: "true" or "sampled"

        [cases]
        seeds = "910000:910004"              # or a list; examples = ["chair"]; specs = ["a/spec.toml"]

        [grid]
        heads = [[0], [1], [0, 4, 12]]
        threshold = [0.4, 0.5, 0.6]

        [params]                             # fixed for every run
        latent_steps = 6

    Spec paths are relative to the file.
    """
    import tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"no sweep spec at {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: not valid TOML ({e})") from None
    unknown = set(doc) - SPEC_KEYS
    if unknown:
        raise SweepError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(SPEC_KEYS)})")
    c = doc.get("cases", {})
    if not isinstance(c, dict) or not c or set(c) - CASE_KEYS:
        raise SweepError(f"{path}: [cases] needs one or more of {sorted(CASE_KEYS)}, got {c!r}")
    specs = [path.parent / p for p in c.get("specs", [])]
    grid = doc.get("grid", {})
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{path}: [grid] needs at least one field with a list of values")
    model = doc.get("model")
    model = None if model in (None, "default") else str(model)
    sweep = Sweep(cases(c.get("examples", ()), c.get("seeds", ()), specs), grid, dict(doc.get("params", {})),
                  bool(doc.get("final", False)), str(doc.get("structure", "true")))
    return sweep, model


def executor_for(ray: Optional[str], workers: Optional[int] = None, gpus_per_case: Optional[float] = None):
    """The CLI's choice: no ``ray`` → :class:`InProcess`; else :class:`RayExecutor` at that address."""
    if not ray:
        return InProcess()
    return RayExecutor(ray, workers=workers, gpus_per_case=gpus_per_case)
