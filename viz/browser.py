"""Headless Chromium: check that an exported figure renders (WebGL included) and take screenshots.

Debian's ``chromium`` package is needed (``apt-get install -y chromium``). WebGL runs on the CPU
through SwiftShader: ``--use-angle=swiftshader --enable-unsafe-swiftshader`` (plus ``--disable-gpu``).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import plotly.graph_objects as go

from .style import element_id

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", "--mute-audio")
STATUS_ATTRIBUTE = "data-fuse3d-render"

# installed first thing in <head>: any uncaught error (plotly.js included) is recorded
ERROR_TRAP = f"""<script>
window.addEventListener('error', function (e) {{
  document.documentElement.setAttribute('{STATUS_ATTRIBUTE}', 'error: ' + e.message);
}});
</script>"""

# runs after Plotly.newPlot: every 3D scene must own a live WebGL plot
RENDER_PROBE = f"""
document.body.style.margin = '0';
var gd = document.getElementById('{{plot_id}}');
function fuse3dStatus(text) {{
  var el = document.documentElement;
  if (!(el.getAttribute('{STATUS_ATTRIBUTE}') || '').startsWith('error')) el.setAttribute('{STATUS_ATTRIBUTE}', text);
}}
function fuse3dCheck() {{
  var fl = gd._fullLayout || {{}};
  var scenes = Object.keys(fl).filter(function (k) {{ return /^scene\\d*$/.test(k); }});
  if (!scenes.length) {{ fuse3dStatus(gd.querySelector('.main-svg') ? 'rendered 2D' : 'no plot'); return; }}
  var live = scenes.filter(function (k) {{
    var s = fl[k]._scene;
    return s && s.glplot && s.glplot.gl && !s.glplot.gl.isContextLost();
  }});
  var canvases = gd.querySelectorAll('.gl-container canvas').length;
  fuse3dStatus(scenes.length && live.length === scenes.length && canvases
    ? 'rendered ' + live.length + ' scene(s)' : 'no WebGL: ' + live.length + '/' + scenes.length + ' scenes live');
}}
gd.on('plotly_afterplot', fuse3dCheck);
fuse3dCheck();
"""


class BrowserError(RuntimeError):
    """Chromium is missing or failed."""


def find_chromium() -> str:
    """Path of a Chromium executable, or a :class:`BrowserError` saying how to install one."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError("headless Chromium is needed (none of " + ", ".join(CANDIDATES) + " is on PATH): "
                       "install it with `apt-get install -y chromium`")


def write_probe_html(fig: go.Figure, path: Union[str, Path], div_id: Optional[str] = None) -> Path:
    """Standalone HTML (plotly.js embedded) that records in ``<html data-fuse3d-render=…>`` whether it rendered."""
    html = fig.to_html(include_plotlyjs=True, full_html=True, div_id=element_id(fig, div_id),
                       post_script=RENDER_PROBE, config={"displaylogo": False})
    path = Path(path)
    path.write_text(html.replace("<head>", "<head>" + ERROR_TRAP, 1), encoding="utf-8")
    return path


def _run(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="fuse3d-chromium-") as profile:
        cmd = [find_chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"chromium did not finish in {timeout:.0f} s: {' '.join(cmd)}") from None


def render_status(html_path: Union[str, Path], budget_ms: int = 10000, timeout: float = 90.0) -> str:
    """Load a page written by :func:`write_probe_html` and return its status: ``"rendered …"``,
    ``"error: …"`` (an uncaught JavaScript error), ``"no WebGL: …"`` or ``"no status"``."""
    result = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", Path(html_path).resolve().as_uri()], timeout)
    match = re.search(STATUS_ATTRIBUTE + r'="([^"]*)"', result.stdout)
    if match:
        return match.group(1)
    if result.returncode != 0 or not result.stdout:
        raise BrowserError(f"chromium failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return "no status"


def screenshot(html_path: Union[str, Path], png_path: Union[str, Path], size: Tuple[int, int] = (1000, 700),
               budget_ms: int = 10000, timeout: float = 90.0) -> Path:
    """A PNG of a page as Chromium draws it (``size`` = window width, height)."""
    png_path = Path(png_path).resolve()
    result = _run([f"--virtual-time-budget={budget_ms}", f"--screenshot={png_path}",
                   f"--window-size={size[0]},{size[1]}", Path(html_path).resolve().as_uri()], timeout)
    if not png_path.is_file():
        raise BrowserError(f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}")
    return png_path


def figure_screenshot(fig: go.Figure, png_path: Union[str, Path], size: Optional[Tuple[int, int]] = None) -> Path:
    """Screenshot of a figure at its own size (``layout.width`` × ``layout.height``, else 1000 × 700)."""
    size = size or (int(fig.layout.width or 1000), int(fig.layout.height or 700))
    with tempfile.TemporaryDirectory(prefix="fuse3d-figure-") as tmp:
        html = write_probe_html(fig, Path(tmp) / "figure.html")
        return screenshot(html, png_path, size)
