"""Writing meshes (GLB) and Gaussians (3D Gaussian Splatting PLY), and reading such PLYs back.

TRELLIS works z up; glTF is y up. Both writers rotate by :data:`Z_UP_TO_Y_UP`,
``(x, y, z) → (x, z, -y)``, so the object's top ends up at +y. Files are written to a temporary
file next to the target and moved into place, so a reader never sees a half-written file.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
from scipy.spatial.transform import Rotation

from .gaussians import Gaussians
from .mesh import Mesh

__all__ = ["Z_UP_TO_Y_UP", "PLY_PROPERTIES", "export", "export_glb", "export_ply", "read_ply"]

PathLike = Union[str, os.PathLike]

#: Row-vector rotation ``p @ Z_UP_TO_Y_UP``: TRELLIS (z up) → glTF (y up), ``(x, y, z) → (x, z, -y)``.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

#: Vertex properties of a 3D Gaussian Splatting PLY (all float32), in file order.
PLY_PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">"}
_OPACITY_EPS = 1e-6  # opacities are clamped to [eps, 1 - eps] before the logit


def export(obj: Union[Mesh, Gaussians], path: PathLike, metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write ``obj`` in the format its suffix names: a :class:`Mesh` as ``.glb``, :class:`Gaussians` as ``.ply``.

    ``metadata`` (e.g. which model produced the asset) goes into the glTF mesh ``extras`` or the
    PLY header comments.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    writers = {".glb": (Mesh, export_glb), ".ply": (Gaussians, export_ply)}
    if suffix not in writers:
        raise ValueError(f"cannot export to {path.name!r}: the suffix must be one of {sorted(writers)}")
    kind, writer = writers[suffix]
    if not isinstance(obj, kind):
        raise TypeError(f"a {suffix} file holds a {kind.__name__}, got {type(obj).__name__}")
    return writer(obj, path, metadata=metadata)


def export_glb(mesh: Mesh, path: PathLike, metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write ``mesh`` as a binary glTF (y up), with vertex colours as uint8 RGBA when it has them.

    Raises:
        ValueError: if the mesh is empty (nothing is written).
    """
    if mesh.is_empty:
        raise ValueError(f"cannot export {Path(path).name!r}: the mesh is empty (no faces)")
    rotated = Mesh(mesh.vertices.astype(np.float64) @ Z_UP_TO_Y_UP, mesh.faces, mesh.vertex_colors)
    tm = rotated.to_trimesh()
    tm.metadata.update({str(k): str(v) for k, v in (metadata or {}).items()})
    data = tm.export(file_type="glb")
    return _write_atomically(Path(path), data)


def export_ply(gaussians: Gaussians, path: PathLike, transform: Optional[np.ndarray] = Z_UP_TO_Y_UP,
               metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write ``gaussians`` as a binary little-endian 3D Gaussian Splatting PLY.

    Properties are :data:`PLY_PROPERTIES`: positions, zero normals, ``f_dc`` = ``sh_dc``, the
    logit of the opacity (clamped to ``[1e-6, 1 - 1e-6]``), the log of the scales and the unit
    rotation quaternion ``(w, x, y, z)``.

    Args:
        gaussians: the Gaussians, in TRELLIS's frame.
        path: target file.
        transform: ``[3, 3]`` rotation applied as ``p @ transform`` to positions (and to the
            Gaussians' orientations); the default makes the file y up like the GLB. ``None`` keeps
            TRELLIS's z up. The published TRELLIS ``save_ply`` uses ``Z_UP_TO_Y_UP.T``
            (``(x, y, z) → (x, -z, y)``, y down, as viewers of COLMAP-posed splats expect).
        metadata: ``{name: text}`` written as ``comment name: text`` header lines.

    Raises:
        ValueError: if there are no Gaussians (nothing is written) or ``transform`` is no rotation.
    """
    if len(gaussians) == 0:
        raise ValueError(f"cannot export {Path(path).name!r}: there are no Gaussians")
    positions = gaussians.positions.astype(np.float64)
    quats = gaussians.rotations.astype(np.float64)
    if transform is not None:
        matrix = np.asarray(transform, dtype=np.float64)
        if matrix.shape != (3, 3) or not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-6) or np.linalg.det(matrix) < 0:
            raise ValueError(f"transform must be a [3, 3] rotation matrix, got {matrix.tolist()}")
        positions = positions @ matrix
        # Row vectors p @ M are column vectors M.T @ p, so the Gaussian's rotation R becomes M.T @ R.
        frame = Rotation.from_matrix(matrix.T)
        xyzw = (frame * Rotation.from_quat(quats[:, [1, 2, 3, 0]])).as_quat()
        quats = xyzw[:, [3, 0, 1, 2]]
    opacity = np.clip(gaussians.opacities.astype(np.float64), _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    columns = [
        positions, np.zeros_like(positions), gaussians.sh_dc, np.log(opacity / (1.0 - opacity))[:, None],
        np.log(np.maximum(gaussians.scales.astype(np.float64), np.finfo(np.float32).tiny)), quats,
    ]
    table = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")
    comments = "".join(f"comment {k}: {' '.join(str(v).split())}\n" for k, v in (metadata or {}).items())
    header = "ply\nformat binary_little_endian 1.0\n" + comments + f"element vertex {len(table)}\n"
    header += "".join(f"property float {name}\n" for name in PLY_PROPERTIES) + "end_header\n"
    return _write_atomically(Path(path), header.encode("ascii") + table.tobytes())


def read_ply(path: PathLike) -> Dict[str, np.ndarray]:
    """Read the ``vertex`` element of a binary PLY with scalar properties only.

    Returns:
        Property name → ``[N]`` array, in the file's property order.
    """
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file (no 'ply' ... 'end_header' header)")
    byte_order, elements = None, []
    for line in data[:end].decode("ascii").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if words[1] not in _PLY_FORMATS:
                raise ValueError(f"{path}: PLY format {words[1]!r} is not supported (binary only)")
            byte_order = _PLY_FORMATS[words[1]]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if words[1] == "list" or words[1] not in _PLY_TYPES or not elements:
                raise ValueError(f"{path}: unsupported PLY property line {line!r}")
            elements[-1][2].append((words[2], byte_order + _PLY_TYPES[words[1]]))
    if byte_order is None:
        raise ValueError(f"{path}: the PLY header has no format line")
    offset = end + len(b"end_header\n")
    for name, count, properties in elements:
        table = np.frombuffer(data, dtype=np.dtype(properties), count=count, offset=offset)
        if name == "vertex":
            return {prop: table[prop].copy() for prop, _ in properties}
        offset += table.nbytes
    raise ValueError(f"{path}: the PLY file has no 'vertex' element")


def _write_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file in ``path``'s folder, then rename it onto ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # os.open applies the umask, so the file gets the permissions a plain open() would give.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
