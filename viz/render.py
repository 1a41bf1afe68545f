"""High-quality still images with pyvista (VTK) off screen: voxels as cubes, meshes with vertex colours.

pyvista is imported only when a function here is called. Headless machines need no display: VTK's
EGL window is selected unless ``VTK_DEFAULT_OPENGL_WINDOW`` is already set.
"""
from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .assets import vertex_colors
from .voxels import ArrayLike, exposed_faces


def _pyvista():
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import pyvista as pv

    pv.OFF_SCREEN = True
    return pv


def camera_position(yaw_deg: float = 45.0, pitch_deg: float = 25.0, distance: float = 2.4) -> list:
    """pyvista camera ``[eye, focus, up]`` at azimuth ``yaw`` and elevation ``pitch``, z up."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    eye = (distance * math.cos(p) * math.cos(y), distance * math.cos(p) * math.sin(y), distance * math.sin(p))
    return [eye, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)]


def _rgb_uint8(colors: np.ndarray) -> np.ndarray:
    c = np.asarray(colors)[:, :3]
    return (np.clip(c, 0, 1) * 255).round().astype(np.uint8) if np.issubdtype(c.dtype, np.floating) else c.astype(np.uint8)


def _finish(plotter, title: Optional[str], path: Optional[Union[str, Path]], camera: Tuple[float, float]) -> Image.Image:
    plotter.camera_position = camera_position(*camera)
    plotter.reset_camera()  # keeps the direction, fits the object
    if title:
        plotter.add_text(title, position="upper_left", font_size=10, color="black")
    image = Image.fromarray(plotter.screenshot(return_img=True))
    plotter.close()
    if path is not None:
        image.save(path, optimize=True)
    return image


def _plotter(size: Tuple[int, int]):
    pv = _pyvista()
    plotter = pv.Plotter(off_screen=True, window_size=list(size))
    plotter.set_background("white")
    plotter.enable_anti_aliasing("ssaa")
    return pv, plotter


def render_voxels(coords: ArrayLike, *, values: Optional[ArrayLike] = None, colors: Optional[ArrayLike] = None,
                  resolution: int = 64, cmap: str = "viridis", clim: Sequence[float] = (0.0, 1.0),
                  scalar_title: str = "score", size: Tuple[int, int] = (900, 700), camera: Tuple[float, float] = (45, 25),
                  title: Optional[str] = None, path: Optional[Union[str, Path]] = None, edges: bool = True) -> Image.Image:
    """Render voxels as cubes (exposed faces only), coloured per voxel by ``values`` (with a colour
    bar) or ``colors`` (``[N, 3]`` RGB); returns the image (shown inline in Jupyter) and writes
    ``path`` (PNG) if given."""
    pv, plotter = _plotter(size)
    _add_voxels(pv, plotter, coords, values, colors, resolution, cmap, clim, scalar_title, edges)
    return _finish(plotter, title, path, camera)


def _add_voxels(pv, plotter, coords, values, colors, resolution, cmap="viridis", clim=(0.0, 1.0), scalar_title="score",
                edges=True) -> None:
    surface = exposed_faces(coords)
    faces = np.hstack([np.full((len(surface.quads), 1), 4), surface.quads]).ravel()
    poly = pv.PolyData(surface.positions(resolution).astype(np.float64), faces)
    style = dict(show_edges=edges, edge_color="#555555", line_width=0.5, lighting=True, smooth_shading=False)
    if values is not None:
        poly.cell_data[scalar_title] = np.asarray(values, np.float32)[surface.face_voxel]
        plotter.add_mesh(poly, scalars=scalar_title, cmap=cmap, clim=list(clim),
                         scalar_bar_args=dict(title=scalar_title, color="black", vertical=True), **style)
    elif colors is not None:
        poly.cell_data["rgb"] = _rgb_uint8(np.asarray(colors))[surface.face_voxel]
        plotter.add_mesh(poly, scalars="rgb", rgb=True, **style)
    else:
        plotter.add_mesh(poly, color="lightgrey", **style)


def render_mesh(mesh, *, size: Tuple[int, int] = (900, 700), camera: Tuple[float, float] = (45, 25),
                title: Optional[str] = None, path: Optional[Union[str, Path]] = None) -> Image.Image:
    """Render a triangle mesh (:class:`fuse3d.assets.Mesh` or trimesh) with its vertex colours."""
    pv, plotter = _plotter(size)
    v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    poly = pv.PolyData(v, np.hstack([np.full((len(f), 1), 3), f]).ravel())
    colors = vertex_colors(mesh)
    if colors is not None:
        poly.point_data["rgb"] = _rgb_uint8(colors)
        plotter.add_mesh(poly, scalars="rgb", rgb=True, smooth_shading=True)
    else:
        plotter.add_mesh(poly, color="lightgrey", smooth_shading=True)
    return _finish(plotter, title, path, camera)


@dataclass
class Turntable:
    """A written turntable animation; shows itself inline in a notebook (the file, base64-embedded)."""

    path: Path
    frames: int

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.path.read_bytes()).decode()
        if self.path.suffix == ".gif":
            return f'<img src="data:image/gif;base64,{data}" alt="{html.escape(self.path.name)}">'
        return f'<video controls loop autoplay muted src="data:video/mp4;base64,{data}"></video>'


def turntable(run, path: Union[str, Path], *, frames: int = 36, fps: int = 12, size: Tuple[int, int] = (480, 400),
              pitch_deg: float = 25.0, title: Optional[str] = None) -> Turntable:
    """The run's final asset (its colours on the structure's voxels) turning once around z, rendered
    off screen by pyvista: ``path`` ending in ``.gif`` (Pillow) or ``.mp4`` (needs imageio-ffmpeg).
    The title defaults to the model's name."""
    from .assets import asset_colors
    from .style import model_label

    path = Path(path)
    if path.suffix not in (".gif", ".mp4"):
        raise ValueError(f"a turntable is written as .gif or .mp4, not {path.suffix or 'no suffix'!r}")
    if frames < 2:
        raise ValueError(f"a turntable needs at least 2 frames, got {frames}")
    pv, plotter = _plotter(size)
    _add_voxels(pv, plotter, run.structure, None, asset_colors(run), 64, edges=False)
    plotter.add_text(title or model_label(run), position="upper_left", font_size=9, color="black")
    images = []
    for n in range(frames):
        plotter.camera_position = camera_position(45.0 + 360.0 * n / frames, pitch_deg)
        plotter.reset_camera()
        images.append(Image.fromarray(plotter.screenshot(return_img=True)))
    plotter.close()
    if path.suffix == ".gif":
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=True)
    else:
        try:
            import imageio.v2 as imageio

            imageio.mimwrite(path, [np.asarray(im) for im in images], fps=fps)
        except (ImportError, ValueError) as e:
            raise RuntimeError(f"writing MP4 needs imageio with ffmpeg (pip install imageio-ffmpeg): {e}") from None
    return Turntable(path, frames)
