"""Procedural part-labelled 3D objects, their TRELLIS-style voxelisation, and a small software renderer.

Everything here is pure numpy + pillow on the CPU and deterministic from an integer seed (every
random choice goes through a ``numpy.random.Generator``; nothing touches the global RNG).

Conventions (those of TRELLIS):

* objects live in the cube ``[-0.5, 0.5]³`` with **z up**; generated objects fit in ``[-0.45, 0.45]³``
  and their longest extent is 0.80–0.88, centred on the origin. The front of every template faces +x.
* the sparse structure is a ``64³`` grid of **surface** voxels; a point ``p`` lies in voxel
  ``floor((p + 0.5)·64)``, so voxel ``i`` has its centre at ``(i + 0.5)/64 - 0.5``; coords are
  int32 ``[N, 4] = (batch 0, x, y, z)`` sorted by ``(x, y, z)``.
* condition images are RGBA with a transparent background.

Geometry is implicit: each :class:`Part` is one primitive (box with optional rounding, ellipsoid,
cylinder, cone/frustum, torus; each with a centre, sizes, an axis for the round ones and an optional
rotation) minus optional carved primitives (a mug's cavity, a lamp shade's inside). A primitive's
``sdf`` is negative inside; the object is the union of its parts (``min`` over parts).

**Part rule.** Where parts overlap, a point belongs to the part whose signed distance is smallest
(the part it is "most inside"); ties go to the lower part index. On the object's surface this is the
part whose surface it is, which is also the part a ray sees first, so voxel labels and rendered
labels agree.

Rendering (:func:`render`) sphere-traces each part separately against its own implicit surface,
only for rays that hit that part's bounding box (and only up to the nearest hit found so far): the
first hit on a union is the nearest of the first hits on its members. Per-part tracing keeps every
step cheap (one primitive instead of the min over all parts) and culls most rays, so a 518² frame
takes a fraction of a second on one core, with exact silhouettes and analytic-quality normals
(central differences of the part's sdf). A :class:`VoxelObject` is rendered by a vectorised voxel
DDA (flat-shaded cubes), handy for looking at sparse structures.

Modules: :mod:`~fuse3d.data.primitives` (primitives, parts, objects), :mod:`~fuse3d.data.colors`,
:mod:`~fuse3d.data.templates` (the object kinds, :func:`random_object`), :mod:`~fuse3d.data.voxelize`,
:mod:`~fuse3d.data.render` (cameras, the renderer, part masks), :mod:`~fuse3d.data.examples` (Fuse3D
example sets), :mod:`~fuse3d.data.meshes`.
"""
from .colors import distinct_colors
from .examples import ExampleSet, load_example_set, make_example_set, save_example_set
from .primitives import KINDS, RESOLUTION, Box, Cone, Cylinder, Ellipsoid, ObjectSpec, Part, Pattern, Primitive, Torus
from .render import RenderResult, View, fit_view, part_mask, random_view, render
from .templates import group_name, random_object, recolor_part
from .voxelize import VoxelObject, surface_normals, voxelize

__all__ = [
    "KINDS", "RESOLUTION", "Box", "Cone", "Cylinder", "Ellipsoid", "ExampleSet", "ObjectSpec", "Part", "Pattern", "Primitive",
    "RenderResult", "Torus", "View", "VoxelObject", "distinct_colors", "fit_view", "group_name", "load_example_set",
    "make_example_set", "part_mask", "random_object", "random_view", "recolor_part", "render", "save_example_set", "surface_normals",
    "voxelize",
]
