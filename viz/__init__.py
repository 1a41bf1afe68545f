"""viz: views of Fuse3D runs for Jupyter (plotly, ipywidgets) and stills (pyvista, Chromium).

``viz`` reads :class:`fuse3d.Run` objects and never runs a network except through them. Every
function returns its figure (a plotly ``go.Figure`` unless noted); a figure shows when it is a
cell's value. Every title names the model that ran.

Conditions and tokens (:mod:`viz.tokens`)
    ``conditions_figure(run)`` all condition images with their selected patches;
    ``condition_figure(run, i)`` one image on the 37×37 grid with switchable layers: foreground,
    selected (``D_k``), and for the global image the reverse scores and ``D_g``;
    ``enhancement_figure(run)`` unified tokens per region, λ, and the matrix ``E``.
Attention and alignment in 3D (:mod:`viz.attention`)
    ``head_grid(run, k, block=, step=)`` small multiples, one tile per head, all in one scene
    (one WebGL context however many heads; chosen heads ★);
    ``score_figure(run, k)`` forward score; ``refinement_figure(run)`` raw vs refined masks (kept,
    added, removed); ``alignment_figure(run, truth=)`` aligned regions per local vs ground truth;
    ``reverse_figure(run)`` where the global image's ``D_g`` tokens attend, and the unaligned cells.
Voxels (:mod:`viz.voxels`)
    ``exposed_faces(coords)`` → ``VoxelSurface``; ``voxel_mesh``, ``voxel_figure``, ``voxel_scatter``.
Assets (:mod:`viz.assets`)
    ``asset_figure(run)`` asset colours on the voxels; ``gaussians_figure``; ``mesh_figure``;
    ``compare_figure({label: run})`` side by side (ablations); ``change_figure`` where each moved.
Attention from both sides (:mod:`viz.explorer`)
    ``explore(run)`` click a cell in 3D → its attention over every image's patches; select patches on
    an image → every cell's attention to them (on-demand captures, :mod:`fuse3d.explore`).
Regions (:mod:`viz.painter`)
    ``paint(image)`` a brush / eraser / box painter on the preprocessed crop with its patch grid and a
    live patch count; ``painter.condition()`` is the painted :class:`fuse3d.Condition`.
Tuning (:mod:`viz.widgets`, :mod:`viz.lambdas`, :mod:`viz.metrics`)
    ``HeadTuner(run)`` head checkboxes + threshold + refine over a ``FigureWidget``, no network;
    ``lambda_sweep(run, strengths)`` + ``lambda_sweep_figure(sweep)`` slider over cached results;
    ``lambda_curves(run, strengths)``; ``count_figure(runs_by_count(run))`` alignment and λ against
    the number of local images (C.5); ``alignment_table`` / ``iou_figure`` IoU vs ground truth;
    ``sweep_figure(result, "heads", "threshold")`` a :mod:`fuse3d.sweep` table as a heat map.
Causal effects (:mod:`viz.causal`)
    ``intervention_figure(fuse3d.causal.head_effects(run, k))`` heads × blocks: how much ablating
    each changes local ``k``'s part.
Ground truth of the bundled examples (:mod:`viz.examples`)
    ``load_example(name)`` → ``Example`` (true part voxels, part masks in the global image);
    ``demo_structure(pipe, example)``; ``cache_dir()`` the notebooks' disk cache.
Stills and export
    ``viz.render.render_voxels`` / ``render_mesh`` (pyvista, imported lazily) → PIL images;
    ``turntable(run, "asset.gif")`` the asset turning once (GIF or MP4, pyvista off screen);
    ``save(fig, "fig.html" | "fig.png")`` without any network (plotly.js embedded; PNG by headless
    Chromium); ``viz.browser`` render checks and screenshots; ``viz.lab`` runs notebooks in a real
    JupyterLab (Playwright); ``summary(run)`` HTML with thumbnails. ``Condition`` and ``Run`` show
    rich HTML in a notebook (the crop with its selection; the stage table with timings).
"""
from . import browser, render, style
from .assets import asset_colors, asset_figure, change_figure, compare_figure, gaussians_figure, mesh_figure
from .attention import alignment_figure, head_grid, refinement_figure, reverse_figure, score_figure
from .causal import intervention_figure
from .examples import Example, cache_dir, demo_structure, load_example
from .explorer import Explorer, explore
from .lambdas import Sweep, count_figure, lambda_curves, lambda_sweep, lambda_sweep_figure, runs_by_count
from .metrics import alignment_table, iou, iou_figure, sweep_figure
from .painter import RegionPainter, paint
from .render import turntable
from .style import model_label, save, write_html
from .summary import summary
from .tokens import condition_figure, conditions_figure, enhancement_figure
from .voxels import exposed_faces, voxel_figure, voxel_mesh, voxel_scatter
from .widgets import HeadTuner

__all__ = [
    "browser", "render", "style",
    "Example", "Explorer", "HeadTuner", "RegionPainter", "Sweep", "alignment_figure", "alignment_table", "asset_colors", "asset_figure",
    "cache_dir", "change_figure", "compare_figure", "count_figure", "condition_figure", "conditions_figure", "demo_structure", "enhancement_figure", "explore",
    "exposed_faces", "gaussians_figure", "head_grid", "intervention_figure", "iou", "iou_figure", "lambda_curves",
    "lambda_sweep",
    "lambda_sweep_figure", "load_example", "mesh_figure", "model_label", "refinement_figure", "reverse_figure",
    "paint", "runs_by_count", "save", "score_figure", "summary", "sweep_figure", "turntable", "voxel_figure", "voxel_mesh", "voxel_scatter",
    "write_html",
]
