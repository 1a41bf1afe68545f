"""3D assets from TRELLIS decoder outputs, on the CPU: meshes, Gaussians, export, voxelization.

* :class:`Mesh` / :func:`extract_mesh`: marching-cubes meshes from the SLAT mesh decoder's sdf.
* :class:`Gaussians`: activated 3D Gaussians from the SLAT Gaussian decoder.
* :func:`export` (:func:`export_glb`, :func:`export_ply`) and :func:`read_ply`: GLB and 3DGS PLY files.
* :func:`voxelize_mesh`, :func:`voxels_from_grid`, :func:`voxels_from_points`: sparse structures
  ``coords [N, 4]`` from user geometry; :func:`transfer_colors` colours a user's mesh.
* :func:`encode_asset`: a given asset (procedural object, coloured mesh) as a structured latent
  (:class:`EncodedAsset`), TRELLIS's asset → SLAT path, which ``Fuse3D.edit`` starts from.

Everything is in TRELLIS's frame (z up, object in ``[-0.5, 0.5]``³) except files, which are y up.
"""
from .encode import EncodedAsset, SurfaceVoxels, encode_asset
from .export import PLY_PROPERTIES, Z_UP_TO_Y_UP, export, export_glb, export_ply, read_ply
from .gaussians import SH_C0, Gaussians
from .mesh import CUBE_CORNERS, Mesh, extract_mesh
from .voxelize import normalize_vertices, transfer_colors, voxelize_mesh, voxels_from_grid, voxels_from_points

__all__ = [
    "EncodedAsset",
    "SurfaceVoxels",
    "encode_asset",
    "CUBE_CORNERS",
    "Gaussians",
    "Mesh",
    "PLY_PROPERTIES",
    "SH_C0",
    "Z_UP_TO_Y_UP",
    "export",
    "export_glb",
    "export_ply",
    "extract_mesh",
    "normalize_vertices",
    "read_ply",
    "transfer_colors",
    "voxelize_mesh",
    "voxels_from_grid",
    "voxels_from_points",
]
