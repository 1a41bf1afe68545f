import json
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).parent / "fixtures" / "reference"


def load_reference(name: str):
    """``(config, params, tensors)`` of a reference fixture file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = REFERENCE / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
    data = load_file(str(path))
    params = {k[len("param."):]: v for k, v in data.items() if k.startswith("param.")}
    tensors = {k: v for k, v in data.items() if not k.startswith("param.")}
    return config, params, tensors


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from fuse3d.testing import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_dir):
    from fuse3d.trellis.pipeline import load_pipeline

    return load_pipeline(tiny_model_dir, progress=False)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
