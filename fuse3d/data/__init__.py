"""Procedural data: part-labelled 3D objects, TRELLIS-style surface voxels, renders and Fuse3D condition images."""
from .procedural import (
    KINDS,
    RESOLUTION,
    Box,
    Cone,
    Cylinder,
    Ellipsoid,
    ObjectSpec,
    Part,
    Pattern,
    Primitive,
    RenderResult,
    Torus,
    View,
    VoxelObject,
    distinct_colors,
    fit_view,
    load_example_set,
    make_example_set,
    part_mask,
    random_object,
    random_view,
    recolor_part,
    render,
    save_example_set,
    voxelize,
)

__all__ = [
    "KINDS", "RESOLUTION", "Box", "Cone", "Cylinder", "Ellipsoid", "ObjectSpec", "Part", "Pattern", "Primitive",
    "RenderResult", "Torus", "View", "VoxelObject", "distinct_colors", "fit_view", "load_example_set", "make_example_set",
    "part_mask", "random_object", "random_view", "recolor_part", "render", "save_example_set", "voxelize",
]
