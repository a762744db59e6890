"""Apply a :class:`~idapgraph.ir.plan.Rewrite` to a torch.fx GraphModule."""

from __future__ import annotations

import copy
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..ir.graph import PARAM, Graph
from ..frontends.fx import impure
from ..ir.plan import Rewrite


def _owner(root: nn.Module, qualname: str) -> tuple[nn.Module, str]:
    *path, attr = qualname.split(".")
    mod = root
    for p in path:
        mod = getattr(mod, p)
    return mod, attr


def _tensor_names(root: nn.Module) -> dict[int, list[str]]:
    """Tensor id -> every name it has in ``root`` (tied weights: an embedding and its LM head)."""
    names: dict[int, list[str]] = {}
    for name, t in [*root.named_parameters(remove_duplicate=False),
                    *root.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(name)
    return names


def _aliases(root: nn.Module) -> dict[str, list[str]]:
    """Name -> every name of the same tensor in ``root`` (taken once, before any replacement)."""
    return {n: names for names in _tensor_names(root).values() for n in names}


def _set(root: nn.Module, qualname: str, value: torch.Tensor,
         aliases: dict[str, list[str]]) -> None:
    """Replace the tensor named ``qualname`` under every name it has (``aliases``): a tied
    weight stays one tensor (no stale full-size copy is left under its other name)."""
    mod, attr = _owner(root, qualname)
    old = getattr(mod, attr)
    names = aliases.get(qualname, [qualname])
    if isinstance(old, nn.Parameter):
        value = nn.Parameter(value, requires_grad=old.requires_grad)
    for name in names:
        setattr(*_owner(root, name), value)


def emit(gm: fx.GraphModule, graph: Graph, rewrite: Rewrite, mode: str = "remove") -> fx.GraphModule:
    """Return a new GraphModule with the rewrite applied.

    ``mode="remove"`` slices parameters and updates module attributes and call arguments;
    ``mode="zero"`` keeps every shape and only zeroes the removed parameter entries (the
    reference for zero-then-remove equivalence tests).
    """
    table = rewrite.keep if mode == "remove" else rewrite.removed
    new = copy.deepcopy(gm, _sliced_memo(gm, graph, table) if mode == "remove" else None)
    aliases = _aliases(new)
    with torch.no_grad():
        for name, axes in table.items():
            if graph.tensors[name].kind != PARAM:
                continue
            mod, attr = _owner(new, name)
            v = getattr(mod, attr).detach()
            if mode == "remove":
                for ax, idx in sorted(axes.items()):
                    v = v.index_select(ax, torch.as_tensor(idx, dtype=torch.long, device=v.device))
                v = v.contiguous()
            else:
                v = v.clone()
                for ax, idx in axes.items():
                    v.index_fill_(ax, torch.as_tensor(idx, dtype=torch.long, device=v.device), 0)
            _set(new, name, v, aliases)
    if mode != "remove":
        return new
    _rewrite_calls(new, graph, rewrite)
    new.graph.lint()
    new.recompile()
    return new


def _rewrite_calls(new: fx.GraphModule, graph: Graph, rewrite: Rewrite) -> None:
    """Module attributes and call arguments that follow the sliced parameters."""
    modules = dict(new.named_modules())
    fx_nodes = {n.name: n for n in new.graph.nodes}
    for node in graph:
        fxn = fx_nodes[node.name]
        upd = rewrite.attrs.get(node.name, {})
        m = modules.get(fxn.target) if fxn.op == "call_module" else None
        if node.op == "conv":
            if m is not None:
                if "groups" in upd:
                    m.groups = upd["groups"]
                m.out_channels = m.weight.shape[0]
                m.in_channels = m.weight.shape[1] * m.groups
            elif "groups" in upd:
                _set_arg(fxn, node.attrs.get("groups_arg", 6), "groups", upd["groups"])
        elif node.op == "linear" and isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif node.op == "gather" and isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = m.weight.shape
        elif node.op in ("batchnorm", "instancenorm") and m is not None:
            channels = rewrite.new_shapes[node.inputs[0]][1]
            if isinstance(m, nn.PReLU):
                m.num_parameters = channels
            elif hasattr(m, "num_features"):
                m.num_features = channels
        elif node.op == "groupnorm" and isinstance(m, nn.GroupNorm):
            m.num_groups = upd.get("groups", m.num_groups)
            m.num_channels = rewrite.new_shapes[node.inputs[0]][1]
        elif node.op == "pad" and "pads" in upd:
            _rewrite_pad(fxn, node, upd["pads"])
        elif node.op in ("reshape", "expand") and "target" in upd:
            _rewrite_view(fxn, upd["target"])
        elif node.op == "reduce" and "scale" in upd:
            _scale_output(new.graph, fxn, upd["scale"])
        elif node.op == "layernorm" and "scale" in upd:  # a fused RMSNorm's width
            if m is not None:
                m.normalized_shape, m.eps = tuple(upd["normalized"]), upd["eps"]
            else:  # F.rms_norm / aten.rms_norm(x, normalized_shape, weight, eps)
                _set_arg(fxn, 1, "normalized_shape", list(upd["normalized"]))
                _set_arg(fxn, 3, "eps", upd["eps"])
            _scale_output(new.graph, fxn, upd["scale"])
        elif node.op == "split" and "sizes" in upd and node.attrs.get("aten"):
            fxn.target = torch.ops.aten.split_with_sizes.default
            fxn.args, fxn.kwargs = (fxn.args[0], list(upd["sizes"]), node.attrs["axis"]), {}
        elif node.op == "split" and "sizes" in upd:
            fxn.op, fxn.target = "call_function", torch.split
            fxn.args, fxn.kwargs = (fxn.args[0], list(upd["sizes"]), node.attrs["axis"]), {}
        elif node.op == "index" and "map" in upd and "aten_slice" in node.attrs:
            d = node.attrs["aten_slice"]  # the sliced axis; others pass whole (any size)
            if upd["map"][d] != node.attrs["map"][d]:
                _, start, stop, step = upd["map"][d]
                fxn.args, fxn.kwargs = (fxn.args[0], d, start, stop, step), {}
        elif node.op == "index" and "map" in upd and "spec" in node.attrs:
            mp = upd["map"]
            idx = []
            for e in node.attrs["spec"]:
                if e[0] == "none":
                    idx.append(None)
                elif e[0] == "int":
                    idx.append(e[1])
                else:
                    _, start, stop, step = mp[e[1]]
                    idx.append(slice(start, stop, step))
            fxn.args = (fxn.args[0], tuple(idx))


def _scale_output(graph: fx.Graph, fxn: fx.Node, scale: float) -> None:
    """Every reader of ``fxn`` reads its result times ``scale`` (a mean or an RMSNorm that
    keeps its original divisor after its axis lost channels)."""
    users = list(fxn.users)
    aten = isinstance(fxn.target, torch._ops.OpOverload)
    with graph.inserting_after(fxn):
        mul = graph.call_function(torch.ops.aten.mul.Tensor if aten else operator.mul,
                                  (fxn, scale))
    mul.meta.update({k: v for k, v in fxn.meta.items() if k in ("val", "tensor_meta")})
    for u in users:
        u.replace_input_with(fxn, mul)


def _sliced_memo(gm: fx.GraphModule, graph: Graph, keep: dict) -> dict:
    """A deepcopy memo that maps every tensor about to be replaced by a slice of itself to the
    tensor itself: the copy then does not clone what it drops a moment later (ResNet-50: a
    100 MB copy). Only tensors sliced along some axis are left out: a slice is a new tensor set
    under every name of the tensor, so the copy shares no storage with ``gm`` in the end."""
    sliced = {name for name, axes in keep.items()
              if axes and graph.tensors[name].kind == PARAM}
    tensors = {id(t): t for _, t in [*gm.named_parameters(remove_duplicate=False),
                                      *gm.named_buffers(remove_duplicate=False)]}
    # a tensor sliced under one name is replaced under all (``_set``)
    return {i: tensors[i] for i, ns in _tensor_names(gm).items() if any(n in sliced for n in ns)}


def _set_arg(fxn: fx.Node, pos: int, name: str, value) -> None:
    if len(fxn.args) > pos:
        args = list(fxn.args)
        args[pos] = value
        fxn.args = tuple(args)
    else:
        kw = dict(fxn.kwargs)
        kw[name] = value
        fxn.kwargs = kw


def _rewrite_pad(fxn: fx.Node, node, pads: list) -> None:
    """New canonical pads (begins then ends) back in torch's order (last axis first) over as
    many axes as the call named; a padding module becomes the equivalent ``F.pad`` call (only
    zero fills are ever rewritten, see ``ir.ops._couple_pad``)."""
    r = len(pads) // 2
    torch_pad = []
    for i in range(node.attrs["torch_pad_len"] // 2):
        torch_pad += [pads[r - 1 - i], pads[2 * r - 1 - i]]
    if fxn.op == "call_module":
        fxn.op, fxn.target = "call_function", F.pad
        fxn.args, fxn.kwargs = (fxn.args[0], tuple(torch_pad), "constant", 0.0), {}
    else:
        _set_arg(fxn, 1, "pad", list(torch_pad))


def _rewrite_view(fxn: fx.Node, target: list) -> None:
    head = fxn.args[:1]
    rest = fxn.args[1:]
    packed = len(rest) == 1 and isinstance(rest[0], (tuple, list))
    old = list(rest[0]) if packed else list(rest)
    new = [o if isinstance(o, fx.Node) else t for o, t in zip(old, target)]
    fxn.args = head + ((tuple(new),) if packed else tuple(new))


def get_param(gm: fx.GraphModule, name: str):
    """The parameter as numpy (bfloat16, which numpy lacks, as float32; :func:`set_params` casts
    updates back to the parameter's dtype)."""
    mod, attr = _owner(gm, name)
    t = getattr(mod, attr).detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def can_add_bias(gm: fx.GraphModule, node_name: str) -> bool:
    fxn = next((n for n in gm.graph.nodes if n.name == node_name), None)
    if fxn is None or fxn.op != "call_module":
        return False
    m = gm.get_submodule(fxn.target)
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m.bias is None


def set_params(gm: fx.GraphModule, updates: dict, new_bias: dict) -> fx.GraphModule:
    """A copy of ``gm`` with parameters replaced and biases added to bias-less conv/linear modules."""
    new = copy.deepcopy(gm)
    apply_params(new, updates, new_bias)
    return new


def apply_params(gm: fx.GraphModule, updates: dict, new_bias: dict) -> None:
    """:func:`set_params` on ``gm`` itself: a value of unchanged shape is written into the
    existing tensor, so a ``get_attr`` already evaluated (torch.export graphs read every
    parameter up front) sees it too."""
    aliases = _aliases(gm)
    with torch.no_grad():
        for name, value in updates.items():
            mod, attr = _owner(gm, name)
            old = getattr(mod, attr)
            new = torch.as_tensor(value, dtype=old.dtype, device=old.device)
            if new.shape == old.shape:
                old.copy_(new)
            else:
                _set(gm, name, new, aliases)
        nodes = {n.name: n for n in gm.graph.nodes}
        for node_name, value in new_bias.items():
            m = gm.get_submodule(nodes[node_name].target)
            m.bias = nn.Parameter(torch.as_tensor(value, dtype=m.weight.dtype, device=m.weight.device))


def _by_ir_name(graph: fx.Graph) -> dict[str, fx.Node]:
    """fx nodes by IR tensor name: element ``i`` of a tuple-valued node ``n`` is ``n.i`` in the
    IR (see the fx frontend) and the ``getitem`` node that reads it here."""
    nodes = {n.name: n for n in graph.nodes}
    for n in graph.nodes:
        if n.op == "call_function" and n.target is operator.getitem and isinstance(
                n.args[0], fx.Node) and isinstance(n.args[1], int):
            nodes.setdefault(f"{n.args[0].name}.{n.args[1]}", n)
    return nodes


def bypass(gm: fx.GraphModule, blocks: list[tuple[str, str, object]]) -> fx.GraphModule:
    """A copy of ``gm`` where each ``(add node, skip tensor, constant or None)`` add becomes its
    skip input (plus the constant: mean substitution); the dead branch is removed. The copy
    shares ``gm``'s parameter and buffer tensors (nothing here changes one): layer removal
    tries several variants a step, and full copies of a 1B-parameter decoder ran out of 24 GiB;
    copy it (``copy.deepcopy``) before changing weights in place."""
    shared = [t for _, t in [*gm.named_parameters(remove_duplicate=False),
                             *gm.named_buffers(remove_duplicate=False)]]
    new = copy.deepcopy(gm, {id(t): t for t in shared})
    nodes = _by_ir_name(new.graph)
    for i, (add, skip, const) in enumerate(blocks):
        a = nodes[add]
        s = nodes[skip]
        if const is None:
            a.replace_all_uses_with(s)
            new.graph.erase_node(a)
        else:
            name = f"_idapgraph_mean_{add}"
            new.register_buffer(name, torch.as_tensor(np.asarray(const), dtype=torch.float32))
            with new.graph.inserting_before(a):
                c = new.graph.get_attr(name)
            a.op, a.target, a.args, a.kwargs = "call_function", operator.add, (s, c), {}
    new.graph.eliminate_dead_code(is_impure_node=impure)
    new.delete_all_unused_submodules()
    new.graph.lint()
    new.recompile()
    return new
