"""A torch module that torch.fx cannot trace as a whole (a detector's data-dependent
post-processing, Python loops over a list of images) compressed by its parts: the largest
submodules that do trace, called with tensor arguments only (a module called several times per
forward -- a head shared by the FPN's levels -- when every call passes the same kinds of
tensors).

* :func:`split` finds them (top-down: a submodule that traces is a part, one that does not is
  searched in its children), records why every other module with parameters stays unchanged,
  counts the whole model's FLOPs (``torch.utils.flop_counter``, per module) and captures each
  part's arguments on the example inputs and on the calibration data.
* :func:`assemble` puts compressed parts back into a copy of the model;
  :func:`check` runs it on the example inputs (the outputs' structure and shapes must match).

The parts' outputs keep their widths (they are the traced graphs' outputs), so the code between
them -- anchors, NMS, RoI pooling -- sees the tensors it saw before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..errors import InputError


@dataclass
class Part:
    name: str  # the submodule's qualified name in the model
    module: object  # the torch submodule
    args: tuple  # its arguments on the example inputs
    calib: list[tuple] | None  # its arguments on each calibration batch (None: no data)
    flops: int  # its FLOPs on the example inputs (torch's flop counter)
    params: int  # its parameter count


@dataclass
class Split:
    parts: list[Part]
    skipped: list[dict] = field(default_factory=list)  # {"module", "reason"}
    flops: int = 0  # the whole model's FLOPs on the example inputs
    params: int = 0


def _call_args(inputs) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def calibration_calls(calib, batch: int = 8, n_args: int | None = None) -> list[tuple]:
    """Calibration data for a whole (untraced) model as call arguments: a tensor or array is
    split into batches of ``batch`` along its first axis (``model(x[i:i+batch])``); any other
    iterable gives one call per item (a tuple is unpacked: ``model(*item)``). As on the traced
    route, what an item carries after the model's ``n_args`` inputs (a DataLoader's labels or
    targets) is dropped."""
    import numpy as np
    import torch

    if calib is None:
        return []
    if isinstance(calib, np.ndarray):
        calib = torch.from_numpy(calib)
    if isinstance(calib, torch.Tensor):
        return [(calib[i:i + batch],) for i in range(0, len(calib), batch)]
    if isinstance(calib, (str, bytes, dict)):
        raise InputError("a model traced by parts takes calibration data as a tensor or an "
                         "iterable of call arguments, not a file or a mapping of input names")
    calls = [_call_args(c)[:n_args] for c in calib]
    if not calls:
        raise InputError("calibration data is empty")
    return calls


class _Recorder:
    """Forward pre-hooks on every submodule: each call's positional arguments, and whether any
    call passed keyword arguments."""

    def __init__(self, model, names=None) -> None:
        self.args: dict[str, list[tuple]] = {}
        self.kwargs: set[str] = set()
        self.handles = [m.register_forward_pre_hook(self._hook(n), with_kwargs=True)
                        for n, m in model.named_modules() if n and (names is None or n in names)]

    def _hook(self, name):
        def hook(_module, args, kwargs):
            self.args.setdefault(name, []).append(tuple(args))
            if kwargs:
                self.kwargs.add(name)
        return hook

    def calls(self, name: str) -> int:
        return len(self.args.get(name, ()))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _run(model, args) -> None:
    import torch

    with torch.no_grad():
        model(*args)


def _leaves(args) -> tuple[list, object]:
    """The leaves of ``args`` (lists, tuples and dicts of them flattened) and their structure."""
    from torch.utils._pytree import tree_flatten

    return tree_flatten(args)


def _tensors_only(args) -> bool:
    """Tensors, or lists/tuples/dicts of tensors (an RPN head takes the FPN's levels as a list:
    it traces by torch.export, its shared convs unrolled per level)."""
    import torch

    leaves = _leaves(args)[0]
    return bool(leaves) and all(isinstance(a, torch.Tensor) for a in leaves)


def _flops(model, args) -> dict[str, int]:
    """FLOPs per module qualified name ("" for the whole model) on ``args``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _run(model, args)
    root = type(model).__name__
    out = {}
    for key, ops in counter.get_flop_counts().items():
        if key == root:
            out[""] = sum(ops.values())
        elif key.startswith(root + "."):
            out[key[len(root) + 1:]] = sum(ops.values())
    out.setdefault("", counter.get_total_flops())
    return out


def _traces(module, args) -> str | None:
    """None where ``module`` traces with torch.fx on ``args``, else the reason it does not."""
    from ..frontends import fx as fx_frontend

    try:
        fx_frontend.trace(copy.deepcopy(module), args)
    except InputError as e:
        return str(e)
    return None


def _has_params(module) -> bool:
    return any(True for _ in module.parameters())


def split(model, example_inputs, calib=None) -> Split:
    """The parts of ``model`` (which does not trace as a whole) on ``example_inputs``."""
    args = _call_args(example_inputs)
    rec = _Recorder(model)
    try:
        flops = _flops(model, args)  # one run: the hooks record the calls as it counts
    finally:
        rec.close()
    out = Split([], flops=flops.get("", 0), params=sum(p.numel() for p in model.parameters()))
    found: list[tuple[str, object]] = []
    _search(model, "", rec, found, out.skipped)
    calls = _captured(model, [n for n, _ in found], calibration_calls(calib, n_args=len(args)))
    for name, module in found:
        out.parts.append(Part(name, module, rec.args[name][0], calls.get(name) if calib is not None
                              else None, flops.get(name, 0),
                              sum(p.numel() for p in module.parameters())))
    return out


def _search(module, prefix: str, rec: _Recorder, found: list, skipped: list) -> None:
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if not _has_params(child):
            continue
        n = rec.calls(full)
        why = "not called in the forward" if n == 0 else _callable(rec, full)
        if why is None:
            why = _traces(child, rec.args[full][0])
        if why is None:
            found.append((full, child))
        elif any(_has_params(c) for c in child.children()):
            _search(child, full + ".", rec, found, skipped)
        else:
            skipped.append({"module": full, "reason": why})


def _callable(rec: _Recorder, name: str) -> str | None:
    """Why the calls of ``name`` do not make a part (None: they do). A module called several
    times per forward (a detection head shared by the FPN's levels) is one part when every
    call passes tensors of the same structure, ranks and channel counts: traced on the first,
    calibrated on all (each call's tensors flattened, as the traced graph's inputs are)."""
    calls = rec.args[name]
    if name in rec.kwargs or not all(_tensors_only(c) for c in calls):
        return "its arguments are not all tensors"
    sig = {(str(_leaves(c)[1]),
            tuple((a.dim(), a.shape[1] if a.dim() > 1 else None, a.dtype) for a in _leaves(c)[0]))
           for c in calls}
    if len(sig) > 1:
        return f"called {len(calls)} times per forward with arguments of different kinds"
    return None


def _captured(model, names: list[str], calls: list[tuple]) -> dict[str, list[tuple]]:
    """Each part's arguments on every calibration call of the whole model."""
    out: dict[str, list[tuple]] = {n: [] for n in names}
    for c in calls:
        rec = _Recorder(model, set(names))
        try:
            _run(model, c)
        finally:
            rec.close()
        for n in names:
            out[n] += [tuple(a.detach() for a in _leaves(args)[0])  # as the traced inputs
                       for args in rec.args.get(n, ())]
    return out


def assemble(model, replaced: dict[str, object]):
    """A deep copy of ``model`` with the submodules named in ``replaced`` swapped in."""
    out = copy.deepcopy(model)
    for name, module in replaced.items():
        out.set_submodule(name, module)
    return out.eval()


def _structure(value):
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", value.dim())
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_structure(v) for v in value]
    return type(value).__name__


def check(original, compressed, example_inputs) -> None:
    """The compressed model runs on the example inputs and returns what the original does in
    structure (containers, keys and tensor ranks; sizes that depend on the data -- how many
    boxes survive -- may differ)."""
    from ..errors import EmitError

    args = _call_args(example_inputs)
    import torch

    with torch.no_grad():
        want = original(*args)
        try:
            got = compressed(*args)
        except Exception as e:  # noqa: BLE001 - any failure of the assembled model
            raise EmitError(f"the model with its compressed parts fails to run: "
                            f"{type(e).__name__}: {e}") from e
    if _structure(got) != _structure(want):
        raise EmitError("the model with its compressed parts returns a different structure")


def counts(model, example_inputs) -> tuple[int, int]:
    """FLOPs on the example inputs and parameter count of a whole model."""
    return (_flops(model, _call_args(example_inputs)).get("", 0),
            sum(p.numel() for p in model.parameters()))
