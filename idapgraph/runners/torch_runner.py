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

    def __init__(self, gm: fx.GraphModule, batches: Batches, start: Start | None = None) -> None:
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
        if start is not None:
            self._start_at(*start)

    def _start_at(self, pos: int, values: dict[str, list]) -> None:
        """Skip the first ``pos`` nodes: the values they leave for later nodes come from
        ``values`` (name -> per batch, copied: a later in-place op must not change them) and
        parameters are read again. KeyError where a value needed later is not there."""
        with torch.no_grad():
            for n in self.nodes[:pos]:
                if self.last.get(n, -1) < pos:
                    for env in self.envs:
                        env.pop(n, None)
                elif n.op == "get_attr":
                    for env in self.envs:
                        self.interp.env = env
                        env[n] = self.interp.run_node(n)
                elif n.op != "placeholder":
                    got = values[n.name]
                    for env, v in zip(self.envs, got):
                        env[n] = v.clone() if isinstance(v, torch.Tensor) else v
        self.pos = pos

    def reaches(self, name: str) -> bool:
        """Whether :meth:`advance_to` can give IR tensor ``name`` (not run yet, or still held)."""
        base = name if name in self.by_name else name.rpartition(".")[0]
        node = self.by_name.get(base)
        return node is not None and (self.index[node] >= self.pos or node in self.envs[0])

    def held(self, name: str) -> bool:
        """Whether IR tensor ``name`` is computed already and still held (:meth:`advance_to`
        gives it without running a node)."""
        base = name if name in self.by_name else name.rpartition(".")[0]
        node = self.by_name.get(base)
        return node is not None and self.index[node] < self.pos and node in self.envs[0]

    def run_to(self, pos: int) -> None:
        """Run the first ``pos`` nodes."""
        while self.pos < pos:
            self._step()

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
        self.run_to(self.index[node] + 1)
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


#: where a :class:`Stepper` starts: (node position, values of the nodes before it read later)
Start = tuple[int, dict]


class Trace:
    """The original module stepped once over the probe batches, so that a probe of a pruned copy
    (:meth:`start`) runs only from its first changed node on, from the original's values there,
    instead of from the inputs. Probes come in graph order (a channel group's cut by group),
    so the original advances monotonically; a probe whose cut lies behind it starts it again."""

    def __init__(self, gm: fx.GraphModule, batches: Batches) -> None:
        self.gm, self.batches = gm, list(batches)
        self.step: Stepper | None = None
        self.held: tuple[int, dict] | None = None  # (position, values) of the last start

    def start(self, pruned: fx.GraphModule) -> tuple[Start, Start] | None:
        """(start of ``pruned``, start of the original) at the first node where they differ;
        None where they differ from the beginning."""
        p, q = first_change(self.gm, pruned)
        if q == 0:
            return None
        if self.held is None or self.held[0] != q:
            if self.step is None or self.step.pos > q:
                self.step = Stepper(self.gm, self.batches)
            self.step.run_to(q)
            names = {n.name: [env[n] for env in self.step.envs] for n in self.step.envs[0]
                     if n.op not in ("get_attr", "placeholder")}
            self.held = (q, {k: [v.clone() if isinstance(v, torch.Tensor) else v for v in vs]
                             for k, vs in names.items()})
        return (p, self.held[1]), self.held


def first_change(original: fx.GraphModule, pruned: fx.GraphModule) -> tuple[int, int]:
    """(position in ``pruned``, position in ``original``) of the first computing node (not a
    parameter read) that is not the same in both: another call, other arguments, or a parameter
    or module state of other value."""
    def computing(gm):
        return [(i, n) for i, n in enumerate(n for n in gm.graph.nodes if n.op != "output")
                if n.op != "get_attr"]

    a, b = computing(original), computing(pruned)
    for (i, m), (j, n) in zip(a, b):
        if not _same_node(original, m, pruned, n):
            return j, i
    k = min(len(a), len(b))
    return (b[k][0] if k < len(b) else len(b)), (a[k][0] if k < len(a) else len(a))


def _same_node(ga: fx.GraphModule, a: fx.Node, gb: fx.GraphModule, b: fx.Node) -> bool:
    def names(x):
        return fx.node.map_arg(x, lambda v: v.name)

    try:
        if (a.name, a.op, a.target) != (b.name, b.op, b.target) or \
                names(a.args) != names(b.args) or names(a.kwargs) != names(b.kwargs):
            return False
    except (RuntimeError, TypeError):  # tensors among the arguments: no cheap comparison
        return False
    if a.op == "call_module" and not _same_state(ga.get_submodule(a.target),
                                                 gb.get_submodule(b.target)):
        return False
    return all(_same_value(_attr(ga, x.target), _attr(gb, y.target))
               for x, y in zip(a.all_input_nodes, b.all_input_nodes) if x.op == "get_attr")


def _attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _same_state(x: torch.nn.Module, y: torch.nn.Module) -> bool:
    if type(x) is not type(y):
        return False
    sx, sy = x.state_dict(keep_vars=True), y.state_dict(keep_vars=True)
    return sx.keys() == sy.keys() and all(_same_value(sx[k], sy[k]) for k in sx)


def _same_value(x, y) -> bool:
    if x is y:
        return True
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x.shape == y.shape and x.dtype == y.dtype and bool(torch.equal(x, y))
    if isinstance(x, torch.nn.Module) and isinstance(y, torch.nn.Module):
        return _same_state(x, y)
    return False


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
