"""Open an ``idapgraph diff --html`` report in a real headless Chromium and check it.

    python3 tools/check_diff_html.py [REPORT.html] [--screenshot shot.png]

Without REPORT, one is built first: torchvision's ResNet-18 (random weights, 64×64 input)
exported to ONNX, compressed with ``flops=0.7, blocks=1``, then ``idapgraph diff --html``.

Checks: the page loads with the network cut off (every host resolves to nothing) and requests
nothing but itself; the browser console has no errors; the chart ``svg#layer-chart`` has a
nonzero size and every bar of it is drawn with a nonzero size; the "show unchanged nodes"
checkbox shows the unchanged rows. Prints one line per check and exits 1 if any fails.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``) and ``selenium`` (``pip install selenium``, or ``pip install
idapgraph[review]``). The driver is the system one; Selenium Manager is never asked to download.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_report(folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import resnet18_pair

    a, b = resnet18_pair(folder)
    html = folder / "report.html"
    r = subprocess.run([sys.executable, "-m", "idapgraph", "diff", str(a), str(b), "--html",
                        str(html)], cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"idapgraph diff failed: {r.stderr.strip()}")
    return html


def browser(chromium: str, driver: str, allow: str = ""):
    """Headless Chromium with every host name resolving to nothing (``allow``: one host to keep,
    e.g. 127.0.0.1 for a local server)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1200,1600",
              "--host-resolver-rules=MAP * ~NOTFOUND" + (f", EXCLUDE {allow}" if allow else "")):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def check(report: Path, shot: Path | None, chromium: str, driver: str) -> int:
    from selenium.webdriver.common.by import By

    failures = 0

    def say(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}")

    expected_bars = report.read_text(encoding="utf-8").count('class="bar')
    url = report.resolve().as_uri()
    d = browser(chromium, driver)
    try:
        d.get(url)
        print(f"loaded {url} in {d.capabilities.get('browserName')} "
              f"{d.capabilities.get('browserVersion')}")
        chart = d.find_element(By.ID, "layer-chart")
        size = chart.size
        say(size["width"] > 0 and size["height"] > 0,
            f"chart svg#layer-chart drawn at {size['width']}x{size['height']} px")
        drawn = d.execute_script(
            "return Array.from(document.querySelectorAll('#layer-chart rect.bar')).filter("
            "r => {const b = r.getBoundingClientRect(); return b.width > 0 && b.height > 0;})"
            ".length")
        say(drawn == expected_bars > 0, f"{drawn} of {expected_bars} bars drawn with nonzero size")
        hidden = d.execute_script("return Array.from(document.querySelectorAll('tr.same'))"
                                  ".filter(r => r.offsetParent !== null).length")
        d.find_element(By.ID, "show-same").click()
        shown = d.execute_script("return Array.from(document.querySelectorAll('tr.same'))"
                                 ".filter(r => r.offsetParent !== null).length")
        total = len(d.find_elements(By.CSS_SELECTOR, "tr.same"))
        if total:
            say(hidden == 0 and shown == total,
                f"unchanged rows: {hidden} shown before the checkbox, {shown} of {total} after")
        else:
            print("-    no unchanged rows: checkbox not exercised")
        if shot is not None:
            d.get_screenshot_as_file(str(shot))
            print(f"screenshot: {shot}")
        logs = d.get_log("browser")
        errors = [e for e in logs if e.get("level") == "SEVERE"]
        say(not errors, f"console: {len(logs)} messages, {len(errors)} errors"
            + "".join(f"\n       {e['message']}" for e in errors))
        urls = set()
        for e in d.get_log("performance"):
            msg = json.loads(e["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                urls.add(msg["params"]["request"]["url"])
        foreign = sorted(u for u in urls if u != url and not u.startswith("data:"))
        say(not foreign, f"requests: {len(urls)} ({', '.join(sorted(urls))})"
            + (f"; external: {foreign}" if foreign else ""))
    finally:
        d.quit()
    print("PASS" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", nargs="?", help="an HTML report (default: build one)")
    p.add_argument("--screenshot", help="also save a PNG of the page here")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = p.parse_args()
    for exe in (args.chromium, args.chromedriver):
        if not Path(exe).exists():
            print(f"missing {exe}: apt-get install -y chromium chromium-driver", file=sys.stderr)
            return 2
    try:
        import selenium  # noqa: F401
    except ImportError:
        print("selenium is not installed: pip install selenium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(args.report) if args.report else build_report(Path(tmp))
        return check(report, Path(args.screenshot) if args.screenshot else None,
                     args.chromium, args.chromedriver)


if __name__ == "__main__":
    raise SystemExit(main())
