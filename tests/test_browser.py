"""Real browser: every course notebook runs in JupyterLab, in headless Chromium (issue #9).

nbval proves each cell runs and prints what it should; it never draws anything. This test starts
``jupyter lab`` from the project's venv on a temporary copy of ``notebooks/``, opens each notebook
in Debian's Chromium driven by Playwright, runs all cells with the kernel and checks what a
learner sees: no error output, a rendered image wherever the notebook plots, and, in
``05_kl_tuning`` and ``06_memory_math``, a slider that redraws the figure and its numbers.
A screenshot per notebook goes to ``artifacts/screenshots/``.

Needs ``/usr/bin/chromium`` and the ``playwright`` package (``.ci/install-browser``); skips
otherwise. ``RLHF_EDU_CHROMIUM`` points at another Chromium (``/nonexistent`` to see the skip).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("RLHF_EDU_CHROMIUM", "/usr/bin/chromium"))
# Headless on a closed network: without the background-networking flags Chromium keeps trying
# (and failing) to reach Google's hosts. Playwright gives it a new, empty --user-data-dir itself.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
# notebook -> the description of the slider to move, in the widget its cell displays
SLIDERS = {"05_kl_tuning": "β", "06_memory_math": "model"}
SERVER_START_S = 90
RUN_ALL_S = 180  # per notebook; the longest (04, PPO training) runs about a minute
PARALLEL = int(os.environ.get("RLHF_EDU_BROWSER_PARALLEL", "2"))  # notebooks running at once
WIDGET_S = 20  # a redraw takes well under a second

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

if not CHROMIUM.exists():
    pytest.skip(f"Chromium not installed ({CHROMIUM} missing): apt-get install chromium, "
                "or run .ci/install-browser", allow_module_level=True)
try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import Page, sync_playwright
except ImportError:
    pytest.skip("Playwright not installed: pip install -e '.[browser]' "
                "(never `playwright install`: the test uses Debian's Chromium)",
                allow_module_level=True)


# --- the JupyterLab server -----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method,
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
    return json.loads(body) if body else None


def wait_for_server(proc: subprocess.Popen, base: str, token: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()}")
        try:
            api(base, token, "/api/status")
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"jupyter lab did not answer in {SERVER_START_S} s:\n{log.read_text()}")


def lab_settings(settings_dir: Path) -> None:
    """Attach every cell to the DOM (by default off-screen cells are not drawn), so images load
    and the screenshot shows the whole notebook; and no toast asking to fetch Jupyter news."""
    settings = {"notebook-extension/tracker": {"windowingMode": "none"},
                "apputils-extension/notification": {"fetchNews": "false",
                                                     "checkForUpdates": False}}
    for name, values in settings.items():
        path = settings_dir / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``jupyter lab`` from this venv on a copy of the notebooks; yields (base URL, token,
    the copy's folder). Its runtime, config and data folders are temporary too."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    root.mkdir()
    for nb in NOTEBOOKS:
        shutil.copy(nb, root)
    # notebooks 02 and 03 run the chapter's two scripts, found beside notebooks/ as in the repo
    shutil.copytree(NOTEBOOKS[0].parent.parent / "scripts", tmp / "scripts")
    lab_settings(tmp / "settings")
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_DATA_DIR": str(tmp / "data"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MPLBACKEND", None)  # the kernel picks matplotlib's inline backend, as for a learner
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly",  # no PyPI look-ups from the lab
           "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: commands and models
           f"--LabApp.user_settings_dir={tmp / 'settings'}",
           f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
    if os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    log = tmp / "jupyter-lab.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_server(proc, base, token, log)
        yield base, token, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# --- what the notebook should show, from its file ------------------------------------------

def expected_images(nb_path: Path) -> tuple[list[int], bool]:
    """Indices of the cells whose saved outputs hold a figure, and whether the notebook plots
    at all (for a notebook saved without outputs)."""
    cells = json.loads(nb_path.read_text())["cells"]
    with_image = [i for i, c in enumerate(cells)
                  if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    plots = any(c["cell_type"] == "code"
                and re.search(r"\bplot_\w+\(|LivePlot\(|\bplt\.", "".join(c["source"]))
                for c in cells)
    return with_image, plots or bool(with_image)


# --- driving JupyterLab ----------------------------------------------------------------------

KERNEL_IDLE = """() => {
    const panel = window.jupyterapp?.shell.currentWidget;
    const kernel = panel?.sessionContext?.session?.kernel;
    return !!kernel && kernel.status === 'idle' && panel.content.widgets.length > 0;
}"""

# Done: the kernel is idle and no cell waits ([*]); every code cell has run, or one failed
# (JupyterLab then skips the rest).
RUN_FINISHED = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    if (panel.sessionContext.session?.kernel?.status !== 'idle') return false;
    const code = panel.content.widgets.filter(c => c.model.type === 'code');
    if (code.some(c => c.promptNode.textContent.includes('*'))) return false;
    const failed = code.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
    return failed || code.every(c => c.model.executionCount !== null);
}"""

KERNEL_PREFIX = """async () => {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    const future = kernel.requestExecute(
        {code: 'import sys; print(sys.prefix)', silent: false, store_history: false});
    let out = '';
    future.onIOPub = msg => { if (msg.header.msg_type === 'stream') out += msg.content.text; };
    await future.done;
    return out.trim();
}"""

# Per cell: its error outputs (from the model) and, from the DOM, stderr text that carries a
# traceback (warnings on stderr are fine) and the images it shows, including inside widgets.
CELL_REPORT = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    return panel.content.widgets.map((cell, i) => {
        const errors = cell.model.type !== 'code' ? [] : cell.model.outputs.toJSON()
            .filter(o => o.output_type === 'error').map(o => `${o.ename}: ${o.evalue}`);
        const stderr = [...cell.node.querySelectorAll(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
            .map(n => n.textContent).filter(t => /Traceback|\\b[A-Z]\\w*Error\\b/.test(t));
        const images = [...cell.node.querySelectorAll('.jp-RenderedImage img')]
            .filter(img => img.complete && img.naturalWidth > 0).length;
        return {index: i, errors, stderr: stderr.map(t => t.slice(-800)), images};
    });
}"""


def open_notebook(page: Page, base: str, token: str, name: str) -> None:
    """Open in a workspace of its own (so pages side by side don't share a layout) and wait
    for its kernel."""
    stem = Path(name).stem
    page.goto(f"{base}/lab/workspaces/{stem}/tree/{name}?reset&token={token}")
    page.wait_for_function(KERNEL_IDLE, timeout=SERVER_START_S * 1000, polling=200)


def start_run_all(page: Page) -> None:
    """JupyterLab's "Clear Outputs of All Cells" (so every output and [n] checked later comes
    from this run, not from the saved file), then "Run All Cells", without awaiting it."""
    page.evaluate("""async () => {
        const app = window.jupyterapp;
        await app.commands.execute('notebook:clear-all-cell-outputs');
        const code = app.shell.currentWidget.content.widgets.filter(c => c.model.type === 'code');
        if (code.some(c => c.model.executionCount !== null || c.model.outputs.length)) {
            throw new Error('Clear Outputs of All Cells left outputs behind');
        }
        app.commands.execute('notebook:run-all-cells');
    }""")


def problems(report: list[dict], image_cells: list[int], plots: bool) -> list[str]:
    found = []
    for cell in report:
        found += [f"cell {cell['index']}: {e}" for e in cell["errors"]]
        if not cell["errors"]:  # a traceback outside the cell's own error output: in a widget
            found += [f"cell {cell['index']}: stderr {t!r}" for t in cell["stderr"]]
    found += [f"cell {i}: its saved output has a figure, the browser shows no image"
              for i in image_cells if report[i]["images"] == 0]
    if plots and not any(c["images"] for c in report):
        found.append("the notebook plots, but no image rendered")
    return found


def widget_state(page: Page, cell_index: int) -> dict:
    """What the cell holding the interactive widget shows now: its sliders' readouts, the
    images it displays (in the widget's output or beside it) and the widget output's text."""
    return page.evaluate("""i => {
        const cell = window.jupyterapp.shell.currentWidget.content.widgets[i];
        const out = cell.node.querySelector('.jupyter-widgets.widget-output');
        return {
            readouts: [...cell.node.querySelectorAll('.widget-readout')].map(n => n.textContent),
            images: [...cell.node.querySelectorAll('.jp-RenderedImage img')]
                .filter(img => img.complete && img.naturalWidth > 0).map(img => img.src),
            text: out ? out.innerText : null,
        };
    }""", cell_index)


def widget_cell(page: Page, description: str) -> int:
    return page.evaluate("""d => window.jupyterapp.shell.currentWidget.content.widgets
        .findIndex(c => [...c.node.querySelectorAll('.widget-slider .widget-label')]
                        .some(l => l.textContent.trim() === d))""", description)


def move_slider(page: Page, description: str) -> list[str]:
    """Press ArrowRight on the slider's handle and wait for the widget to show a new figure or
    new numbers; returns what went wrong."""
    index = widget_cell(page, description)
    if index < 0:
        return [f"no slider labelled {description!r}"]
    before = widget_state(page, index)
    slider = page.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=re.compile(f"^{re.escape(description)}$")))
    handle = slider.locator(".noUi-handle")
    handle.scroll_into_view_if_needed()
    handle.focus()
    handle.press("ArrowRight")
    deadline = time.monotonic() + WIDGET_S
    after = widget_state(page, index)
    while time.monotonic() < deadline:
        after = widget_state(page, index)
        if after["images"] and (after["images"] != before["images"]
                                or after["text"] != before["text"]):
            return []
        page.wait_for_timeout(200)
    if after["readouts"] == before["readouts"]:
        return [f"the {description!r} slider did not move (readouts {before['readouts']})"]
    return [f"moving {description!r} ({before['readouts']} -> {after['readouts']}) redrew "
            f"nothing in {WIDGET_S} s: {len(after['images'])} image(s), the same as before, "
            f"and the widget's output text stayed {after['text']!r}"]


def screenshot(page: Page, name: str) -> Path:
    """The whole notebook: close the file browser, grow the viewport to the notebook's height
    (capped) and scroll to its top."""
    height = page.evaluate("""() => {
        const app = window.jupyterapp;
        if (!app.shell.leftCollapsed) app.commands.execute('application:toggle-left-area');
        return app.shell.currentWidget.content.node.querySelector('.jp-WindowedPanel-inner')
            .offsetHeight;
    }""")
    page.set_viewport_size({"width": 1280, "height": min(height + 150, 16000)})
    page.evaluate("""() => { window.jupyterapp.shell.currentWidget.content.node
        .querySelector('.jp-WindowedPanel-outer').scrollTop = 0; }""")
    page.wait_for_timeout(300)  # one layout pass
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path)
    return path


def shutdown_kernel(page: Page) -> None:
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")


# --- running them all --------------------------------------------------------------------------

class NotebookRun:
    """One notebook in its own browser context: open, check the kernel, "Run All Cells", then
    check what the learner sees. A browser-side failure becomes a problem of this notebook."""

    def __init__(self, browser, nb_path: Path):
        self.nb_path, self.problems = nb_path, []  # nb_path: the server's copy
        self.seconds, self.screenshot = 0.0, None
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.started = time.monotonic()
        self.done = self.failed = False  # failed: it never started running

    def guard(self, step, *args) -> bool:
        try:
            step(*args)
            return True
        except PlaywrightError as e:
            self.problems.append(f"{step.__name__}: {e.message.splitlines()[0]}")
            self.done = True
            return False

    def start(self, base: str, token: str) -> None:
        open_notebook(self.page, base, token, self.nb_path.name)
        prefix = self.page.evaluate(KERNEL_PREFIX)
        if Path(prefix).resolve() != Path(sys.prefix).resolve():
            self.problems.append(f"the kernel runs {prefix}, not this venv ({sys.prefix})")
        start_run_all(self.page)
        self.started = time.monotonic()

    def poll(self) -> None:
        if time.monotonic() - self.started > RUN_ALL_S:
            self.problems.append(f"still running after {RUN_ALL_S} s")
            self.done = True
        else:
            self.done = self.page.evaluate(RUN_FINISHED)

    def check(self) -> None:
        self.seconds = time.monotonic() - self.started
        page, stem = self.page, self.nb_path.stem
        self.problems += problems(page.evaluate(CELL_REPORT), *expected_images(self.nb_path))
        if stem in SLIDERS:
            self.problems += move_slider(page, SLIDERS[stem])
            self.problems += [f"after the slider, {p}"
                              for p in problems(page.evaluate(CELL_REPORT), [], False)]

    def take_screenshot(self) -> None:
        self.screenshot = screenshot(self.page, self.nb_path.stem)

    def close(self) -> None:
        try:
            shutdown_kernel(self.page)
        except PlaywrightError:
            pass  # the server shuts every kernel down when the fixture stops it
        self.context.close()


def run_notebooks(browser, base: str, token: str, root: Path) -> dict[str, NotebookRun]:
    """All notebooks, PARALLEL at a time (each kernel uses one thread)."""
    waiting, running, done = [root / nb.name for nb in NOTEBOOKS], [], {}
    try:
        while waiting or running:
            while waiting and len(running) < PARALLEL:
                run = NotebookRun(browser, waiting.pop(0))
                running.append(run)
                run.failed = not run.guard(run.start, base, token)
            for run in running[:]:
                if not run.done:
                    run.guard(run.poll)
                if run.done:
                    running.remove(run)
                    if not run.failed:
                        run.guard(run.check)
                    run.guard(run.take_screenshot)
                    run.close()
                    done[run.nb_path.stem] = run
                    print(f"{run.nb_path.stem}: ran in {run.seconds:.0f} s, "
                          f"{len(run.problems)} problem(s)")
            time.sleep(0.25)
    finally:
        for run in running:
            run.close()
    return done


@pytest.fixture(scope="module")
def notebook_runs(lab, browser) -> dict[str, NotebookRun]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return run_notebooks(browser, *lab)


# --- the test --------------------------------------------------------------------------------

@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_jupyterlab(nb_path: Path, notebook_runs):
    run = notebook_runs[nb_path.stem]
    found = run.problems
    shot = run.screenshot.relative_to(ROOT) if run.screenshot else "none"
    assert not found, (f"{nb_path.name} in JupyterLab ({run.seconds:.0f} s, screenshot {shot}):\n"
                       + "\n".join(found))
