"""Benchmarks against the peers (Torch-Pruning, onnxsim.pruning), one module per benchmark.

    python3 -m tools.bench [--quick] [--only mnist,efficientnet,minilm,cost,scale] [--out DIR]

Run from the repository root (``make bench`` / ``make bench ARGS=--quick``). Each benchmark
module has ``run(quick: bool, out: Path) -> Section``; the driver (``__main__``) writes every
section's markdown tables and plots to ``--out`` and prints them. Not collected by pytest
(``testpaths = ["tests"]``).
"""
