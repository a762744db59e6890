"""Plain-text and Markdown tables of a :class:`~idapgraph.review.diff.Diff`."""

from __future__ import annotations

from .diff import Diff, NodeDiff


def fmt(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.3f}" if a else "-"


def _channels(r: NodeDiff) -> str:
    if r.channels_a is None and r.channels_b is None:
        return "-"
    return f"{r.channels_a if r.channels_a is not None else '-'} -> " \
           f"{r.channels_b if r.channels_b is not None else '-'}"


def healing(r: NodeDiff) -> str:
    """What healing did to the node (B's metadata), else how much its weights moved."""
    h = r.healing
    if h:
        kind = h.get("kind")
        if kind == "refit":
            return (f"refit: residual {h.get('residual_before', 0):.3g} -> "
                    f"{h.get('residual_after', 0):.3g}")
        if kind == "affine":
            return (f"affine: scale {h.get('scale_min', 1):.3g}..{h.get('scale_max', 1):.3g}, "
                    f"|shift| <= {h.get('shift_max', 0):.3g}")
        if kind == "bias":
            return f"bias: |shift| <= {h.get('shift_max', 0):.3g}"
        return str(kind)
    if r.weights_change:
        return f"weights moved {100 * r.weights_change:.3g}%"
    return "-"


def healing_line(d: Diff) -> str | None:
    h = d.healing_summary()
    if h is None:
        return None
    err = ""
    if h.get("error_before") is not None and h.get("error_after") is not None:
        err = f", calibration output error {h['error_before']:.3g} -> {h['error_after']:.3g}"
    return (f"healing ({h.get('method')}, recorded in B): {d.totals()['layers_healed']} layers "
            f"changed{err}")


def _label(r: NodeDiff) -> str:
    if r.a is None:
        return f"(B) {r.b}"
    return r.a if r.b in (None, r.a) else f"{r.a} = {r.b}"


def most_changed(d: Diff, top: int | None = None) -> list[NodeDiff]:
    """Records other than ``same``, the largest FLOPs change first (execution order on ties)."""
    rows = [r for r in d.nodes if r.status != "same"]
    rows.sort(key=lambda r: -abs((r.flops_a or 0) - (r.flops_b or 0)))
    return rows if top is None else rows[:top]


def summary_rows(d: Diff) -> list[tuple[str, str, str, str]]:
    t = d.totals()
    return [("FLOPs", fmt(t["flops_a"]), fmt(t["flops_b"]), _ratio(t["flops_a"], t["flops_b"])),
            ("params", fmt(t["params_a"]), fmt(t["params_b"]),
             _ratio(t["params_a"], t["params_b"])),
            ("channels", str(t["channels_a"]), str(t["channels_b"]),
             _ratio(t["channels_a"], t["channels_b"])),
            ("nodes", str(len(d.a.graph)), str(len(d.b.graph)),
             _ratio(len(d.a.graph), len(d.b.graph)))]


def _status_line(d: Diff) -> str:
    t = d.totals()
    how = ", ".join(f"{v} by {k}" for k, v in d.matching.counts().items() if v)
    counts = ", ".join(f"{v} {k}" for k, v in t["nodes"].items())
    return (f"nodes: {counts}; matched {len(d.matching.a_to_b)} ({how or 'none'}); "
            f"{t['layers_pruned']} of {t['layers']} conv/linear layers lost channels")


def text(d: Diff, top: int = 15) -> str:
    out = [f"A: {d.a.path}", f"B: {d.b.path}", ""]
    out.append(f"{'':10}{'A':>12}{'B':>12}{'B/A':>8}")
    for label, a, b, r in summary_rows(d):
        out.append(f"{label:10}{a:>12}{b:>12}{r:>8}")
    out.append(_status_line(d))
    if heal := healing_line(d):
        out.append(heal)
    for blk in d.blocks:
        out.append(f"bypassed block {blk['key']} (add {blk['add']}"
                   f"{', kept with a constant' if blk['add_kept'] else ', removed'}): "
                   f"{len(blk['nodes'])} nodes, {fmt(blk['flops'])} FLOPs")
    rows = most_changed(d, top)
    if rows:
        out.append("")
        out.append(f"most changed nodes (by FLOPs change, {len(rows)} of "
                   f"{len(most_changed(d))}):")
        width = min(max(len(_label(r)) for r in rows), 60)
        out.append(f"  {'node':<{width}}  {'op':<12}{'status':<10}{'channels':>14}"
                   f"{'FLOPs A':>10}{'FLOPs B':>10}{'kept':>7}  healing")
        for r in rows:
            name = _label(r)
            if len(name) > width:
                name = "…" + name[-(width - 1):]
            kept = "-" if r.kept is None else f"{r.kept:.2f}"
            out.append(f"  {name:<{width}}  {r.op:<12}{r.status:<10}{_channels(r):>14}"
                       f"{fmt(r.flops_a):>10}{fmt(r.flops_b):>10}{kept:>7}  {healing(r)}")
    else:
        out.append("no node changed")
    return "\n".join(out) + "\n"


def _md(s) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _shape(shapes: list | None) -> str:
    if not shapes:
        return "-"
    return ", ".join("?" if s is None else "×".join("?" if x is None else str(x) for x in s)
                     for s in shapes)


def markdown(d: Diff) -> str:
    out = ["## idapgraph diff", "", f"A: `{_md(d.a.path)}`  ", f"B: `{_md(d.b.path)}`", "",
           "| | A | B | B/A |", "|---|---:|---:|---:|"]
    for label, a, b, r in summary_rows(d):
        out.append(f"| {label} | {a} | {b} | {r} |")
    out += ["", _status_line(d), ""]
    if heal := healing_line(d):
        out += [heal, ""]
    if d.blocks:
        out += ["| bypassed block | add | add kept (constant) | nodes | FLOPs |",
                "|---|---|---|---:|---:|"]
        for blk in d.blocks:
            kept = "yes" if blk["add_kept"] else "no"
            out.append(f"| {blk['key']} | `{_md(blk['add'])}` | {kept} | {len(blk['nodes'])} | "
                       f"{fmt(blk['flops'])} |")
        out.append("")
    rows = most_changed(d)
    if not rows:
        out.append("No node changed.")
        return "\n".join(out) + "\n"
    out += ["| node (A) | node (B) | op | status | channels | output A | output B | FLOPs A |"
            " FLOPs B | params A | params B | healing |",
            "|---|---|---|---|---:|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {_md(r.a or '')} | {_md(r.b or '') if r.b != r.a else '='} | {r.op} | "
                   f"{r.status}{' ' + r.block if r.block else ''} | {_channels(r)} | "
                   f"{_shape(r.outputs_a)} | {_shape(r.outputs_b)} | {fmt(r.flops_a)} | "
                   f"{fmt(r.flops_b)} | {fmt(r.params_a)} | {fmt(r.params_b)} | "
                   f"{_md(healing(r))} |")
    return "\n".join(out) + "\n"
