"""Run specifications for ``fuse3d run``: a small TOML or YAML file.

.. code-block:: toml

    model = "default"          # optional: a model folder or Hugging Face repo id
    seed = 0

    [global]                    # optional: omit to pick the largest selection among the locals
    image = "global.png"

    [[local]]
    image = "local_0.png"
    mask = "local_0_mask.png"   # or box = [x0, y0, x1, y1], or patches = [...]; none = whole object

    [params]                    # any fuse3d.Fuse3DParams field
    threshold = 0.55

Paths are relative to the spec file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from .conditions import Condition, ConditionError

EXAMPLES = Path(__file__).parent / "examples"


class SpecError(ValueError):
    pass


@dataclass
class RunSpec:
    path: Path
    global_condition: Optional[Condition]
    local_conditions: List[Condition]
    seed: int = 0
    model: Optional[str] = None
    params: dict = field(default_factory=dict)


def _read(path: Path) -> dict:
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{path}: invalid TOML: {e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"{path}: invalid YAML: {e}") from None
        return doc or {}
    raise SpecError(f"{path}: a spec is a .toml or .yaml file")


def _condition(entry, base: Path, what: str) -> Condition:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict) or "image" not in entry:
        raise SpecError(f"{what} needs an 'image'")
    unknown = set(entry) - {"image", "mask", "box", "patches", "name", "min_coverage"}
    if unknown:
        raise SpecError(f"{what}: unknown keys {sorted(unknown)}")
    image = base / entry["image"]
    kw = {"name": entry.get("name", Path(entry["image"]).stem), "min_coverage": float(entry.get("min_coverage", 0.0))}
    given = [k for k in ("mask", "box", "patches") if k in entry]
    if len(given) > 1:
        raise SpecError(f"{what}: give one of mask, box or patches, not {given}")
    try:
        if "mask" in entry:
            return Condition(image, base / entry["mask"], **kw)
        if "box" in entry:
            return Condition.from_box(image, entry["box"], **kw)
        if "patches" in entry:
            return Condition.from_patches(image, entry["patches"], **kw)
        return Condition(image, **kw)
    except ConditionError as e:
        raise SpecError(f"{what}: {e}") from None


def load_spec(path: Union[str, Path]) -> RunSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no spec file at {path}")
    doc = _read(path)
    unknown = set(doc) - {"model", "seed", "global", "local", "params"}
    if unknown:
        raise SpecError(f"{path}: unknown top-level keys {sorted(unknown)}")
    base = path.parent
    locals_ = doc.get("local", [])
    if not isinstance(locals_, list) or not locals_:
        raise SpecError(f"{path}: needs at least one [[local]] condition")
    g = _condition(doc["global"], base, "[global]") if "global" in doc else None
    ls = [_condition(e, base, f"[[local]] #{i}") for i, e in enumerate(locals_)]
    model = doc.get("model")
    return RunSpec(path, g, ls, int(doc.get("seed", 0)), None if model in (None, "default") else str(model),
                   dict(doc.get("params", {})))


def example_spec(name: str = "chair") -> Path:
    """Path of a bundled example's ``spec.toml``."""
    path = EXAMPLES / name / "spec.toml"
    if not path.is_file():
        names = sorted(p.name for p in EXAMPLES.iterdir() if (p / "spec.toml").is_file())
        raise SpecError(f"no bundled example {name!r}; available: {', '.join(names)}")
    return path
