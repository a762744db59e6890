"""Run an fx GraphModule on calibration batches, handing requested IR tensors to a reducer."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.fx as fx

from ..emit.validate import flatten_outputs
from .data import Batches

Reducer = Callable[[dict[str, np.ndarray]], None]


def eval_mode(module: torch.nn.Module) -> bool:
    """``module.eval()``; False for a module from ``torch.export``, which refuses it
    (NotImplementedError): its train/eval behaviour was fixed when it was exported, so there is
    nothing to switch."""
    try:
        module.eval()
    except NotImplementedError:
        return False
    return True


def _args(gm: fx.GraphModule, batch) -> tuple:
    """A batch as tensors in the dtypes the module takes: calibration arrays are numpy, which has
    no bfloat16, so a bfloat16 module's float inputs arrive as float32 and are cast here (the
    placeholder's recorded dtype, else the module's first float parameter's)."""
    metas = [n.meta.get("tensor_meta") for n in gm.graph.nodes if n.op == "placeholder"]
    first = next((q.dtype for q in gm.parameters() if q.dtype.is_floating_point), None)
    out = []
    for i, b in enumerate(batch):
        t = torch.from_numpy(np.ascontiguousarray(b))
        want = getattr(metas[i], "dtype", None) if i < len(metas) else None
        want = want if want is not None else first
        if t.is_floating_point() and want is not None and want.is_floating_point and t.dtype != want:
            t = t.to(want)
        out.append(t)
    return tuple(out)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, np.ndarray] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            if n.name in self.wanted:
                self.values[n.name] = out.detach().float().cpu().numpy()
        elif isinstance(out, (tuple, list)):
            for i, o in enumerate(out):
                key = f"{n.name}.{i}"
                if key in self.wanted and isinstance(o, torch.Tensor):
                    self.values[key] = o.detach().float().cpu().numpy()
        return out


def run(gm: fx.GraphModule, names: list[str], batches: Batches, reduce: Reducer | None,
        outputs: bool = False) -> list[list[np.ndarray]]:
    """Run every batch; ``reduce`` gets ``{name: array}``; returns model outputs if asked."""
    wanted = set(names)
    outs = []
    eval_mode(gm)
    with torch.no_grad():
        for batch in batches:
            args = _args(gm, batch)
            rec = _Recorder(gm, wanted)
            out = rec.run(*args)
            if reduce is not None:
                reduce(rec.values)
            if outputs:
                outs.append([o.detach().float().cpu().numpy() for o in flatten_outputs(out)])
    return outs


class Stepper:
    """An fx GraphModule run node by node over all calibration batches at once, so that work
    between two points of the graph is done once: :meth:`advance_to` runs the nodes up to a
    tensor and returns its value per batch; the module's parameters may be changed in place in
    between (the nodes run later see them). A value is kept only while a node still to run
    reads it (memory: the live tensors of every batch, a few layers' activations)."""

    def __init__(self, gm: fx.GraphModule, batches: Batches) -> None:
        eval_mode(gm)
        self.gm = gm
        self.nodes = [n for n in gm.graph.nodes if n.op != "output"]
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.last: dict[fx.Node, int] = {}
        for i, n in enumerate(gm.graph.nodes):
            for a in n.all_input_nodes:
                self.last[a] = i
        self.interp = fx.Interpreter(gm)
        holders = [n for n in self.nodes if n.op == "placeholder"]
        self.envs = [dict(zip(holders, _args(gm, b))) for b in batches]
        self.pos = 0
        self.by_name = {n.name: n for n in self.nodes}

    def _step(self) -> None:
        n = self.nodes[self.pos]
        with torch.no_grad():
            for env in self.envs if n.op != "placeholder" else ():  # inputs: set up front
                self.interp.env = env
                env[n] = self.interp.run_node(n)
        for a in n.all_input_nodes:
            if self.last.get(a) == self.pos:
                for env in self.envs:
                    env.pop(a, None)
        self.pos += 1

    def advance_to(self, name: str) -> list[np.ndarray]:
        """Run up to IR tensor ``name`` (a node, or ``node.i`` of a tuple-valued one); its
        value in every batch, as float32 arrays."""
        base, _, item = name.rpartition(".") if name not in self.by_name else (name, "", "")
        node = self.by_name[base]
        while self.pos <= self.index[node]:
            self._step()
        if node not in self.envs[0]:
            raise RuntimeError(f"{name} was computed and dropped before it was asked for")
        vals = [env[node] if not item else env[node][int(item)] for env in self.envs]
        return [v.detach().float().cpu().numpy() for v in vals]

    @property
    def model(self) -> fx.GraphModule:
        return self.gm

    def results(self) -> list[list[np.ndarray]]:
        """Run to the end: the model's outputs per batch (as :func:`run` returns them)."""
        while self.pos < len(self.nodes):
            self._step()
        out = next(n for n in self.gm.graph.nodes if n.op == "output")
        got = []
        for env in self.envs:
            self.interp.env = env
            args, _ = self.interp.fetch_args_kwargs_from_env(out)
            got.append([o.detach().float().cpu().numpy() for o in flatten_outputs(args[0])])
        return got


def taylor_importance(gm: fx.GraphModule, params: list[str], batches: Batches,
                      loss: Callable | None = None) -> dict[str, np.ndarray]:
    """|w · dL/dw| per parameter entry, summed over calibration batches. ``loss(outputs, batch)``
    defaults to the mean squared output (a label-free proxy)."""
    named = dict(gm.named_parameters())  # buffers (BN statistics) have no gradient
    tensors = {p: named[p] for p in params if p in named}
    saved = {p: t.requires_grad for p, t in tensors.items()}
    acc = {p: torch.zeros_like(t, dtype=torch.float32) for p, t in tensors.items()}
    eval_mode(gm)
    try:
        for p, t in tensors.items():
            if t.dtype.is_floating_point:
                t.requires_grad_(True)
        wrt = [(p, t) for p, t in tensors.items() if t.requires_grad]
        for batch in batches:
            if not wrt:  # no parameter to score (every group frozen): all zeros
                break
            args = _args(gm, batch)
            out = gm(*args)
            if loss is not None:
                value = loss(out, args)
            else:
                value = sum((o.float() ** 2).mean() for o in flatten_outputs(out) if isinstance(o, torch.Tensor))
            if not getattr(value, "requires_grad", False):  # outputs do not depend on them
                continue
            grads = torch.autograd.grad(value, [t for _, t in wrt], allow_unused=True)
            for (p, t), g in zip(wrt, grads):
                if g is not None:
                    acc[p] += (t.detach() * g).abs().float()
    finally:
        for p, t in tensors.items():
            t.requires_grad_(saved[p])
    return {p: a.numpy() for p, a in acc.items()}
