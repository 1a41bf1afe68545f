"""Notebooks as a person meets them: a local JupyterLab driven by Playwright in Debian's chromium.

:func:`run_notebook` opens a notebook in a real JupyterLab page, runs every cell (Run → Run All
Cells), waits for the kernel, and reports what a reader would see (:class:`LabReport`): error
outputs, widgets that failed to display, uncaught page errors, every plotly figure and widget with
a screenshot and whether it drew anything, and the WebGL contexts the page holds.

    python -m viz.lab notebooks/01_walkthrough.ipynb --out lab-shots

Needs the ``dev`` extra (``playwright``, ``jupyterlab``) and a chromium binary (Debian's
``chromium``; no browser is ever downloaded). ``tests/test_lab.py`` runs it on every notebook.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Union

import numpy as np
from PIL import Image

from .browser import find_chromium

#: Chrome keeps about 16 live WebGL contexts per page and drops the oldest beyond that; fuse3d's
#: notebooks stay well below.
WEBGL_BUDGET = 12
#: the browser page's size: tall enough that the explorer widget (about 1 000 px) is screenshot whole
VIEWPORT = {"width": 1400, "height": 1400}
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]

#: JupyterLab user settings for the test server: no news pop-up, no autosave (a run never writes the
#: notebook), and every cell kept in the page (no windowing), so every figure is live at once: the
#: WebGL count is the worst case a reader can reach by scrolling.
USER_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
}

# a top-level widget view in an output (not the widgets nested inside it)
_WIDGET_SELECTOR = ".jp-OutputArea-output > .lm-Widget"  # ipywidgets and anywidget views alike
# a drawn area is "blank" when it is one flat colour: fewer distinct colours than this
_MIN_COLOURS = 8

_COUNT_WEBGL = """() => {
  let n = 0;
  for (const c of document.querySelectorAll('canvas')) {
    if (c.__fuse3dGL === undefined) {
      // a canvas that already holds a 2D context returns null for webgl and keeps it; one holding a
      // WebGL context returns that context; a fresh canvas would get a new one, so ask only canvases
      // that plotly's WebGL scenes or widgets made
      const webglClass = c.closest('.gl-container') !== null || c.classList.contains('gl-canvas');
      c.__fuse3dGL = webglClass && (c.getContext('webgl2') || c.getContext('webgl') || c.getContext('experimental-webgl')) ? 1 : 0;
    }
    n += c.__fuse3dGL;
  }
  return n;
}"""


@dataclass
class Drawn:
    """One plotly figure or widget on the page, as a reader sees it."""

    kind: str  # "plotly" or "widget"
    index: int
    colours: int  # distinct colours in its screenshot
    screenshot: Optional[Path]

    @property
    def blank(self) -> bool:
        return self.colours < _MIN_COLOURS


@dataclass
class LabReport:
    """What running one notebook in JupyterLab showed."""

    notebook: str
    seconds: float
    cells: int
    errors: List[str] = field(default_factory=list)  # error outputs (ename: evalue)
    widget_failures: List[str] = field(default_factory=list)  # "Error displaying widget" and the like
    page_errors: List[str] = field(default_factory=list)  # uncaught exceptions in the page
    drawn: List[Drawn] = field(default_factory=list)
    webgl_contexts: int = 0
    screenshot: Optional[Path] = None

    @property
    def blank(self) -> List[Drawn]:
        return [d for d in self.drawn if d.blank]

    @property
    def ok(self) -> bool:
        return not (self.errors or self.widget_failures or self.page_errors or self.blank) and \
            self.webgl_contexts <= WEBGL_BUDGET

    def summary(self) -> str:
        plots = sum(d.kind == "plotly" for d in self.drawn)
        widgets = sum(d.kind == "widget" for d in self.drawn)
        return (f"{self.notebook}: {self.seconds:.0f} s, {self.cells} cells, {plots} figures, {widgets} widgets, "
                f"{self.webgl_contexts} WebGL contexts, {len(self.errors)} errors, {len(self.widget_failures)} widget "
                f"failures, {len(self.page_errors)} page errors, {len(self.blank)} blank")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def lab_server(root: Union[str, Path], env: Optional[dict] = None, timeout: float = 120.0) -> Iterator[str]:
    """A JupyterLab server on localhost serving ``root`` (no token, no news, no browser); yields its
    base URL and stops it afterwards."""
    port = _free_port()
    settings = Path(tempfile.mkdtemp(prefix="fuse3d-lab-settings-"))
    for plugin, values in USER_SETTINGS.items():
        package, name = plugin.split(":")
        path = settings / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
           f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = tempfile.NamedTemporaryFile("w+", prefix="fuse3d-lab-", suffix=".log", delete=False)
    environ = {**os.environ, **(env or {}), "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"JupyterLab did not start:\n{log.read()[-3000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(settings, ignore_errors=True)


def _colours(png: Path) -> int:
    a = np.asarray(Image.open(png).convert("RGB"))
    return len(np.unique(a.reshape(-1, 3), axis=0))


_KERNEL_READY = """() => {
  const s = document.querySelector('.jp-Notebook-ExecutionIndicator');
  const name = document.querySelector('.jp-KernelName');
  return s !== null && s.getAttribute('data-status') === 'idle' && name !== null && !/No Kernel/.test(name.textContent);
}"""
# every code cell ran (a number in its prompt), or one failed and Run All stopped there; nothing queued
_ALL_RAN = r"""() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent.trim());
  const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
  if (status === null || status.getAttribute('data-status') !== 'idle' || prompts.some(t => t.includes('*'))) return false;
  const failed = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .some(e => /Traceback|Error:/.test(e.textContent));
  return failed || prompts.every(t => /\[\d+\]/.test(t));
}"""


def _wait(page, condition: str, timeout_s: float) -> None:
    """Poll ``condition`` (JavaScript) until true, accepting JupyterLab's kernel dialog if it asks."""
    deadline = time.time() + timeout_s
    while not page.evaluate(condition):
        select = page.locator(".jp-Dialog .jp-mod-accept", has_text="Select")
        if select.count():  # JupyterLab asks which kernel to start
            select.first.click()
        if time.time() > deadline:
            raise TimeoutError(f"JupyterLab was not ready after {timeout_s:.0f} s")
        page.wait_for_timeout(500)


def _run_all_and_wait(page, timeout_s: float) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click()
    page.wait_for_timeout(1000)
    _wait(page, _ALL_RAN, timeout_s)


def _error_outputs(page) -> List[str]:
    return page.evaluate("""() => [...document.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"] pre, .jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]')]
        .map(e => e.textContent).filter(t => /Error|Traceback/.test(t)).map(t => t.trim().split('\\n').slice(-1)[0])""")


def open_notebook(page, base_url: str, name: str) -> None:
    """Open ``name`` in ``page``, alone in a fresh workspace, and wait until its kernel is idle."""
    page.goto(f"{base_url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120000)
    _wait(page, _KERNEL_READY, 120)


def run_cell(page, index: int, timeout_s: float = 300.0) -> None:
    """Run code cell ``index`` (0-based among the code cells) as a person does (click, Shift+Enter)
    and wait until it has an execution count."""
    page.locator(".jp-Notebook .jp-CodeCell").nth(index).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    _wait(page, f"() => /\\[\\d+\\]/.test(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')[{index}].textContent)"
               " && document.querySelector('.jp-Notebook-ExecutionIndicator').getAttribute('data-status') === 'idle'",
          timeout_s)


def run_notebook(page, base_url: str, name: str, out: Optional[Path] = None, timeout_s: float = 900.0) -> LabReport:
    """Open ``name`` (relative to the server's root) in ``page``, run all cells and report."""
    page_errors: List[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    t0 = time.time()
    open_notebook(page, base_url, name)
    _run_all_and_wait(page, timeout_s)
    seconds = time.time() - t0
    page.wait_for_timeout(1500)  # let the last figures draw
    report = LabReport(name, seconds, page.locator(".jp-Notebook .jp-Cell").count())
    report.errors = _error_outputs(page)
    report.widget_failures = page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output')]
        .map(e => e.textContent).filter(t => /Error displaying widget|Model not found|Failed to load model class/.test(t))
        .map(t => t.trim().slice(0, 200))""")
    stem = Path(name).stem
    if out:  # element screenshots: keep the sticky notebook toolbar from covering the element's top
        page.add_style_tag(content=".jp-NotebookPanel-toolbar { visibility: hidden; }")
    for kind, selector in (("plotly", ".jp-OutputArea-output.js-plotly-plot"), ("widget", _WIDGET_SELECTOR)):
        items = page.locator(selector)
        for i in range(items.count()):
            el = items.nth(i)
            el.scroll_into_view_if_needed()
            page.wait_for_timeout(400)
            png = (out / f"{stem}-{kind}-{i:02d}.png") if out else Path(tempfile.mktemp(suffix=".png"))
            el.screenshot(path=str(png))
            report.drawn.append(Drawn(kind, i, _colours(png), png if out else None))
            if not out:
                png.unlink(missing_ok=True)
    report.webgl_contexts = page.evaluate(_COUNT_WEBGL)
    if out:
        report.screenshot = out / f"{stem}.png"
        page.screenshot(path=str(report.screenshot), full_page=False)
    report.page_errors = list(page_errors)
    return report


@contextlib.contextmanager
def lab_browser(base_url: str) -> Iterator[object]:
    """A chromium page (Debian's binary, software WebGL) for :func:`run_notebook`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+", help="notebook files (one folder)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the screenshots")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per notebook")
    args = ap.parse_args(argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    with tempfile.TemporaryDirectory(prefix="fuse3d-lab-") as root:  # the notebooks are never written
        paths = [Path(shutil.copy(n, root)) for n in args.notebooks]
        ok = _run_all(paths, Path(root), args.out, args.timeout)
    return 0 if ok else 1


def _run_all(paths: List[Path], root: Path, out: Optional[Path], timeout: float) -> bool:
    ok = True
    with lab_server(root) as url, lab_browser(url) as browser:
        for path in paths:
            page = browser.new_page(viewport=VIEWPORT)
            report = run_notebook(page, url, path.name, out, timeout)
            page.close()
            print(report.summary(), flush=True)
            for line in report.errors + report.widget_failures + report.page_errors:
                print("   ", line)
            ok &= report.ok
    return ok


if __name__ == "__main__":
    sys.exit(main())
