"""Load ``idapgraph diff --model-explorer`` overlays into Google's Model Explorer and check them.

    python3 tools/check_explorer_overlay.py [A.onnx B.onnx] [--screenshot-dir DIR] [--no-browser]

Without A and B, a pair is built first: torchvision's ResNet-18 (random weights, 64×64 input)
exported to ONNX and compressed with ``flops=0.7, blocks=1``. Then ``idapgraph diff A B
--model-explorer DIR`` writes ``DIR/a.json`` and ``DIR/b.json``, and for each model:

1. the real ``model-explorer`` command line is started, headless, the way docs/diff.md tells users::

       model-explorer A.onnx --extensions=model_explorer_onnx --node_data_paths=DIR/a.json \\
           --no_open_in_browser --port P

2. the server's ONNX adapter converts the model (``/apipost/v1/send_command``, what the web app
   calls) and every overlay key must resolve to one of the graph's node ids by the web app's
   own rule (output-tensor name, else node id);
3. the server serves the overlay file (``/api/v1/read_text_file``, what the web app fetches);
4. with Chromium, chromium-driver and selenium present (else skipped, and said so), the web app
   is opened in headless Chromium with every host but 127.0.0.1 cut off; it must list the node
   data provider without a load error, and the sum of values in its "Aggregated stats" must equal
   the sum over the overlay (i.e. the web app attached every entry to a node).

Needs ``pip install ai-edge-model-explorer model-explorer-onnx`` (``idapgraph[review]``) in the
interpreter running this script. Servers started here are stopped by their process id.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_pair(folder: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import resnet18_pair

    return resnet18_pair(folder)


class Server:
    """``model-explorer MODEL --node_data_paths=OVERLAY`` in the background."""

    def __init__(self, model: Path, overlay: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "model_explorer", str(model),
             "--extensions=model_explorer_onnx", f"--node_data_paths={overlay}",
             "--no_open_in_browser", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.url = None
        deadline = time.time() + 120
        while time.time() < deadline and self.proc.poll() is None:
            m = re.search(r"^(http://\S+)$", log.read_text(), re.M)
            if m:
                self.url = m.group(1)
                break
            time.sleep(0.5)
        if self.url is None:
            self.stop()
            raise RuntimeError(f"model-explorer did not start: {log.read_text()[-2000:]}")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as r:
            return r.read()

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def resolve(graph: dict, keys) -> tuple[dict, list]:
    """The web app's rule (processNodeDataProviderDataForGraph): a key is an output tensor
    name listed as ``tensor_name`` in a node's outputsMetadata, else a node id."""
    ids = {n["id"] for n in graph["nodes"]}
    by_tensor = {}
    for n in graph["nodes"]:
        for md in n.get("outputsMetadata") or []:
            for kv in md.get("attrs", []):
                if kv["key"] == "tensor_name":
                    by_tensor[kv["value"]] = n["id"]
    hit, miss = {}, []
    for k in keys:
        nid = by_tensor.get(k, k)
        (hit.__setitem__(k, nid) if nid in ids else miss.append(k))
    return hit, miss


def check_ui(server: Server, data: dict, shot: Path | None, say) -> None:
    from check_diff_html import browser

    d = browser(shutil.which("chromium") or "/usr/bin/chromium",
                shutil.which("chromedriver") or "/usr/bin/chromedriver", "127.0.0.1")
    try:
        d.get(server.url)
        name, text = data["name"], ""
        deadline = time.time() + 90
        while time.time() < deadline:
            text = d.execute_script("return document.body.innerText") or ""
            if "Aggregated stats" in text and name in text:
                break
            time.sleep(1)
        time.sleep(2)
        text = d.execute_script("return document.body.innerText") or ""
        if shot is not None:
            d.get_screenshot_as_file(str(shot))
            print(f"     screenshot: {shot}")
        failed = [s for s in ("Failed to process JSON", "Failed to load JSON") if s in text]
        say(name in text and not failed,
            f"web app lists node data provider {name!r}" + (f"; error: {failed}" if failed else ""))
        m = re.search(r"\nSum\s+([-0-9.e]+)", text)
        want = sum(v["value"] for v in data["results"].values())
        got = float(m.group(1)) if m else None
        say(got is not None and abs(got - want) <= 1e-3 * max(1.0, abs(want)),
            f"web app aggregated sum {got} == overlay sum {want:.5f}")
        logs = d.get_log("browser")
        severe = [e["message"] for e in logs if e.get("level") == "SEVERE"]
        external = [m_ for m_ in severe if "ERR_NAME_NOT_RESOLVED" in m_]
        own = [m_ for m_ in severe if m_ not in external]
        say(not own, f"console: {len(severe)} errors, {len(external)} of them Model Explorer's "
                     f"own external assets blocked offline (e.g. Google fonts)"
            + "".join(f"\n       {m_[:200]}" for m_ in own))
    finally:
        d.quit()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="A.onnx B.onnx (default: build a pair)")
    p.add_argument("--screenshot-dir", help="save a PNG of the web app per model here")
    p.add_argument("--no-browser", action="store_true", help="skip the web-app check")
    args = p.parse_args()
    if len(args.models) not in (0, 2):
        p.error("give two models or none")
    try:
        import model_explorer  # noqa: F401
        import model_explorer_onnx  # noqa: F401
    except ImportError as e:
        print(f"cannot run: {e}; pip install ai-edge-model-explorer model-explorer-onnx",
              file=sys.stderr)
        return 2
    browser_ok = not args.no_browser and all(
        shutil.which(x) for x in ("chromium", "chromedriver"))
    try:
        import selenium  # noqa: F401
    except ImportError:
        browser_ok = False
    failures = 0

    def say(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a, b = (Path(x) for x in args.models) if args.models else build_pair(tmp)
        overlays = tmp / "overlays"
        r = subprocess.run([sys.executable, "-m", "idapgraph", "diff", str(a), str(b),
                            "--model-explorer", str(overlays)], cwd=REPO, capture_output=True,
                           text=True)
        if r.returncode:
            print(f"idapgraph diff failed: {r.stderr.strip()}", file=sys.stderr)
            return 1
        for side, model in (("a", a), ("b", b)):
            overlay = overlays / f"{side}.json"
            data = json.loads(overlay.read_text())
            print(f"== {side.upper()}: {model.name} with {overlay.name} "
                  f"({len(data['results'])} entries)")
            server = Server(model, overlay, tmp / f"server_{side}.log")
            try:
                print(f"     model-explorer up at {server.url[:60]}…")
                resp = server.post("/apipost/v1/send_command", {
                    "extensionId": "onnx_adapter", "cmdId": "convert",
                    "modelPath": str(model.resolve()), "settings": {},
                    "deleteAfterConversion": False})
                if "error" in resp:
                    say(False, f"ONNX adapter failed: {resp['error']}")
                    continue
                graph = resp["graphs"][0]
                hit, miss = resolve(graph, data["results"])
                ops = [n for n in graph["nodes"] if n.get("label") not in ("Input", "Output")
                       and not n["id"].startswith("[value]")]
                uncovered = sorted({n["label"] for n in ops if n["id"] not in hit.values()})
                say(not miss, f"ONNX adapter graph {graph['id']!r}: {len(ops)} op nodes; "
                              f"{len(hit)} of {len(data['results'])} overlay keys are node ids"
                              + (f"; unmatched: {miss[:5]}" if miss else "")
                              + f"; ops without an entry: {', '.join(uncovered) or 'none'}")
                served = json.loads(server.get(
                    "/api/v1/read_text_file?path=" + urllib.parse.quote(str(overlay))))
                say(json.loads(served.get("content", "null")) == data,
                    "server serves the overlay file unchanged")
                if browser_ok:
                    shot = (Path(args.screenshot_dir) / f"model_explorer_{side}.png"
                            if args.screenshot_dir else None)
                    check_ui(server, data, shot, say)
                else:
                    print("-    web app not checked (needs chromium, chromium-driver, selenium)")
            finally:
                server.stop()
    print("PASS" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
