"""Review tools: compare two ONNX models (``idapgraph diff``) and render the comparison as a
text/Markdown table, JSON, a self-contained HTML report or Model Explorer overlays."""

from .diff import SCHEMA, VERSION, Diff, NodeDiff, diff

__all__ = ["SCHEMA", "VERSION", "Diff", "NodeDiff", "diff"]
