"""Peak memory and time of ``idapgraph analyze`` and ``compress`` on a large external-data model.

    python tools/make_big_model.py /tmp/big --gb 2.2
    python tools/bench_big.py /tmp/big/model.onnx [--flops 0.7] [--blocks 2] [--method magnitude]
                              [--heal none] [--out /tmp/big_out]

Each command runs in its own child process (``python -m idapgraph ...``); its peak resident set
size comes from ``os.wait4`` (the kernel's ``ru_maxrss`` of that child, which counts mapped file
pages it touched). The output is then checked here: ``onnx.checker`` full check by path, an
onnxruntime session from the path and one run on random input. Prints one Markdown table row per
command; exits 1 when a check fails or a peak passes ``--bound`` times the model's size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(cmd: list[str]) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS in GiB, stdout) of ``cmd`` run as a child."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if rc:
        sys.stderr.write(err)
    return rc, wall, usage.ru_maxrss / 2**20, out


def check_output(path: str) -> str:
    import numpy as np
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path, full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outs = sess.run(None, feeds)
    if not all(np.isfinite(o).all() for o in outs):
        raise RuntimeError("non-finite output")
    return "checker full_check by path + onnxruntime run: ok"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--out", default=None, help="output folder (default: MODEL_DIR + '_out')")
    ap.add_argument("--flops", default="0.7")
    ap.add_argument("--blocks", default="2")
    ap.add_argument("--method", default="idap")
    ap.add_argument("--heal", default="lsq")
    ap.add_argument("--bound", type=float, default=1.5)
    ap.add_argument("--skip-analyze", action="store_true")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from idapgraph import disk_size

    size = disk_size(a.model) / 2**30
    out_dir = Path(a.out or str(Path(a.model).resolve().parent) + "_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "small.onnx"
    py = [sys.executable, "-m", "idapgraph"]
    runs = []
    if not a.skip_analyze:
        runs.append(("analyze", py + ["analyze", a.model, "--json"]))
    runs.append(("compress", py + ["compress", a.model, "-o", str(out), "--flops", a.flops,
                                   "--blocks", a.blocks, "--method", a.method, "--heal", a.heal,
                                   "--json"]))
    print(f"model: {a.model}, {size:.3f} GiB on disk; bound {a.bound} x = {a.bound * size:.3f} GiB")
    print("| command | wall s | peak RSS GiB | RSS / size | result |")
    print("|---|---|---|---|---|")
    bad = False
    for name, cmd in runs:
        rc, wall, rss, stdout = measure(cmd)
        note = f"exit {rc}"
        if rc == 0 and name == "compress":
            rep = json.loads(stdout)
            try:
                check = check_output(str(out))
            except Exception as e:  # noqa: BLE001
                check, bad = f"output check FAILED: {e}", True
            note = (f"FLOPs {rep['flops_ratio']:.3f}, params {rep['params_ratio']:.3f}, "
                    f"{len(rep['blocks_bypassed'])} blocks bypassed, output "
                    f"{rep['size_after'] / 2**30:.3f} GiB; {check}")
        elif rc == 0:
            rep = json.loads(stdout)
            note = f"{len(rep['groups'])} groups, {len(rep.get('frozen', []))} frozen spots"
        bad |= rc != 0 or rss > a.bound * size
        print(f"| `{' '.join(cmd[2:])}` | {wall:.1f} | {rss:.3f} | {rss / size:.2f} | {note} |",
              flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
