"""The peers, driven to the same FLOPs as idapgraph (counted by idapgraph's counter):
Torch-Pruning 1.6's ``MetaPruner`` (global ranking, magnitude or Taylor importance) and
onnxsim 0.8.1's ``onnxsim.pruning.apply_structured_pruning`` (L2 filter pruning of the
Conv/MatMul chains it recognises, given a per-chain sparsity). Each takes a ratio, not a FLOPs
target, so the ratio is bisected until the FLOPs kept are within 0.005 of the target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

from .common import flops


@dataclass
class PeerResult:
    model: Any           # pruned torch module / ONNX model, or None when the peer failed
    kept: float | None   # FLOPs kept (idapgraph's count)
    ratio: float | None  # the peer's own knob at the chosen point
    error: str | None = None  # why there is no model, or why onnxruntime rejects it

    def label(self, name: str, knob: str, target: float) -> str:
        """``name (knob 0.289)``, saying so when no ratio reaches the FLOPs target."""
        if self.kept is not None and self.kept > 0.999:
            return f"{name} (nothing pruned at any {knob} up to 0.95)"
        short = self.kept is not None and self.kept > target + 0.02
        return f"{name} ({knob} {self.ratio:.3f}{'; FLOPs target not reached' if short else ''})"


def bisect(prune: Callable[[float], tuple[Any, float]], target: float, hi: float = 0.95,
           iters: int = 12) -> tuple[Any, float, float]:
    """The ratio in [0, hi] whose FLOPs kept are closest to ``target``; ``prune(ratio)`` returns
    (model, FLOPs kept) and FLOPs kept must fall as the ratio grows. Returns (model, kept, ratio)."""
    lo, best = 0.0, None
    for _ in range(iters):
        mid = (lo + hi) / 2
        m, kept = prune(mid)
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (m, kept, mid)
        if abs(kept - target) < 0.005:
            break
        lo, hi = (mid, hi) if kept > target else (lo, mid)
    return best


def torch_pruning(model, example: tuple, target: float, importance: str, *,
                  ignored: Callable[[Any], list] = lambda m: [],
                  gradients: Callable[[Any], None] | None = None,
                  setup: Callable[[Any], dict] | None = None,
                  after: Callable[[Any, Any], None] | None = None) -> PeerResult:
    """Torch-Pruning ``MetaPruner`` (global ranking) at the pruning ratio whose FLOPs match
    ``target``. ``importance``: ``magnitude`` (L2) or ``taylor`` (``gradients(m)`` runs the
    backward pass first). ``ignored(m)``: layers whose outputs stay; ``setup(m)``: extra
    ``MetaPruner`` keyword arguments (attention heads); ``after(m, pruner)``: fix-ups."""
    import torch_pruning as tp

    base = flops(model, example)

    def prune(ratio: float):
        m = copy.deepcopy(model)
        imp = (tp.importance.TaylorImportance() if importance == "taylor"
               else tp.importance.MagnitudeImportance(p=2))
        kw = setup(m) if setup else {}
        pruner = tp.pruner.MetaPruner(m, example, importance=imp, pruning_ratio=ratio,
                                      global_pruning=True, ignored_layers=ignored(m), **kw)
        if importance == "taylor":
            m.zero_grad()
            gradients(m)
        pruner.step()
        m.zero_grad()
        if after:
            after(m, pruner)
        return m.eval(), flops(m, example) / base

    try:
        m, kept, ratio = bisect(prune, target)
    except Exception as e:  # noqa: BLE001 - a peer failure is a result
        return PeerResult(None, None, None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    return PeerResult(m, kept, ratio)


def onnxsim_structured(proto, target: float) -> PeerResult:
    """onnxsim's ``apply_structured_pruning`` at the sparsity whose FLOPs match ``target``.
    The model is kept even when onnxruntime rejects it; ``error`` then says why."""
    import onnxsim.pruning as peer

    from idapgraph.emit.validate import example_feeds, run_onnx

    base = flops(proto)

    def prune(sparsity: float):
        m = peer.apply_structured_pruning(copy.deepcopy(proto), sparsity=sparsity)
        return m, flops(m) / base

    try:
        m, kept, ratio = bisect(prune, target)
    except Exception as e:  # noqa: BLE001
        return PeerResult(None, None, None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    try:
        run_onnx(m, example_feeds(m))
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return PeerResult(m, kept, ratio, f"onnxruntime rejects it: {msg[-160:]}")
    return PeerResult(m, kept, ratio)
