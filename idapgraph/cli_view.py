"""Human output of the CLI: the ``compress`` summary table and progress bars.

Uses ``rich`` when it is installed (tables, live progress), plain text otherwise. Nothing here
computes anything: it renders the report dictionaries the API returns.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .passes.reconstruct import short_rows
from .review.text import fmt

try:  # optional: plain text without it
    import rich  # noqa: F401

    HAVE_RICH = True
except ImportError:  # pragma: no cover - rich is a dependency; the fallback is for trimmed installs
    HAVE_RICH = False

TOP_LAYERS = 8


def _ratio(before: float, after: float) -> str:
    return f"{after / before:.3f}" if before else "-"


def summary_rows(rep: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, before, after, after/before) rows of the ``compress`` summary."""
    rows = []
    for key, label in (("params", "params"), ("flops", "FLOPs (1 MAC = 1)"),
                       ("size", "size on disk")):
        b, a = rep[f"{key}_before"], rep[f"{key}_after"]
        unit = "B" if key == "size" else ""
        rows.append((label, fmt(b) + unit, fmt(a) + unit, _ratio(b, a)))
    lat = rep.get("latency")
    if lat:
        b, a = lat["before"]["median_ms"], lat["after"]["median_ms"]
        rows.append(("latency (ms)", f"{b:.2f}", f"{a:.2f}", _ratio(b, a)))
    tgt = rep.get("latency_target")
    if tgt and not lat:
        b, a = tgt["reference_ms"], tgt["after_ms"]
        rows.append(("latency (ms, in turns)", f"{b:.2f}", f"{a:.2f}", _ratio(b, a)))
    return rows


def layer_rows(rep: dict[str, Any], top: int = TOP_LAYERS) -> list[tuple[str, str, str, str]]:
    """(layer, channels before -> after, FLOPs before -> after, FLOPs kept) of the most-changed
    conv/linear layers: the largest FLOPs reduction first."""
    layers = sorted(rep.get("layers", []), key=lambda r: r["flops_after"] - r["flops_before"])
    rows = []
    for r in layers[:top]:
        ch = "bypassed" if r["bypassed"] else f"{r['channels_before']} -> {r['channels_after']}"
        rows.append((r["layer"], ch, f"{fmt(r['flops_before'])} -> {fmt(r['flops_after'])}",
                     _ratio(r["flops_before"], r["flops_after"])))
    return rows


def _rounding(round_to) -> str:
    if round_to is None:
        return " (kept counts: multiples of 8 channels, the kernel-friendly default)"
    return f" (kept counts rounded to {round_to})" if round_to > 1 else ""


def notes(rep: dict[str, Any]) -> list[str]:
    """One-line facts under the table."""
    out = [f"groups pruned: {rep['groups_pruned']} of {rep['groups']}, units removed: "
           f"{rep['units_removed']}" + _rounding(rep.get("round_to"))]
    kept = [f for f in rep["frozen"] if f["reason"] == "kept by --keep"]
    out.append(f"frozen spots: {len(rep['frozen'])}"
               + (f" ({len(kept)} kept by --keep: {len(rep['kept_nodes'])} nodes)" if rep.get("keep")
                  else ""))
    if rep.get("protected"):
        out.append("cut last (their smallest cut moves the calibration outputs by): " + ", ".join(
            f"{k} {v:.2f}" for k, v in rep["protected"].items()))
    if rep.get("group_losses"):
        n = len(rep["group_losses"])
        out.append(f"channel counts allocated by measured group losses (--measure-groups): "
                   f"{n} round{'s' if n > 1 else ''}, {sum(map(len, rep['group_losses']))} "
                   "group measurements")
    lat = rep.get("latency")
    if lat:
        out.append(f"latency: onnxruntime CPU, {lat['before']['threads']} thread, "
                   f"{lat['before']['warmup']} warm-up runs, median of {lat['before']['runs']}; "
                   f"speedup {lat['speedup']:.2f}x")
    tgt = rep.get("latency_target")
    if tgt:
        t = tgt["table"]
        out.append(f"latency target {tgt['target']}: {tgt['ratio']:.3f} of the original measured "
                   f"({tgt['threads']} thread(s)); {len(tgt['rounds'])} solve(s) by "
                   f"{tgt['solver']}, model error {tgt['model_error']:+.1%}; "
                   f"{tgt['gated_blocks']} block(s) offered; table: {t['needed']} entries, "
                   f"{t['timed']} timed now, {t['reused']} reused ({t['seconds']:.1f} s)")
    if rep["blocks_bypassed"]:
        out.append(f"blocks bypassed: {', '.join(rep['blocks_bypassed'])}")
    h = rep["heal"]
    if h.get("method") in ("lsq", "stats", "bias", "bn"):
        out.append(f"healing ({h['method']}): {h['layers']} layers, calibration error "
                   f"{h['error_before']:.4g} -> {h['error_after']:.4g} "
                   f"({'kept' if h['kept'] else 'not kept: no better'})")
        short = short_rows(h.get("rows_per_input") or {})
        out += [short] if short else []
    if not rep["reached"]:
        out.append("target not reached (see warning)")
    out.append("dry run: nothing written" if rep["output"] is None else f"wrote {rep['output']}")
    return out


def print_compress(rep: dict[str, Any], file: TextIO) -> None:
    """The ``compress`` summary: one table of totals, one of the most-changed layers, notes."""
    totals = summary_rows(rep)
    layers = layer_rows(rep)
    if HAVE_RICH:
        from rich.console import Console
        from rich.table import Table

        con = Console(file=file, highlight=False, soft_wrap=False)
        t = Table(title="compress", title_justify="left")
        for col, just in (("", "left"), ("before", "right"), ("after", "right"),
                          ("after/before", "right")):
            t.add_column(col, justify=just)
        for row in totals:
            t.add_row(*row)
        con.print(t)
        if layers:
            lt = Table(title="most-changed layers", title_justify="left")
            for col, just in (("layer", "left"), ("channels", "right"), ("FLOPs", "right"),
                              ("kept", "right")):
                lt.add_column(col, justify=just, overflow="fold")
            for row in layers:
                lt.add_row(*row)
            con.print(lt)
        for line in notes(rep):
            con.print(line, markup=False)
        return
    print(f"{'':44}{'before':>12}{'after':>12}{'after/before':>14}", file=file)
    for label, b, a, r in totals:
        print(f"{label:44}{b:>12}{a:>12}{r:>14}", file=file)
    if layers:
        print("most-changed layers:", file=file)
        for name, ch, fl, r in layers:
            print(f"  {name:<40} {ch:>14} {fl:>22} {r:>7}", file=file)
    for line in notes(rep):
        print(line, file=file)


class ProgressView:
    """A ``progress(stage, done, total)`` callback for :func:`idapgraph.compress` that draws
    progress bars on ``stream`` (stderr) while used as a context manager; a no-op when disabled
    or when ``stream`` is not a terminal."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and HAVE_RICH and stream.isatty()
        self.stream = stream
        self._bar = None
        self._tasks: dict[str, Any] = {}
        self._passes = 0

    def __enter__(self) -> "ProgressView":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                       TextColumn, TimeElapsedColumn)

            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
                                 console=Console(file=self.stream))
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if self._bar is None:
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total)
        task = self._tasks[stage]
        if stage == "calibration":
            if done == 1:
                self._passes += 1
                self._bar.reset(task, total=total,
                                description=f"calibration pass {self._passes}")
            self._bar.update(task, completed=done)
        else:
            self._bar.update(task, completed=done, total=total,
                             description=f"pruning step {done}" if stage == "step" else stage)


def print_analysis(rep: dict[str, Any], out: TextIO) -> None:
    """The ``analyze`` report (:meth:`idapgraph.analysis.Analysis.to_dict`) as text."""
    groups = rep["groups"]
    print(f"{rep['nodes']} nodes, {fmt(rep['flops'])} FLOPs (1 MAC = 1 FLOP), "
          f"{fmt(rep['params'])} params", file=out)
    print(f"{len(groups)} channel groups:", file=out)
    for gr in groups:
        score = (f"  idap score {gr['score']['min']:.3g}..{gr['score']['max']:.3g}"
                 if "score" in gr else "")
        print(f"  {gr['key']:<14} {gr['units']:>6} units  {len(gr['params'])} parameter "
              f"tensors{score}", file=out)
    if "divergence" in rep:
        print("divergence δ per layer (mean over output channels):", file=out)
        for k, v in rep["divergence"].items():
            print(f"  {k:<40} {sum(v) / max(len(v), 1):.4g}", file=out)
    if rep["blocks"]:
        print(f"{len(rep['blocks'])} bypassable blocks:", file=out)
        for b in rep["blocks"]:
            print(f"  {b['key']:<8} {b['kind']:<10} {b['nodes']:>4} nodes  {fmt(b['flops'])} "
                  "FLOPs", file=out)
    print(f"{len(rep['frozen'])} frozen spots:", file=out)
    for f in rep["frozen"]:
        print(f"  {f['layer']} ({f['source']}) {f['role']} channels: {f['reason']}", file=out)
