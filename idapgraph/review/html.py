"""A self-contained HTML report of a :class:`~idapgraph.review.diff.Diff`.

One file, no external assets (no CDN, fonts or images): inline CSS, an inline SVG chart of the
channels and FLOPs each conv/linear layer keeps, and the table of every node. A few lines of
inline script only toggle whether unchanged nodes are listed; the chart needs none.
"""

from __future__ import annotations

from html import escape

from .diff import Diff, NodeDiff
from .text import fmt, healing, healing_line, summary_rows

COLORS = {"channels": "#3b6fb6", "flops": "#e08a1e", "removed": "#d73027", "grid": "#d0d0d0"}
_ROW = 22
_LABEL_W = 330
_BAR_W = 440
_NUM_W = 130


def _ratio(a: int | None, b: int | None) -> float | None:
    if a is None or b is None:
        return None
    return b / a if a else None


def _short(name: str, n: int = 46) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def layer_rows(d: Diff) -> list[NodeDiff]:
    """The conv/linear layers of A (and added ones of B), in execution order."""
    return [r for r in d.nodes if r.channels_a is not None or r.channels_b is not None]


def chart(d: Diff) -> str:
    rows = layer_rows(d)
    ratios = [x for r in rows for x in (_ratio(r.channels_a, r.channels_b),
                                        _ratio(r.flops_a, r.flops_b)) if x is not None]
    top = min(max([1.0] + ratios), 2.0)
    scale = _BAR_W / top
    head = 34
    width = _LABEL_W + _BAR_W + _NUM_W
    height = head + _ROW * len(rows) + 8
    out = [f'<svg id="layer-chart" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="channels and FLOPs kept per layer">']
    x0 = _LABEL_W
    out.append(f'<rect x="{x0}" y="4" width="12" height="9" fill="{COLORS["channels"]}"/>'
               f'<text x="{x0 + 16}" y="12" class="legend">output channels kept</text>'
               f'<rect x="{x0 + 170}" y="4" width="12" height="9" fill="{COLORS["flops"]}"/>'
               f'<text x="{x0 + 186}" y="12" class="legend">FLOPs kept</text>'
               f'<rect x="{x0 + 280}" y="4" width="12" height="9" fill="{COLORS["removed"]}"/>'
               f'<text x="{x0 + 296}" y="12" class="legend">removed / bypassed</text>')
    ticks = [t / 4 for t in range(int(top * 4) + 1)]
    for t in ticks:
        x = x0 + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{head - 6}" x2="{x:.1f}" y2="{height - 6}" '
                   f'stroke="{COLORS["grid"]}" stroke-width="{1.5 if t == 1 else 0.6}"/>'
                   f'<text x="{x:.1f}" y="{head - 9}" class="tick">{t:g}</text>')
    for i, r in enumerate(rows):
        y = head + i * _ROW
        name = r.a if r.a is not None else f"(B) {r.b}"
        gone = r.status in ("removed", "bypassed")
        out.append(f'<g class="row {r.status}"><title>{escape(name)}: {r.status}'
                   f'{" " + escape(r.block) if r.block else ""}; channels '
                   f'{r.channels_a if r.channels_a is not None else "-"} → '
                   f'{r.channels_b if r.channels_b is not None else "-"}; FLOPs '
                   f'{fmt(r.flops_a)} → {fmt(r.flops_b)}</title>')
        out.append(f'<text x="{_LABEL_W - 8}" y="{y + 14}" class="label'
                   f'{" gone" if gone else ""}">{escape(_short(name))}</text>')
        if gone:
            out.append(f'<rect class="bar removed" x="{x0}" y="{y + 3}" width="6" height="16" '
                       f'fill="{COLORS["removed"]}"/>'
                       f'<text x="{x0 + 12}" y="{y + 15}" class="num gone">{r.status}'
                       f'{" " + escape(r.block) if r.block else ""}</text></g>')
            continue
        c, f = _ratio(r.channels_a, r.channels_b), _ratio(r.flops_a, r.flops_b)
        for k, (v, color) in enumerate(((c, COLORS["channels"]), (f, COLORS["flops"]))):
            w = 0.0 if v is None else min(v, top) * scale
            out.append(f'<rect class="bar" x="{x0}" y="{y + 3 + 8 * k}" width="{max(w, 0.5):.1f}" '
                       f'height="7" fill="{color}"/>')
        label = " / ".join("-" if v is None else f"{v:.2f}" for v in (c, f))
        if r.a is None:
            label = "added"
        out.append(f'<text x="{x0 + _BAR_W + 8}" y="{y + 14}" class="num">{label}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _shapes(shapes) -> str:
    if not shapes:
        return "-"
    return ", ".join("?" if s is None else "×".join("?" if x is None else str(x) for x in s)
                     for s in shapes)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 8px;border-bottom:1px solid #e4e4e4;white-space:nowrap}
th{text-align:left;background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px} .paths{color:#555}
tr.removed td,tr.bypassed td{color:#b2182b} tr.added td{color:#2c5fa8}
#nodes.hide-same tr.same{display:none}
svg text{font:12px system-ui,sans-serif;fill:#333} svg .label{text-anchor:end}
svg .tick{text-anchor:middle;fill:#777;font-size:11px} svg .legend{font-size:12px}
svg .gone{fill:#b2182b}
"""

_SCRIPT = """
(function(){var box=document.getElementById('show-same'),t=document.getElementById('nodes');
function sync(){t.classList.toggle('hide-same',!box.checked);}
box.addEventListener('change',sync);sync();})();
"""


def report(d: Diff) -> str:
    t = d.totals()
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>idapgraph diff: {escape(d.a.path)} vs {escape(d.b.path)}</title>",
             f"<style>{_CSS}</style></head><body>",
             "<h1>idapgraph diff</h1>",
             f'<p class="paths">A: <code>{escape(d.a.path)}</code><br>'
             f"B: <code>{escape(d.b.path)}</code></p>",
             '<table id="totals"><tr><th></th><th>A</th><th>B</th><th>B/A</th></tr>']
    for label, a, b, r in summary_rows(d):
        parts.append(f'<tr><td>{label}</td><td class="n">{a}</td><td class="n">{b}</td>'
                     f'<td class="n">{r}</td></tr>')
    parts.append("</table>")
    counts = ", ".join(f"{v} {k}" for k, v in t["nodes"].items())
    how = ", ".join(f"{v} by {k}" for k, v in d.matching.counts().items() if v)
    parts.append(f"<p>Nodes: {counts}. Matched {len(d.matching.a_to_b)} ({how or 'none'}). "
                 f"{t['layers_pruned']} of {t['layers']} conv/linear layers lost channels.</p>")
    if heal := healing_line(d):
        parts.append(f'<p id="healing">{escape(heal)}.</p>')
    if d.blocks:
        parts.append("<p>Bypassed residual blocks: " + "; ".join(
            f"<b>{escape(b['key'])}</b> (add <code>{escape(b['add'])}</code>"
            f"{' kept with a constant' if b['add_kept'] else ' removed'}, {len(b['nodes'])} nodes,"
            f" {fmt(b['flops'])} FLOPs)" for b in d.blocks) + "</p>")
    parts.append("<h2>Per layer: fraction of output channels and FLOPs kept</h2>")
    parts.append(chart(d) if layer_rows(d) else "<p>No conv/linear layers.</p>")
    parts.append("<h2>Nodes</h2>")
    parts.append('<p><label><input type="checkbox" id="show-same"> show unchanged nodes</label>'
                 f" ({t['nodes']['same']})</p>")
    parts.append('<table id="nodes" class="hide-same"><tr><th>#</th><th>node (A)</th>'
                 "<th>node (B)</th><th>op</th><th>status</th><th>match</th><th>channels</th>"
                 "<th>output A</th><th>output B</th><th>FLOPs A</th><th>FLOPs B</th>"
                 "<th>params A</th><th>params B</th><th>healing</th></tr>")
    for i, r in enumerate(d.nodes):
        ch = "-" if r.channels_a is None and r.channels_b is None else \
            f"{r.channels_a if r.channels_a is not None else '-'} → " \
            f"{r.channels_b if r.channels_b is not None else '-'}"
        parts.append(
            f'<tr class="{r.status}"><td class="n">{i}</td>'
            f"<td><code>{escape(r.a or '')}</code></td>"
            f"<td><code>{escape(r.b or '') if r.b != r.a else '='}</code></td>"
            f"<td>{escape(r.op)}</td><td>{r.status}{' ' + escape(r.block) if r.block else ''}</td>"
            f"<td>{r.match or '-'}</td><td>{ch}</td><td>{_shapes(r.outputs_a)}</td>"
            f"<td>{_shapes(r.outputs_b)}</td><td class=\"n\">{fmt(r.flops_a)}</td>"
            f'<td class="n">{fmt(r.flops_b)}</td><td class="n">{fmt(r.params_a)}</td>'
            f'<td class="n">{fmt(r.params_b)}</td><td>{escape(healing(r))}</td></tr>')
    parts.append("</table>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"
