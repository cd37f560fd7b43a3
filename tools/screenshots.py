"""Screenshots of the MLflow UI and TensorBoard for the README, taken with Debian's headless Chromium.

Run from the repository root after `make run` (the store and the TensorBoard logs must exist):

    .venv/bin/python tools/screenshots.py [--store sqlite:///mlflow.db] [--runs runs] [--out docs/images]

It starts `mlflow ui` and `tensorboard` from the interpreter's own environment on free loopback ports, drives
/usr/bin/chromium over the DevTools protocol (a page needs clicks and browser storage that `--screenshot` cannot
set), writes one PNG per view and stops every process it started, also when something fails.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # the script runs as root in CI containers, where Chromium refuses to start sandboxed
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these Chromium keeps dialling Google services; on a closed network they fail and slow every page
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--lang=en-US",
)
TB_DIR_TAG = "tensorboard.dir"  # the project's run tag naming the run's TensorBoard log directory
SERVER_START_TIMEOUT_S = 180.0  # started as below `mlflow ui` answers in ~10 s on two busy cores, ~35 s by default
PAGE_TIMEOUT_S = 90.0
NETWORK_QUIET_S = 1.0  # no data request for this long: the page has what it asked for
BUSY_LIMIT_S = 15.0
SETTLE_S = 1.0  # chart libraries animate for a few hundred milliseconds after their data arrives

# Page-side helpers, installed before any page script runs. TensorBoard renders inside shadow roots, which
# document.querySelectorAll does not enter, hence the recursive walk.
PAGE_HELPERS = """
window.__shots = {
  all(selector) {
    const found = [];
    const walk = (root) => {
      root.querySelectorAll(selector).forEach((e) => found.push(e));
      root.querySelectorAll('*').forEach((e) => { if (e.shadowRoot) walk(e.shadowRoot); });
    };
    walk(document);
    return found;
  },
  drawnLines(selector) {
    return this.all(selector).filter((p) => (p.getAttribute('d') || '').length > 10).length;
  },
};
"""


# the plotly modebar (zoom, pan, ...) sits on top of every MLflow chart; it is an on-hover tool, not content
HIDE_MODEBAR = """(() => {
  const style = document.createElement('style');
  style.textContent = '.modebar-container { display: none !important; }';
  document.head.appendChild(style);
  return true;
})()"""


def say(message: str) -> None:
    """One progress line: starting the servers alone takes a minute on a small machine."""
    print(f"screenshots: {message}", flush=True)


class ScreenshotError(Exception):
    """A failure the user can act on; main() prints its message as the one error line."""


@dataclass(frozen=True)
class MlflowTargets:
    """What the MLflow pages show, resolved from the store so that no run id or version is hard-coded."""

    experiment_id: str
    parent_run_id: str
    parent_run_name: str
    child_run_ids: tuple[str, ...]
    child_run_names: tuple[str, ...]
    varying_params: tuple[str, ...]
    metric_columns: tuple[str, ...]
    metric_child_ids: tuple[str, ...]
    model_version: str
    tensorboard_dirs: tuple[str, ...]  # the child runs' TensorBoard directories, where the runs recorded them
    other_run_ids: tuple[str, ...]  # every run outside the sweep's children: hidden from the charts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db", help="MLflow backend store URI")
    parser.add_argument("--runs", default="runs", help="TensorBoard log directory")
    parser.add_argument("--out", default="docs/images", help="directory for the PNG files")
    parser.add_argument("--experiment", default="fashion-mnist", help="MLflow experiment name")
    parser.add_argument("--model-name", default="fashion-mnist-cnn", help="registered model name")
    parser.add_argument("--alias", default="champion", help="registered model alias to show")
    parser.add_argument("--metric", default="val_accuracy", help="child-run metric whose curves are shown")
    parser.add_argument("--tb-tags", default="^(accuracy|loss)/", help="TensorBoard scalar tag regex")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium binary")
    parser.add_argument("--width", type=int, default=1600, help="viewport width in CSS pixels")
    parser.add_argument("--height", type=int, default=1000, help="viewport height in CSS pixels")
    return parser.parse_args(argv)


def sqlite_path(store: str) -> Path | None:
    """The database file of a sqlite:/// store URI, None for any other kind of store."""
    prefix = "sqlite:///"
    return Path(store[len(prefix) :]) if store.startswith(prefix) else None


def check_inputs(args: argparse.Namespace) -> None:
    """Fail before starting anything when a prerequisite is missing."""
    if not Path(args.chromium).is_file():
        raise ScreenshotError(f"{args.chromium} not found: apt-get install chromium")
    database = sqlite_path(args.store)
    # MlflowClient and `mlflow ui` would silently create an empty database at a missing path
    if database is not None and not database.is_file():
        raise ScreenshotError(f"MLflow store {database} not found: run `make run` first")
    if not any(Path(args.runs).rglob("events.out.tfevents.*")):
        raise ScreenshotError(f"no TensorBoard event files under {args.runs}/: run `make run` first")
    for tool in ("mlflow", "tensorboard"):
        if not venv_bin(tool).is_file():
            raise ScreenshotError(f"{venv_bin(tool)} not found: run `make install` first")


def venv_bin(name: str) -> Path:
    """A console script of the environment this interpreter belongs to (not whatever is first on PATH)."""
    return Path(sys.executable).parent / name


def resolve_mlflow(args: argparse.Namespace) -> MlflowTargets:
    """The experiment, its newest sweep (a parent run with children) and the version holding the alias."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(tracking_uri=args.store, registry_uri=args.store)
        experiment = client.get_experiment_by_name(args.experiment)
        runs = [] if experiment is None else client.search_runs([experiment.experiment_id], max_results=5000)
    except Exception as error:  # a store that is no MLflow store fails in sqlalchemy or MLflow, with a traceback
        raise ScreenshotError(f"cannot read MLflow store {args.store}: {str(error).splitlines()[0]}") from error
    if experiment is None:
        raise ScreenshotError(f"experiment {args.experiment!r} not found in {args.store}: run `make run` first")
    if not runs:
        raise ScreenshotError(f"experiment {args.experiment!r} in {args.store} has no runs: run `make run` first")
    children: dict[str, list[Any]] = {}
    for run in runs:
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if parent_id:
            children.setdefault(parent_id, []).append(run)
    parents = [run for run in runs if run.info.run_id in children]
    if not parents:
        raise ScreenshotError(f"experiment {args.experiment!r} has no parent run with child runs (no sweep)")
    parent = max(parents, key=lambda run: run.info.start_time or 0)  # the newest sweep
    kids = sorted(children[parent.info.run_id], key=lambda run: run.info.run_name or run.info.run_id)
    kid_ids = {run.info.run_id for run in kids}
    with_metric = [run for run in kids if args.metric in run.data.metrics]
    if not with_metric:
        raise ScreenshotError(f"no child run of sweep {parent.info.run_name!r} logged metric {args.metric!r}")
    # the table's columns: what the sweep varied, and the chosen metric with its siblings (val_accuracy -> val_*)
    param_keys = sorted({key for run in kids for key in run.data.params})
    varying = tuple(key for key in param_keys if len({run.data.params.get(key) for run in kids}) > 1)
    prefix = args.metric.split("_", 1)[0] + "_" if "_" in args.metric else args.metric
    siblings = sorted({key for run in with_metric for key in run.data.metrics if key.startswith(prefix)})
    metric_columns = (args.metric, *(key for key in siblings if key != args.metric))
    try:
        version = client.get_model_version_by_alias(args.model_name, args.alias).version
    except MlflowException as error:
        raise ScreenshotError(
            f"no version of registered model {args.model_name!r} holds alias @{args.alias}: run `make run` first"
        ) from error
    return MlflowTargets(
        experiment_id=experiment.experiment_id,
        parent_run_id=parent.info.run_id,
        parent_run_name=parent.info.run_name or parent.info.run_id,
        child_run_ids=tuple(run.info.run_id for run in kids),
        child_run_names=tuple(run.info.run_name or run.info.run_id for run in kids),
        varying_params=varying,
        metric_columns=metric_columns,
        metric_child_ids=tuple(run.info.run_id for run in with_metric),
        model_version=str(version),
        tensorboard_dirs=tuple(run.data.tags[TB_DIR_TAG] for run in kids if run.data.tags.get(TB_DIR_TAG)),
        other_run_ids=tuple(run.info.run_id for run in runs if run.info.run_id not in kid_ids),
    )


def free_port() -> int:
    """A loopback port nothing listens on right now (the servers bind it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> str | None:
    """The body of a 200 answer, None while the server is not (yet) answering."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback URLs built here)
            return response.read().decode()
    except (OSError, urllib.error.URLError):
        return None


@contextlib.contextmanager
def process_group(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` in its own session and end the whole group on exit: `mlflow ui` forks server workers."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM to the process group, SIGKILL to whatever is left after `grace_s` (graceful shutdown is slow)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reaps the leader, so a finished group no longer answers killpg(…, 0)
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def last_line(log: Path) -> str:
    """The last non-empty line of a server log, for the error message."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def wait_until(
    name: str,
    process: subprocess.Popen[bytes],
    log: Path,
    ready: Callable[[], bool],
    timeout: float = SERVER_START_TIMEOUT_S,
) -> None:
    """Poll `ready()` until it is true; fail early if the process exits, and after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScreenshotError(f"{name} exited with code {process.returncode}: {last_line(log)}")
        if ready():
            return
        time.sleep(0.5)
    raise ScreenshotError(f"{name} did not answer within {timeout:.0f} s: {last_line(log)}")


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames on one loopback connection."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._receive()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status:
            raise ScreenshotError(f"Chromium refused the DevTools connection: {status}")

    def _receive(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ScreenshotError("Chromium closed the DevTools connection")
        return chunk

    def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += self._receive()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        # client frames must be masked (RFC 6455 5.3); the mask is arbitrary
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def receive(self) -> str:
        """The next text message, reassembled from its fragments (screenshots arrive as large messages)."""
        parts: list[bytes] = []
        while True:
            first, second = self._read(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", self._read(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", self._read(8))
            payload = self._read(size)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ScreenshotError("Chromium closed the DevTools connection")
            if opcode == 0x9:  # ping: answer, it is not part of a message
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            parts.append(payload)
            if first & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Page:
    """One Chromium tab driven over the DevTools protocol; it tracks in-flight requests to tell when a page is idle."""

    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket
        self.next_id = 0
        self.in_flight: set[str] = set()
        self.requests_seen = 0
        self.url = ""

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result, handling the events that arrive meanwhile."""
        self.next_id += 1
        try:
            self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
            while True:
                message = json.loads(self.ws.receive())
                if message.get("id") == self.next_id:
                    break
                self._event(message)
        except OSError as error:  # includes the socket's timeout: Chromium hung or died
            raise ScreenshotError(f"Chromium did not answer {method}: {error}") from error
        if "error" in message:
            raise ScreenshotError(f"Chromium {method} failed: {message['error'].get('message')}")
        return message.get("result", {})

    def _event(self, message: dict[str, Any]) -> None:
        method = message.get("method", "")
        request_id = message.get("params", {}).get("requestId")
        # data requests only: a worker's script is fetched for the worker, so the page never sees it finish
        if method == "Network.requestWillBeSent" and message["params"].get("type") in ("XHR", "Fetch"):
            self.in_flight.add(request_id)
            self.requests_seen += 1
        elif method in ("Network.loadingFinished", "Network.loadingFailed"):
            self.in_flight.discard(request_id)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise ScreenshotError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        # via about:blank: a change of the #fragment alone would keep the single-page app's state in memory
        self.call("Page.navigate", url="about:blank")
        self.in_flight.clear()
        self.url = url
        self.call("Page.navigate", url=url)

    def wait_for(self, condition: str, what: str, timeout: float = PAGE_TIMEOUT_S) -> None:
        """Poll a JavaScript condition, then wait for the network to be quiet and the charts to settle."""
        deadline = time.monotonic() + timeout
        problem = ""
        while True:
            try:
                if self.evaluate(condition):
                    break
            except ScreenshotError as error:  # e.g. the context was replaced by the navigation under way
                problem = f" (last: {error})"
            if time.monotonic() > deadline:
                raise ScreenshotError(f"{what} did not appear within {timeout:.0f} s{problem}")
            time.sleep(0.25)
        quiet_since, seen = time.monotonic(), self.requests_seen
        # a page that polls its server is never idle for long; the condition already holds, so a page that stays
        # busy is photographed anyway after BUSY_LIMIT_S
        busy_deadline = time.monotonic() + BUSY_LIMIT_S
        while time.monotonic() < busy_deadline:
            self.evaluate("1")  # drains the queued network events
            if self.in_flight or self.requests_seen != seen:
                quiet_since, seen = time.monotonic(), self.requests_seen
            elif time.monotonic() - quiet_since >= NETWORK_QUIET_S:
                break
            time.sleep(0.1)
        self.evaluate("document.fonts.ready.then(() => true)")
        time.sleep(SETTLE_S)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        say(f"wrote {path}  <-  {self.url}")
        return path


@contextlib.contextmanager
def chromium(binary: str, width: int, height: int, workdir: Path) -> Iterator[Page]:
    """A headless Chromium with a fresh profile, and its first tab as a Page."""
    profile = workdir / "chromium-profile"
    profile.mkdir()
    command = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",  # Chromium picks the port and writes it to DevToolsActivePort
        f"--window-size={width},{height}",
        "about:blank",
    ]
    log = workdir / "chromium.log"
    with process_group(command, log) as process:
        port_file = profile / "DevToolsActivePort"  # first line: the port; the file may appear before its content
        wait_until("Chromium", process, log, lambda: port_file.is_file() and port_file.read_text()[:1].isdigit(), 60.0)
        port = int(port_file.read_text().split()[0])
        tabs: list[dict[str, Any]] = []

        def tab_listed() -> bool:
            nonlocal tabs
            body = http_get(f"http://127.0.0.1:{port}/json/list")
            tabs = [tab for tab in json.loads(body or "[]") if tab.get("type") == "page"]
            return bool(tabs)

        wait_until("Chromium", process, log, tab_listed, 60.0)
        websocket = WebSocket(tabs[0]["webSocketDebuggerUrl"], timeout=PAGE_TIMEOUT_S)
        try:
            page = Page(websocket)
            page.call("Page.enable")
            page.call("Network.enable")
            page.call(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
            page.call("Page.addScriptToEvaluateOnNewDocument", source=PAGE_HELPERS)
            yield page
        finally:
            websocket.close()


def experiment_state_key(experiment_id: str) -> str:
    """The browser-storage key under which the MLflow UI keeps an experiment page's view (columns, expanded runs)."""
    return f"MLflowLocalStorage-1.1-ExperimentPage-{json.dumps([experiment_id])}-ReactComponentState"


def mlflow_storage(targets: MlflowTargets, port: int) -> str:
    """A script that presets the MLflow UI's browser storage before the app reads it, once per profile.

    - mlflow.workflowType_v1: MLflow 3.17 chooses between the GenAI and the model-training layout from this global
      switch (default GenAI), not from the experiment's `mlflow.experimentKind` tag;
    - the assistant panel opens by itself on a first visit and would cover a third of the page;
    - the experiment page's saved view: the sweep expanded, the swept params and the metric as columns, the charts
      filtered to the metric and showing the sweep's child runs only (the parent has no curves).
    Keys a future MLflow ignores only cost the presets; the page conditions below still check what is shown.
    """
    view = {
        "selectedColumns": [
            *(f"params.`{key}`" for key in targets.varying_params),
            *(f"metrics.`{key}`" for key in targets.metric_columns),
            "attributes.`Models`",
        ],
        "runsExpanded": {targets.parent_run_id: True},
        "runsVisibilityMap": dict.fromkeys(targets.other_run_ids, False),
        "chartsSearchFilter": targets.metric_columns[0],
    }
    items = {
        "mlflow.workflowType_v1": json.dumps("machine_learning"),
        "mlflow.assistant.panelOpen_v1": "false",
        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
        "mlflow.detectIssues.guidanceShown_v1": "true",
        experiment_state_key(targets.experiment_id): json.dumps(view),
        "screenshots.preset": "done",
    }
    setters = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in items.items())
    # only on the MLflow origin (TensorBoard pages get no foreign keys), and only once: later loads keep what the
    # page or widen_columns() changed
    return (
        f"if (location.port === {json.dumps(str(port))} && !localStorage.getItem('screenshots.preset')) {{ {setters} }}"
    )


def widen_columns(targets: MlflowTargets, name_width: int) -> str:
    """A script that stores wider run-name and metric columns in the saved view; true if it did (seen on reload).

    The UI applies saved widths only along a saved column order, so the order is taken from the header as shown.
    Metric values are float32 read back as doubles (0.8999999761581421); 150 px shows them whole.
    """
    return f"""(() => {{
      const key = {json.dumps(experiment_state_key(targets.experiment_id))};
      const cells = document.querySelectorAll('.ag-header-cell[col-id]');
      const ids = [...new Set(Array.from(cells, (cell) => cell.getAttribute('col-id')))];
      const name = ids.find((id) => id.includes('Run Name'));
      if (!name) return false;
      const view = JSON.parse(localStorage.getItem(key) || '{{}}');
      view.columnOrder = ids;
      view.columnWidths = {{ ...(view.columnWidths || {{}}), [name]: {name_width} }};
      ids.filter((id) => id.startsWith('metrics.')).forEach((id) => {{ view.columnWidths[id] = 150; }});
      localStorage.setItem(key, JSON.stringify(view));
      return true;
    }})()"""


def expanded_sweep_condition(targets: MlflowTargets) -> str:
    """True once child rows of the sweep are rendered; clicks the sweep's expander if the preset did not expand it."""
    needed = min(len(targets.child_run_ids), 3)  # the grid renders only the rows in view
    return f"""(() => {{
      const rows = (id) => document.querySelectorAll(`.ag-row[row-id="${{id}}"]`);
      const children = {json.dumps(list(targets.child_run_ids))}.filter((id) => rows(id).length > 0).length;
      if (children >= {needed}) return true;
      const parent = rows({json.dumps(targets.parent_run_id)});
      if (parent.length === 0) return false;
      window.__shotsParentSeen = window.__shotsParentSeen || Date.now();
      if (!window.__shotsClicked && Date.now() - window.__shotsParentSeen > 3000) {{
        const button = Array.from(parent).map((row) => row.querySelector('button')).find(Boolean);
        if (button) {{ button.click(); window.__shotsClicked = true; }}
      }}
      return false;
    }})()"""


def take_mlflow(page: Page, base: str, targets: MlflowTargets, args: argparse.Namespace, out: Path) -> list[Path]:
    """The runs table, the chart view, the metric's curves and the registered model page."""
    experiment = f"#/experiments/{targets.experiment_id}/runs"
    metric = targets.metric_columns[0]
    shots: list[Path] = []

    sweep = f"the runs table with the child runs of {targets.parent_run_name}"
    page.open(f"{base}{experiment}")
    page.wait_for(expanded_sweep_condition(targets), sweep)
    # run names like run-03-arch=vgg_bn_small-lr=0.01 are cut off at the default width
    longest_name = max(len(name) for name in targets.child_run_names)
    if page.evaluate(widen_columns(targets, min(460, 90 + 7 * longest_name))):  # indent, dot, ~7 px a character
        page.open(f"{base}{experiment}")
        page.wait_for(expanded_sweep_condition(targets), sweep)
    shots.append(page.screenshot(out / "mlflow-runs.png"))

    route = f"{experiment}?compareRunsMode=CHART"
    page.open(f"{base}{route}")
    lines = len(targets.metric_child_ids)
    page.wait_for(
        f"__shots.drawnLines('.js-plotly-plot path.js-line') >= {lines}",
        f"the chart view's {metric} curves",
    )
    page.evaluate(HIDE_MODEBAR)
    shots.append(page.screenshot(out / "mlflow-charts.png"))

    # the metric page: one large chart of the metric over epochs for every child run, with a min/max table
    query = {
        "runs": json.dumps(list(targets.metric_child_ids)),
        "metric": json.dumps(metric),
        "experiments": json.dumps([targets.experiment_id]),
        "plot_metric_keys": json.dumps([metric]),
        "plot_layout": "{}",
        "x_axis": "step",
        "y_axis_scale": "linear",
        "line_smoothness": "1",
        "show_point": "true",
        "deselected_curves": "[]",
        "last_linear_y_axis_range": "[]",
    }
    route = f"#/metric/?{urllib.parse.urlencode(query)}"
    page.open(f"{base}{route}")
    page.wait_for(f"__shots.drawnLines('.js-plotly-plot path.js-line') >= {lines}", f"the {metric} metric page")
    page.evaluate(HIDE_MODEBAR)
    shots.append(page.screenshot(out / "mlflow-metric.png"))

    route = f"#/models/{urllib.parse.quote(args.model_name, safe='')}"
    page.open(f"{base}{route}")
    version = json.dumps(f"Version {targets.model_version}")
    # the alias must be in the row of that version, not just somewhere on the page
    page.wait_for(
        f"""Array.from(document.querySelectorAll('a')).some((a) => a.textContent.trim() === {version}
            && (a.closest('tr, [role="row"]')?.innerText || '').includes({json.dumps(args.alias)}))""",
        f"version {targets.model_version} with @{args.alias} on the {args.model_name} page",
    )
    shots.append(page.screenshot(out / "mlflow-model.png"))
    return shots


def tensorboard_loaded(base: str) -> Callable[[], bool]:
    """A readiness check: TensorBoard answers before it has read the logs, and then lists runs as it reads them."""
    seen: list[list[str]] = []

    def ready() -> bool:
        seen.append(json.loads(http_get(f"{base}data/runs") or "[]"))
        # loaded: runs listed, and the same list on three polls in a row (one second)
        return len(seen) >= 3 and bool(seen[-1]) and seen[-1] == seen[-2] == seen[-3]

    return ready


def sweep_run_filter(targets: MlflowTargets, logdir: str) -> str:
    """A TensorBoard run regex for the newest sweep's directory, or "" (all runs) if its runs do not share one.

    `make run` keeps every sweep's logs under runs/<sweep id>/; the MLflow screenshots show the newest sweep only.
    """
    parents = set()
    for directory in targets.tensorboard_dirs:
        with contextlib.suppress(ValueError):
            parents.add(Path(directory).parent.relative_to(logdir).as_posix())
    if len(parents) != 1 or len(targets.tensorboard_dirs) != len(targets.child_run_ids) or parents == {"."}:
        return ""
    return f"^{re.escape(parents.pop())}/"


def tensorboard_runs(base: str, args: argparse.Namespace, run_filter: str) -> int:
    """How many TensorBoard runs the scalars page will show; fails if none, or if no tag matches --tb-tags.

    The dashboard lists every tag by category below the filter's results, so a filter matching nothing would still
    show charts: the logged tags are checked here instead.
    """
    by_run = json.loads(http_get(f"{base}data/plugin/scalars/tags") or "{}")
    by_run = {run: tags for run, tags in by_run.items() if re.search(run_filter, run)}
    if not by_run:
        raise ScreenshotError(f"TensorBoard found no scalars under {args.runs}/ for runs matching {run_filter!r}")
    tags = sorted({tag for run_tags in by_run.values() for tag in run_tags})
    try:
        matching = [tag for tag in tags if re.search(args.tb_tags, tag)]
    except re.error as error:
        raise ScreenshotError(f"--tb-tags {args.tb_tags!r} is no regular expression: {error}") from error
    if not matching:
        raise ScreenshotError(f"no TensorBoard scalar tag matches --tb-tags {args.tb_tags!r}; tags: {', '.join(tags)}")
    return len(by_run)


def take_tensorboard(
    page: Page, base: str, args: argparse.Namespace, run_filter: str, run_count: int, out: Path
) -> list[Path]:
    """The legacy scalars dashboard filtered to the training curves, and the HParams table when it has data."""
    shots: list[Path] = []
    # smoothing 0: with a handful of epochs the default 0.6 draws the curves well away from the logged points
    route = f"#scalars&tagFilter={urllib.parse.quote(args.tb_tags, safe='')}&_smoothingWeight=0"
    if run_filter:
        route += f"&regexInput={urllib.parse.quote(run_filter, safe='')}"
    page.open(f"{base}{route}")
    tag = f"new RegExp({json.dumps(args.tb_tags)})"
    page.wait_for(
        f"__shots.all('tf-scalar-card').filter((card) => {tag}.test(card.tag || '')).length > 0"
        f" && __shots.drawnLines('path.line') >= {run_count}",
        f"TensorBoard scalar charts matching {args.tb_tags!r}",
    )
    shots.append(page.screenshot(out / "tensorboard-scalars.png"))

    plugins = json.loads(http_get(f"{base}data/plugins_listing") or "{}")
    if plugins.get("hparams", {}).get("enabled"):
        route = "#hparams"
        page.open(f"{base}{route}")
        page.wait_for(
            f"__shots.all('tf-hparams-table-view').length > 0 && __shots.all('td').length >= {run_count}",
            "the TensorBoard HParams table",
        )
        shots.append(page.screenshot(out / "tensorboard-hparams.png"))
    else:
        say("TensorBoard's HParams tab has no data; tensorboard-hparams.png not taken")
    return shots


def run(args: argparse.Namespace) -> None:
    check_inputs(args)
    targets = resolve_mlflow(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",  # its usage reports wait for a network that may not be there
        # the server's job runner starts a dozen queue workers for features these screenshots do not use
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    mlflow_port, tb_port = free_port(), free_port()
    mlflow_base, tb_base = f"http://127.0.0.1:{mlflow_port}/", f"http://127.0.0.1:{tb_port}/"
    # one worker: the default four only compete for the CPU with the browser
    mlflow_cmd = [str(venv_bin("mlflow")), "ui", "--backend-store-uri", args.store]
    mlflow_cmd += ["--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"]
    tb_cmd = [str(venv_bin("tensorboard")), "--logdir", args.runs, "--host", "127.0.0.1", "--port", str(tb_port)]

    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        mlflow_log, tb_log = workdir / "mlflow.log", workdir / "tensorboard.log"
        # both servers start together: each takes tens of seconds on a small machine
        started = time.monotonic()
        mlflow_proc = stack.enter_context(process_group(mlflow_cmd, mlflow_log, env))
        tb_proc = stack.enter_context(process_group(tb_cmd, tb_log, env))
        say(f"started mlflow ui on {mlflow_base} and tensorboard on {tb_base}; waiting for them to answer")
        wait_until("mlflow ui", mlflow_proc, mlflow_log, lambda: http_get(f"{mlflow_base}health") is not None)
        wait_until("tensorboard", tb_proc, tb_log, tensorboard_loaded(tb_base))
        run_filter = sweep_run_filter(targets, args.runs)
        run_count = tensorboard_runs(tb_base, args, run_filter)
        say(
            f"both answer after {time.monotonic() - started:.0f} s; sweep {targets.parent_run_name}, "
            f"{len(targets.child_run_ids)} child runs, {args.model_name} v{targets.model_version} @{args.alias}"
        )
        page = stack.enter_context(chromium(args.chromium, args.width, args.height, workdir))
        page.call("Page.addScriptToEvaluateOnNewDocument", source=mlflow_storage(targets, mlflow_port))
        shots = take_mlflow(page, mlflow_base, targets, args, out)
        shots += take_tensorboard(page, tb_base, args, run_filter, run_count, out)
    say(f"{len(shots)} screenshots in {out}/ after {time.monotonic() - started:.0f} s; servers stopped")


def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise ScreenshotError("terminated")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # SIGTERM (make interrupted, CI cancelled) would end Python without unwinding; as an exception it stops the servers
    signal.signal(signal.SIGTERM, _terminated)
    try:
        run(args)
    except ScreenshotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
