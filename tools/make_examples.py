"""Write the bundled example condition sets (fuse3d/examples/*) from the procedural generator.

    python tools/make_examples.py

Deterministic: the same code writes the same images. Each folder holds the global image, the local
images with their masks, the ground-truth masks of the same parts in the global image, an
``example.json`` from :func:`fuse3d.data.save_example_set` and a ``spec.toml`` for ``fuse3d run``.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fuse3d.data import (View, fit_view, make_example_set, random_object, recolor_part, render,  # noqa: E402
                         save_example_set)

EXAMPLES = {"chair": 1, "car": 5, "robot": 6}
# The object fills about 80 % of the frame, so its TRELLIS crop (1.2× its box) is about 0.96·SIZE:
# at 640 px the crop is above the encoder's 518 px and no image is upscaled.
SIZE = 640
OUT = ROOT / "fuse3d" / "examples"


def spec_toml(example: dict, note: str) -> str:
    lines = [f"# {note}", "# Paths are relative to this file. Run with: fuse3d run spec.toml --out OUT", "",
             "seed = 0", "", "[global]", f'image = "{example["global"]["image"]}"', ""]
    for loc in example["locals"]:
        lines += ["[[local]]", f'image = "{loc["image"]}"', f'mask = "{loc["mask"]}"',
                  f'# the {loc["part"]} in another colour / pattern', ""]
    lines += ["[params]", "# any fuse3d.Fuse3DParams field, e.g.", "threshold = 0.55", "strength = 1.0", ""]
    return "\n".join(lines)


def conflict_example(folder: Path) -> None:
    """Paper C.4: two local images target the same part with conflicting colours.

    Local 0 recolours the whole seat red (a large region); local 1 shows a small blue patch on the
    seat (a small region). With the share-based λ the small, precise region should dominate.
    """
    spec = random_object(1, kind="chair")
    view_g = fit_view(spec, View(yaw_deg=40, pitch_deg=30))
    seat = spec.index("seat")
    red = recolor_part(spec, "seat", (0.85, 0.1, 0.1))
    blue = recolor_part(spec, "seat", (0.1, 0.2, 0.9))
    folder.mkdir(parents=True, exist_ok=True)
    g = render(spec, view_g, size=SIZE, supersample=2)
    Image.fromarray(g.rgba).save(folder / "global.png")
    r0 = render(red, fit_view(red, View(yaw_deg=-30, pitch_deg=35)), size=SIZE, supersample=2)
    Image.fromarray(r0.rgba).save(folder / "local_0.png")
    Image.fromarray((r0.part_id == seat).astype(np.uint8) * 255).save(folder / "local_0_mask.png")
    r1 = render(blue, fit_view(blue, View(yaw_deg=120, pitch_deg=35)), size=SIZE, supersample=2)
    Image.fromarray(r1.rgba).save(folder / "local_1.png")
    m = r1.part_id == seat
    ys, xs = np.nonzero(m)
    cy, cx = int(ys.mean()), int(xs.mean())
    small = np.zeros_like(m)
    half = round(12 * SIZE / 256)  # a 24-px square at 256 px, scaled with the render
    small[cy - half:cy + half, cx - half:cx + half] = True
    Image.fromarray((m & small).astype(np.uint8) * 255).save(folder / "local_1_mask.png")
    Image.fromarray((g.part_id == seat).astype(np.uint8) * 255).save(folder / "global_mask_0.png")
    Image.fromarray((g.part_id == seat).astype(np.uint8) * 255).save(folder / "global_mask_1.png")
    meta = {"kind": "chair", "seed": 1, "part_names": spec.part_names, "global": {"image": "global.png"},
            "locals": [{"image": "local_0.png", "mask": "local_0_mask.png", "global_mask": "global_mask_0.png", "part": "seat",
                        "part_index": seat, "color": [0.85, 0.1, 0.1]},
                       {"image": "local_1.png", "mask": "local_1_mask.png", "global_mask": "global_mask_1.png", "part": "seat",
                        "part_index": seat, "color": [0.1, 0.2, 0.9]}],
            "note": "conflicting local conditions (paper C.4): a large red region and a small blue one on the same part",
            "spec": spec.to_dict()}
    (folder / "example.json").write_text(json.dumps(meta, indent=1) + "\n")
    (folder / "spec.toml").write_text(spec_toml(meta, meta["note"]))


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    for name, seed in EXAMPLES.items():
        ex = make_example_set(seed, size=SIZE, supersample=2)
        meta = save_example_set(ex, OUT / name)
        parts = ", ".join(loc["part"] for loc in meta["locals"])
        (OUT / name / "spec.toml").write_text(spec_toml(meta, f"A procedural {meta['kind']}: local images restyle the {parts}."))
    conflict_example(OUT / "conflict")
    print("wrote", ", ".join(sorted(p.name for p in OUT.iterdir())))


if __name__ == "__main__":
    main()
