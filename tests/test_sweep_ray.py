"""fuse3d.sweep on a local Ray cluster the test starts (2 CPU workers, tiny model): the same table as
in process, results shared through the disk cache, a killed worker retried, a case whose worker
always dies reported."""
import os
from pathlib import Path

import pandas as pd
import pytest

from fuse3d import Fuse3D
from fuse3d.sweep import RayExecutor, Sweep, SweepError, cases, run_job

import ray  # the dev extra installs it: these tests are never skipped

FAST = {"latent_steps": 1, "structure_steps": 1}
GRID = {"heads": [[0], [1, 2]], "threshold": [0.4, 0.6]}
SAME = ["case", "setting", "local", "iou", "precision", "recall", "aligned_cells", "aligned_voxels", "global_tokens",
        "lambda", "global_lambda"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def crashing(marker: str, times: int):
    """A task that kills its own worker process the first ``times`` times it runs, then works (the
    marker file counts the crashes; nested, so that Ray ships it by value)."""
    def task(job_json: str) -> str:
        crashes = len(Path(marker).read_text()) if Path(marker).exists() else 0
        if crashes < times:
            Path(marker).write_text("x" * (crashes + 1))
            os._exit(1)
        return run_job(job_json)
    return task


def test_ray_gives_the_in_process_table(cluster, tiny_model_dir, tmp_path):
    sweep = Sweep(cases(seeds=[910000, 910001]), GRID, params=FAST)
    local = sweep.run(Fuse3D.from_pretrained(tiny_model_dir, device="cpu", cache_dir=tmp_path / "a", progress=False),
                      progress=False)
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", cache_dir=tmp_path / "b", progress=False)
    remote = sweep.run(pipe, executor=RayExecutor(workers=2), progress=False)
    assert set(remote.table["status"]) == {"ok"}, remote.failures
    pd.testing.assert_frame_equal(remote.table[SAME], local.table[SAME])
    # the workers wrote their results into the shared cache: this process now reads them
    again = sweep.run(pipe, progress=False)
    assert set(again.table["status"]) == {"cached"}
    with pytest.raises(SweepError, match="disk cache"):
        sweep.run(Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False), executor=RayExecutor())


def test_a_killed_worker_is_retried_and_one_that_always_dies_is_reported(cluster, tiny_model_dir, tmp_path):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", cache_dir=tmp_path / "cache", progress=False)
    sweep = Sweep(cases(seeds=[910000]), {"threshold": [0.5]}, params=FAST)
    marker = tmp_path / "crashed"
    result = sweep.run(pipe, executor=RayExecutor(task=crashing(str(marker), 1), retries=2), progress=False)
    assert marker.read_text() == "x", "the first try crashed"
    assert set(result.table["status"]) == {"ok"}, result.failures
    marker.unlink()
    dead = sweep.run(pipe, executor=RayExecutor(task=crashing(str(marker), 5), retries=1), progress=False)
    assert marker.read_text() == "xx", "tried twice (one retry)"
    assert dead.failures.to_dict("records") == [
        {"case": "seed-910000", "source": "seed", "error": "WorkerCrashedError (tried 2 time(s)): The worker died "
                                                          "unexpectedly while executing this task. Check "
                                                          "python-core-worker-*.log files for more information."}]
