"""Run specifications for ``fuse3d run``: a small TOML or YAML file.

.. code-block:: toml

    model = "default"          # optional: a model folder or Hugging Face repo id
    seed = 0

    [global]                    # optional: omit to pick the largest selection among the locals
    image = "global.png"

    [[local]]
    image = "local_0.png"
    mask = "local_0_mask.png"   # or box = [x0, y0, x1, y1], patches = [...], painted = "composite.png",
                                # layer = "layer.png"; none = the whole object
    # background = "black"      # the image is already on black (no alpha)
    # remove_background = "rembg"

    [params]                    # any fuse3d.Fuse3DParams field
    threshold = 0.55

Paths are relative to the spec file and must stay inside its folder.

:func:`load_published_demo` reads the published Fuse3D demo's example layout instead
(``global_cond/NAME.png``, ``local_cond/NAME/{bgK,comK,layerK}.png``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Union

from .conditions import Condition, ConditionError, load_image
from .trellis.preprocess import black_border, has_alpha

EXAMPLES = Path(__file__).parent / "examples"
REGION_KEYS = ("mask", "box", "patches", "painted", "layer")
CONDITION_KEYS = {"image", "name", "min_coverage", "background", "remove_background", *REGION_KEYS}
TOP_KEYS = {"model", "seed", "global", "local", "params"}


class SpecError(ValueError):
    pass


@dataclass
class RunSpec:
    """What to run: the conditions, the seed, the model and the parameters.

    Attributes:
        path: the spec file (or the published demo's folder).
        global_condition: ``None`` picks the largest selection among the locals.
    """

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
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{path}: invalid TOML: {e}") from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"{path}: invalid YAML: {e}") from None
        doc = {} if doc is None else doc
    else:
        raise SpecError(f"{path}: a spec is a .toml or .yaml file")
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a spec is a table of keys, got a {type(doc).__name__}")
    return doc


def _type_error(what: str, key: str, expected: str, value) -> SpecError:
    return SpecError(f"{what}: '{key}' must be {expected}, got {value!r} ({type(value).__name__})")


def _path(base: Path, value, what: str, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise _type_error(what, key, "a file path (a string)", value)
    p = Path(value)
    resolved = (base / p).resolve()
    if p.is_absolute() or not resolved.is_relative_to(base.resolve()):
        raise SpecError(f"{what}: '{key}' = {value!r} leaves the spec's folder {base}; paths are relative to "
                        "the spec file and stay inside its folder (copy the file next to the spec)")
    return base / p


def _number(entry: dict, key: str, what: str, default: float) -> float:
    v = entry.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _type_error(what, key, "a number", v)
    return float(v)


def _condition(entry, base: Path, what: str) -> Condition:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict) or "image" not in entry:
        raise SpecError(f"{what} needs an 'image'")
    unknown = set(entry) - CONDITION_KEYS
    if unknown:
        raise SpecError(f"{what}: unknown keys {sorted(unknown)} (known: {sorted(CONDITION_KEYS)})")
    image = _path(base, entry["image"], what, "image")
    name = entry.get("name", Path(entry["image"]).stem)
    if not isinstance(name, str):
        raise _type_error(what, "name", "a string", name)
    kw = {"name": name, "min_coverage": _number(entry, "min_coverage", what, 0.0)}
    for key in ("background", "remove_background"):
        if key in entry:
            if not isinstance(entry[key], str):
                raise _type_error(what, key, "a string", entry[key])
            kw[key] = entry[key]
    given = [k for k in REGION_KEYS if k in entry]
    if len(given) > 1:
        raise SpecError(f"{what}: give one of {', '.join(REGION_KEYS)}, not {given}")
    try:
        if "mask" in entry:
            return Condition(image, _path(base, entry["mask"], what, "mask"), **kw)
        if "painted" in entry:
            return Condition.from_painted(image, _path(base, entry["painted"], what, "painted"), **kw)
        if "layer" in entry:
            return Condition.from_layer(image, _path(base, entry["layer"], what, "layer"), **kw)
        if "box" in entry:
            box = entry["box"]
            if not isinstance(box, list) or len(box) != 4 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
                raise _type_error(what, "box", "four numbers [left, top, right, bottom]", box)
            return Condition.from_box(image, box, **kw)
        if "patches" in entry:
            patches = entry["patches"]
            if not isinstance(patches, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in patches):
                raise _type_error(what, "patches", "a list of integers", patches)
            return Condition.from_patches(image, patches, **kw)
        return Condition(image, **kw)
    except ConditionError as e:
        raise SpecError(f"{what}: {e}") from None


def load_spec(path: Union[str, Path]) -> RunSpec:
    """Read a TOML/YAML run spec; every problem is a :class:`SpecError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no spec file at {path}")
    doc = _read(path)
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown top-level keys {sorted(unknown)} (known: {sorted(TOP_KEYS)})")
    base = path.parent
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _type_error(str(path), "seed", "an integer", seed)
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise _type_error(str(path), "model", "a folder or repo id (a string)", model)
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise _type_error(str(path), "params", "a table", params)
    locals_ = doc.get("local", [])
    if not isinstance(locals_, list) or not locals_:
        raise SpecError(f"{path}: needs at least one [[local]] condition")
    g = _condition(doc["global"], base, "[global]") if "global" in doc else None
    ls = [_condition(e, base, f"[[local]] #{i}") for i, e in enumerate(locals_)]
    return RunSpec(path, g, ls, seed, None if model in (None, "default") else model, dict(params))


def example_spec(name: str = "chair") -> Path:
    """Path of a bundled example's ``spec.toml``."""
    path = EXAMPLES / name / "spec.toml"
    if not path.is_file():
        names = sorted(p.name for p in EXAMPLES.iterdir() if (p / "spec.toml").is_file())
        raise SpecError(f"no bundled example {name!r}; available: {', '.join(names)}")
    return path


# ---------------------------------------------------------------------------------------------- published demo
def _background_option(path: Path, remove_background) -> dict:
    """How to find an image's object: its alpha; else black (already preprocessed); else the remover."""
    img = load_image(path)
    if has_alpha(img):
        return {}
    if black_border(img):
        return {"background": "black"}
    if remove_background is not None:
        return {"remove_background": remove_background}
    raise SpecError(f"{path}: no alpha channel and no black background; pass remove_background "
                    "(a function or 'rembg')")


def _numbered(folder: Path, prefix: str) -> dict:
    out = {}
    for f in folder.iterdir():
        m = re.fullmatch(rf"{prefix}(\d*)", f.stem, flags=re.IGNORECASE)
        if m and f.is_file():
            out[m.group(1)] = f
    return out


def load_published_demo(folder: Union[str, Path], name: str,
                        remove_background: Union[None, str, Callable] = None) -> RunSpec:
    """The published Fuse3D demo's example ``name`` from its folder layout, as a :class:`RunSpec`.

    Layout: ``folder/global_cond/NAME.png`` (the global image) and ``folder/local_cond/NAME/`` holding
    ``bgK.png`` (the image, raw or preprocessed), ``comK.png`` (it with strokes painted, in its own
    frame or in the preprocessed 518² frame) and optionally ``layerK.png`` (the strokes alone,
    alpha > 0). Each ``bgK``/``comK`` pair is one local condition, selected where the composite
    differs from the background (:meth:`Condition.from_painted`, as the demo does); a ``bgK`` with
    only a ``layerK`` uses the layer. Images without alpha on a black border are read with
    ``background="black"`` (the demo stores them preprocessed); others use ``remove_background``.
    """
    folder = Path(folder)
    g_files = sorted((folder / "global_cond").glob(f"{name}.*")) if (folder / "global_cond").is_dir() else []
    if not g_files:
        raise SpecError(f"{folder}: no global_cond/{name}.png (the published demo's layout is "
                        f"global_cond/NAME.png and local_cond/NAME/bgK.png, comK.png, layerK.png)")
    local_dir = folder / "local_cond" / name
    if not local_dir.is_dir():
        raise SpecError(f"{folder}: no local_cond/{name}/ folder")
    bgs, coms, layers = (_numbered(local_dir, p) for p in ("bg", "com", "layer"))
    if not bgs:
        raise SpecError(f"{local_dir}: no bgK.png image")
    locals_ = []
    for k in sorted(bgs, key=lambda s: int(s) if s else 0):
        bg = bgs[k]
        try:
            kw = {"name": f"{name}_local{k}", **_background_option(bg, remove_background)}
            if k in coms:
                locals_.append(Condition.from_painted(bg, coms[k], **kw))
            elif k in layers:
                locals_.append(Condition.from_layer(bg, layers[k], **kw))
            else:
                raise SpecError(f"{bg}: no com{k}.png or layer{k}.png beside it")
        except ConditionError as e:
            raise SpecError(f"{bg}: {e}") from None
    try:
        g = Condition(g_files[0], name=f"{name}_global", **_background_option(g_files[0], remove_background))
    except ConditionError as e:
        raise SpecError(f"{g_files[0]}: {e}") from None
    return RunSpec(folder, g, locals_, 0, None, {})


__all__ = ["RunSpec", "SpecError", "example_spec", "load_published_demo", "load_spec"]
