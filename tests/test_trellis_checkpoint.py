import json
import shutil

import pytest
import torch

from fuse3d.trellis.checkpoint import CheckpointError, load_network, torso_dtype
from fuse3d.trellis.pipeline import load_pipeline
from fuse3d.trellis.registry import UnknownNetworkError, build


def test_roundtrip_is_bit_identical_and_keeps_published_dtypes(tiny_model_dir):
    from safetensors import safe_open

    path = tiny_model_dir / "ckpts" / "slat_flow_tiny.safetensors"
    with safe_open(str(path), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    # published layout: blocks in float16, embedders / io layers / norms in float32
    assert stored["blocks.0.cross_attn.to_q.weight"].dtype == torch.float16
    assert stored["input_blocks.0.conv1.conv.weight"].dtype == torch.float16
    assert stored["input_blocks.0.norm1.weight"].dtype == torch.float32
    assert stored["t_embedder.mlp.0.weight"].dtype == torch.float32
    model = load_network(tiny_model_dir / "ckpts" / "slat_flow_tiny", dtype="auto")  # CPU → fp32
    sd = model.state_dict()
    assert sd["blocks.0.cross_attn.to_q.weight"].dtype == torch.float32
    for k, v in stored.items():
        assert torch.equal(sd[k].to(v.dtype), v), k


def test_dtype_policy():
    assert torso_dtype("auto", "cpu", True) == torch.float32
    assert torso_dtype("auto", "cuda", True) == torch.float16
    assert torso_dtype("auto", "cuda", False) == torch.float32
    assert torso_dtype("bf16", "cpu", True) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be"):
        torso_dtype("int8", "cpu", True)


def test_bf16_blocks(tiny_model_dir):
    model = load_network(tiny_model_dir / "ckpts" / "ss_flow_tiny", dtype="bf16")
    assert model.blocks[0].self_attn.to_qkv.weight.dtype == torch.bfloat16
    assert model.input_layer.weight.dtype == torch.float32
    y = model(torch.randn(1, 8, 16, 16, 16), torch.tensor([500.0]), torch.randn(1, 5, 64))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_missing_checkpoint_file_names_it(model_copy):
    (model_copy / "ckpts" / "ss_decoder_tiny.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing checkpoint file: .*ss_decoder_tiny\.safetensors"):
        load_pipeline(model_copy, progress=False)


def test_missing_pipeline_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="missing checkpoint file: .*pipeline.json"):
        load_pipeline(tmp_path / "empty", progress=False)


@pytest.mark.parametrize("text, match", [("{not json", "pipeline.json"), ('{"args": {}}', "has no args.models")])
def test_broken_pipeline_json_names_the_file(model_copy, text, match):
    (model_copy / "pipeline.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        load_pipeline(model_copy, progress=False)


def test_wrong_shape_names_file_key_and_shapes(model_copy):
    cfg_path = model_copy / "ckpts" / "ss_flow_tiny.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["args"]["model_channels"] = 32  # the weights were written for 64
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_pipeline(model_copy, progress=False)
    msg = str(e.value)
    assert "ss_flow_tiny.safetensors" in msg
    assert "key 'pos_emb': expected shape [4096, 32], found [4096, 64]" in msg


def test_corrupt_safetensors_names_file(model_copy):
    path = model_copy / "ckpts" / "slat_flow_tiny.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"slat_flow_tiny\.safetensors is corrupt or not a safetensors file"):
        load_pipeline(model_copy, progress=False)


def test_unknown_class_name(model_copy):
    cfg_path = model_copy / "ckpts" / "ss_flow_tiny.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["name"] = "SparseStructureFlowModelV9"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(UnknownNetworkError, match="unknown network class 'SparseStructureFlowModelV9'"):
        load_pipeline(model_copy, progress=False)
    with pytest.raises(UnknownNetworkError, match="knows: .*SLatFlowModel"):
        build("Nope")


def test_neither_folder_nor_repo(tmp_path):
    with pytest.raises(CheckpointError, match="neither a model folder"):
        load_pipeline(tmp_path / "no" / "such" / "dir", progress=False)


def _fake_hf_cache(cache, repo, src):
    """Lay out ``src`` as huggingface_hub's cache does for a downloaded model repo."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    shutil.copytree(src, snap)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


def test_hugging_face_repo_from_cache_offline(tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _fake_hf_cache(cache, "fuse3d-tests/tiny-trellis", tiny_model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    pipe = load_pipeline("fuse3d-tests/tiny-trellis", progress=False)
    assert pipe.source == "fuse3d-tests/tiny-trellis"
    assert pipe.model_name == "fuse3d-tiny-random"
    with pytest.raises(CheckpointError, match="cannot get pipeline.json of Hugging Face repo 'fuse3d-tests/absent'"):
        load_pipeline("fuse3d-tests/absent", progress=False)
