"""Review tools: compare two ONNX models (``idapgraph diff``) and render the comparison as a
text/Markdown table, JSON (``Diff.to_dict``), a self-contained HTML report or Model Explorer
overlays."""

from .diff import SCHEMA, VERSION, Diff, NodeDiff, diff
from .explorer import check_dir as check_explorer_dir
from .explorer import write as write_explorer
from .html import report as html_report
from .text import markdown, text

__all__ = ["SCHEMA", "VERSION", "Diff", "NodeDiff", "diff", "text", "markdown", "html_report",
           "write_explorer", "check_explorer_dir"]
