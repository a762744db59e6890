"""The invariants every fuzzed example must hold, for either backend.

``check(source, args, data, stats)`` analyses a model, draws a random plan from its channel groups
(and blocks), applies it with ``mode="zero"`` and ``mode="remove"`` and asserts:

* analysis either succeeds or refuses with an :class:`idapgraph.IdapgraphError` (one clear line);
  any other exception escapes and fails the example; no op rule fails internally;
* the plan resolves and both emissions succeed (the plan only names groups analysis offered);
* every emitted ONNX passes ``onnx.checker`` (full check) and runs in onnxruntime; every emitted
  fx module runs; output shapes equal the original's;
* zero-then-remove equivalence: the removed model equals the zeroed one (bypassed branches are
  zeroed in the reference too) within 1e-4 relative;
* frozen spots are never touched: no removed index of a weight axis is one of its frozen
  channels, and every tensor an op without a rule touches, and every model input and output,
  keeps its shape;
* a plan that removes something makes the model strictly smaller.

``check_divergence``: the IDAP++ annotation runs and gives finite, non-negative scores.
``check_compress``: ``compress`` with random settings returns a valid model of the same output
shapes or refuses cleanly; a reached target is met; without healing it equals the zeroed plan.
``check_parity``: one plan on the fx module and on its ONNX export gives the same outputs.
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict

import numpy as np
import onnx
import torch
from hypothesis import strategies as st

import idapgraph
from helpers import onnx_out, rel_err, torch_out
from idapgraph.errors import IdapgraphError
from idapgraph.ir.ops import OPS, Space, weight_axes
from idapgraph.passes import blocks as blocks_pass
from idapgraph.passes import prune

TOL = 1e-4


class Stats(Counter):
    """Per-run counters (examples, refusals, units removed, blocks bypassed, …)."""


def analyze(source, args, stats: Stats):
    try:
        return idapgraph.analyze(source, args)
    except IdapgraphError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip(), f"refusal is not one clear line: {msg!r}"
        assert "Traceback" not in msg
        stats["refused"] += 1
        stats["refusal: " + msg[:60]] += 1
        return None


def draw_plan(data, a, stats: Stats) -> idapgraph.Plan:
    remove, units = {}, {}
    for g in a.coupling.groups:
        units[g.key] = g.n_units
        if g.n_units < 2 or data.draw(st.integers(0, 3), label=f"keep {g.key}?") == 3:
            continue
        remove[g.key] = sorted(data.draw(
            st.sets(st.integers(0, g.n_units - 1), min_size=1, max_size=g.n_units - 1),
            label=f"units of {g.key}"))
    found = blocks_pass.find(a.graph)
    stats["with blocks"] += bool(found)
    bypass = []
    if found and data.draw(st.integers(0, 2), label="bypass?") == 0:
        # any blocks, layers too (zero_branches builds the reference of either kind); a block
        # inside a bypassed layer goes with the layer
        bypass = sorted(data.draw(st.sets(st.sampled_from([b.key for b in found]), min_size=1),
                                  label="blocks"))
    stats["groups"] += len(a.coupling.groups)
    stats["units_removed"] += sum(len(v) for v in remove.values())
    stats["prunable"] += any(g.n_units > 1 for g in a.coupling.groups)
    stats["pruned"] += bool(remove)
    stats["bypassed"] += bool(bypass)
    return idapgraph.Plan(remove=remove, units=units, bypass=bypass)


def check_frozen(a, rewrite) -> None:
    g, c = a.graph, a.coupling
    for f in c.frozen:
        assert not f.reason.startswith("internal:"), f"an op rule failed: {f.reason}"
    free: dict[Space, set] = defaultdict(set)
    for grp in c.groups:
        for m in grp.members:
            for s in m.spaces:
                free[s].update(int(i) for i in m.index.ravel())
    for f in c.frozen:
        node = g.nodes[f.layer]
        out_ax, in_ax = weight_axes(node)
        space = Space(node.inputs[1], out_ax if f.role == "out" else in_ax)
        frozen = set(range(g.shape(space.tensor)[space.axis])) - free[space]
        assert frozen, f"frozen spot {f} has no frozen channel"
        removed = set(int(i) for i in rewrite.removed.get(space.tensor, {}).get(space.axis, []))
        assert not removed & frozen, f"frozen channels {sorted(removed & frozen)} of {f} removed"
    fixed = set(g.inputs) | set(g.outputs)
    fixed |= {t for n in g if n.op == "unknown" for t in n.present_inputs() + n.outputs}
    for t in fixed:
        assert rewrite.new_shapes[t] == g.shape(t), f"frozen tensor {t} changes shape"


# -- backend helpers ------------------------------------------------------------------------

def _ir_names(n) -> set[str]:
    """The IR names an fx node may carry: its own, or ``src.i`` for element i of a tuple."""
    if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], int):
        return {n.name, f"{n.args[0].name}.{n.args[1]}"}
    return {n.name}


def zero_branches(model, blocks):
    """The reference for bypassed blocks, built on the zeroed (not bypassed) model: a residual
    block's branch input of its add is multiplied by 0; a transformer layer's output ``y``
    becomes ``x + 0·(y − x)`` (``x``: the stream entering it)."""
    if isinstance(model, torch.fx.GraphModule):
        nodes = {n.name: n for n in model.graph.nodes}
        by_ir = {k: n for n in model.graph.nodes for k in _ir_names(n)}
        for b in blocks:
            end = nodes[b.add]
            if b.kind == "layer":
                skip = by_ir[b.skip]
                with model.graph.inserting_after(end):
                    d = model.graph.call_function(torch.sub, (end, skip))
                with model.graph.inserting_after(d):
                    z = model.graph.call_function(torch.mul, (d, 0.0))
                with model.graph.inserting_after(z):
                    y = model.graph.call_function(torch.add, (skip, z))
                end.replace_all_uses_with(y, delete_user_cb=lambda u: u is not d)
                continue
            arg = next(x for x in end.args if isinstance(x, torch.fx.Node) and b.branch in _ir_names(x))
            with model.graph.inserting_before(end):
                z = model.graph.call_function(torch.mul, (arg, 0.0))
            end.replace_input_with(arg, z)
        model.recompile()
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = list(model.graph.node)
    for b in blocks:
        i = next(k for k, n in enumerate(nodes) if n.name == b.add)
        zero = f"{b.add}__fuzz_zero_{b.key}"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((), np.float32), zero))
        if b.kind == "layer":  # the end node now writes y0; y = skip + 0·(y0 − skip)
            y = nodes[i].output[0]
            nodes[i].output[0] = f"{zero}_y0"
            new = [onnx.helper.make_node("Sub", [f"{zero}_y0", b.skip], [f"{zero}_d"], name=f"{zero}_sub"),
                   onnx.helper.make_node("Mul", [f"{zero}_d", zero], [f"{zero}_z"], name=f"{zero}_mul"),
                   onnx.helper.make_node("Add", [b.skip, f"{zero}_z"], [y], name=f"{zero}_add")]
            nodes[i + 1:i + 1] = new
            continue
        mul = onnx.helper.make_node("Mul", [b.branch, zero], [f"{zero}_out"], name=f"{zero}_mul")
        nodes[i].input[list(nodes[i].input).index(b.branch)] = f"{zero}_out"
        nodes.insert(i, mul)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _size(model) -> int:
    if isinstance(model, torch.nn.Module):
        return sum(t.numel() for t in model.state_dict().values())
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))


def _run(model, args, feeds) -> list[np.ndarray]:
    if isinstance(model, torch.nn.Module):
        return torch_out(model, args)
    onnx.checker.check_model(model, full_check=True)
    return onnx_out(model, feeds)


def feeds_of(proto: onnx.ModelProto, args) -> dict:
    init = {t.name for t in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in init]
    assert len(names) == len(args), (names, len(args))
    return {n: a.numpy() for n, a in zip(names, args)}


# -- the property ---------------------------------------------------------------------------

def check_divergence(source, ex, stats: Stats) -> None:
    """The IDAP++ annotation runs the model on calibration data: one finite, non-negative score
    per unit of every group, and a δ per output channel of the layers it scores."""
    d = idapgraph.analyze(source, ex, divergence_scores=True)
    for g in d.coupling.groups:
        s = np.asarray(d.group_scores[g.key])
        assert s.shape == (g.n_units,) and np.isfinite(s).all() and (s >= 0).all(), (g.key, s)
    for layer, delta in d.divergence.items():
        assert np.isfinite(delta).all() and (delta >= 0).all(), (layer, delta)
    stats["divergence"] += 1


def check(source, args, data, stats: Stats) -> None:
    """All invariants for one model (torch module or ModelProto) and one drawn plan."""
    is_fx = isinstance(source, torch.nn.Module)
    feeds = None if is_fx else feeds_of(source, args)
    a = analyze(source, args if is_fx else None, stats)
    if a is None:
        stats["examples"] += 1
        return
    if data.draw(st.integers(0, 3), label="divergence?") == 0:
        check_divergence(source, args if is_fx else None, stats)
    plan = draw_plan(data, a, stats)
    stats.plan = plan  # for reports of failures in long runs
    rewrite = prune.resolve(a.graph, a.coupling, plan)
    check_frozen(a, rewrite)
    ex = args if is_fx else None
    by_key = {b.key: b for b in blocks_pass.find(a.graph)}
    zero = idapgraph.apply_plan(source, plan, ex, mode="zero")
    out = idapgraph.apply_plan(source, plan, ex, mode="remove")
    ref = _run(zero_branches(zero, [by_key[k] for k in plan.bypass]), args, feeds)
    got = _run(out, args, feeds)
    orig = _run(source, args, feeds)
    assert [g.shape for g in got] == [o.shape for o in orig], "output shapes changed"
    errs = [rel_err(r, g) for r, g in zip(ref, got)]
    assert max(errs) < TOL, f"zero-then-remove mismatch: {errs}"
    if not plan.remove and not plan.bypass:
        # (float tolerance: onnxruntime packs/fuses differently once weights are constants)
        assert max(rel_err(o, g) for o, g in zip(orig, got)) < TOL, "empty plan changed outputs"
    if plan.remove:
        assert _size(out) < _size(zero), "plan removed units but the model did not shrink"
    stats["checked"] += 1
    stats["examples"] += 1


def check_compress(source, args, data, stats: Stats) -> None:
    """``compress`` with random settings: no crash (or a clean refusal), a valid model of the
    original's output shapes, costs that do not grow; without healing the result must equal the
    original with the plan's channels (and bypassed branches) zeroed, and replaying the plan."""
    import warnings

    is_fx = isinstance(source, torch.nn.Module)
    feeds = None if is_fx else feeds_of(source, args)
    ex = args if is_fx else None
    ratio = data.draw(st.sampled_from([0.3, 0.5, 0.8, 1.0]), label="ratio")
    target = data.draw(st.sampled_from([("flops",), ("flops",), ("params",), ("flops", "params")]),
                       label="target")
    methods = ["random", "magnitude", "idap"] + (["taylor"] if isinstance(source, torch.nn.Module)
                                                 else [])
    kw = dict({t: ratio for t in target},
              method=data.draw(st.sampled_from(methods), label="method"),
              heal=data.draw(st.sampled_from(["none", "bias", "stats", "lsq"]), label="heal"),
              blocks=data.draw(st.sampled_from([0, 0, 1, 2, None]), label="blocks"))
    if kw["blocks"] is None:  # stage 2 bounded by the calibration output error instead
        kw["max_error"] = data.draw(st.sampled_from([0.0, 0.05, 0.5]), label="max_error")
    if kw["blocks"] != 0 and data.draw(st.booleans(), label="block kinds?"):
        kw["block_kinds"] = data.draw(st.sets(st.sampled_from(
            ["residual", "attention", "mlp", "layer"]), min_size=1), label="block kinds")
        kw["block_score"] = data.draw(st.sampled_from(["relative", "influence"]), label="score")
    stats.plan = kw
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = idapgraph.compress(source, ex, **kw)
    except IdapgraphError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip(), f"refusal is not one clear line: {msg!r}"
        stats["refused"] += 1
        stats["refusal: " + msg[:60]] += 1
        stats["examples"] += 1
        return
    stats.plan = r.plan
    got, orig = _run(r.model, args, feeds), _run(source, args, feeds)
    assert [g.shape for g in got] == [o.shape for o in orig], "output shapes changed"
    rep = r.report
    # healing may give bias-less layers a bias (counted in the report, listed in heal.bias_added);
    # a bypassed branch's stored mean (params_constants) is counted too
    added = sum(rep.heal["bias_added"].values()) if rep.heal.get("kept") else 0
    slack = added + (rep.params_constants if "params" not in target else 0)
    assert rep.params_after <= rep.params_before + slack, rep
    if "params" in target:  # under a params target a stored mean is never larger than its branch
        assert rep.params_constants <= rep.params_before, rep
    if not added:
        assert rep.flops_after <= rep.flops_before, rep
    if rep.reached:  # met, up to the half unit select.py allows for rounding
        for t in target:
            before, after = getattr(rep, f"{t}_before"), getattr(rep, f"{t}_after")
            assert after <= ratio * before + 0.5, f"reached, but {t} not met: {rep}"
    if is_fx:  # the report counts what the module holds
        held = sum(p.numel() for p in r.model.parameters())
        held += rep.params_constants  # stored as a buffer by the fx bypass
        assert held == rep.params_after, f"report: {rep.params_after} params, module: {held}"
    if ratio == 1.0 and kw["blocks"] == 0:
        assert r.plan.n_removed == 0 and not r.plan.bypass
        assert max(rel_err(o, g) for o, g in zip(orig, got)) < 1e-5, "flops=1.0 changed outputs"
    if kw["heal"] == "none":
        a = idapgraph.analyze(source, ex)
        by_key = {b.key: b for b in blocks_pass.find(a.graph)}
        zero = idapgraph.apply_plan(source, r.plan, ex, mode="zero")
        ref = _run(zero_branches(zero, [by_key[k] for k in r.plan.bypass]), args, feeds)
        errs = [rel_err(w, g) for w, g in zip(ref, got)]
        assert max(errs) < TOL, f"compress result differs from the zeroed plan: {errs}"
        again = _run(idapgraph.apply_plan(source, r.plan, ex), args, feeds)
        assert max(rel_err(w, g) for w, g in zip(again, got)) < 1e-5, "replayed plan differs"
    stats["pruned"] += bool(r.plan.remove)
    stats["bypassed"] += bool(r.plan.bypass)
    stats["checked"] += 1
    stats["examples"] += 1


def _layer_uses(a, group) -> int:
    """How many weighted-layer calls read the group's parameters."""
    graph = a.graph
    return sum(1 for s in group.params(graph) for c in graph.tensors[s.tensor].consumers
               if OPS[graph.nodes[c].op].weighted and graph.nodes[c].inputs[1] == s.tensor)


def check_parity(model, args, proto, data, stats: Stats) -> None:
    """Design invariant 2: a plan made on the fx module, applied to the module's ONNX export,
    gives the same outputs. The plan uses the groups both frontends offer with the same units
    and the same layer uses: frontends may differ in what they can prove (run-time reshapes on
    fx), and exporters change structure (a shared conv whose one use is BN-folded becomes two
    weights in ONNX; dropped or merged calls shift keys, see regression 7)."""
    af, ao = analyze(model, args, stats), analyze(proto, None, stats)
    if af is None or ao is None:
        stats["examples"] += 1
        return
    shape_o = {g.key: (g.n_units, _layer_uses(ao, g)) for g in ao.coupling.groups}
    common = [g for g in af.coupling.groups if shape_o.get(g.key) == (g.n_units, _layer_uses(af, g))]
    stats["groups_fx_only"] += len(af.coupling.groups) - len(common)
    stats["groups_onnx_only"] += len(shape_o) - len(common)
    remove = {}
    for g in common:
        if g.n_units > 1 and data.draw(st.integers(0, 3), label=f"keep {g.key}?") < 3:
            remove[g.key] = sorted(data.draw(st.sets(st.integers(0, g.n_units - 1), min_size=1,
                                                     max_size=g.n_units - 1), label=g.key))
    plan = idapgraph.Plan(remove=remove)
    stats.plan = plan
    got_fx = torch_out(idapgraph.apply_plan(model, plan, args), args)
    got_onnx = onnx_out(idapgraph.apply_plan(proto, plan), feeds_of(proto, args))
    assert [a.shape for a in got_fx] == [b.shape for b in got_onnx]
    errs = [rel_err(a, b) for a, b in zip(got_fx, got_onnx)]
    assert max(errs) < TOL, f"fx and ONNX differ on the same plan: {errs}"
    stats["pruned"] += bool(remove)
    stats["checked"] += 1
    stats["examples"] += 1
