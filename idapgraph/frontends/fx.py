"""torch.fx frontend: ``symbolic_trace`` + ``ShapeProp`` -> IR.

Every fx node becomes at most one IR node with a canonical op from :mod:`idapgraph.ir.ops`.
Module parameters and buffers become PARAM tensors named by their qualified name
(``layer1.0.conv1.weight``); activations are named by the fx node name.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..errors import InputError, UntraceableError
from ..ir.graph import ACTIVATION, META, PARAM, Graph, Node, Tensor
from ..ir.ops import IDENTITY

_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.PReLU, nn.Hardtanh,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Tanhshrink, nn.Softsign, nn.LogSigmoid,
)
# identities in eval mode (the attribute lets a pass see through them: reconstruct.shortcut_of)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                     nn.AlphaDropout)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.LPPool2d,
)
_ELEMENTWISE_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
    torch.pow, torch.true_divide,
}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "pow", "add_", "mul_", "sub_", "div_",
                        "maximum", "minimum", "true_divide"}
_UNARY_FUNCS = {
    F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.sigmoid, F.tanh, F.dropout,
    F.leaky_relu, F.elu, F.selu, F.mish, F.softplus, F.hardtanh, torch.relu, torch.sigmoid,
    torch.tanh, torch.exp, torch.neg, operator.neg, torch.clamp, torch.abs, torch.sqrt,
    torch.rsqrt, torch.erf, F.dropout2d, torch.nn.functional.relu_, torch.clone,
}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone", "float",
                  "half", "double", "to", "type_as", "detach", "exp", "neg", "clamp", "clamp_",
                  "sqrt", "rsqrt", "abs", "hardtanh_", "erf", "bfloat16"}
_RMSNorm = getattr(nn, "RMSNorm", ())  # nn.RMSNorm (torch >= 2.4); () matches nothing
_PAD_MODULES = tuple(getattr(nn, f"{kind}Pad{d}d") for kind in
                     ("Zero", "Constant", "Reflection", "Replication") for d in (1, 2, 3)
                     if hasattr(nn, f"{kind}Pad{d}d"))
_ATEN_PADS = {"pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d",
              "reflection_pad3d", "replication_pad1d", "replication_pad2d", "replication_pad3d"}
_POOL_FUNCS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
               F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d, F.max_pool1d, F.avg_pool1d,
               F.interpolate, F.max_pool3d, F.avg_pool3d}
_REDUCE = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax"}
_REDUCE_METHODS = {"mean", "sum", "amax"}
# dtype casts (f(0) = 0: a channel zeroed before stays zero after; see ir.ops.zero_where_removed)
_CAST_METHODS = {"float", "half", "double", "to", "type_as", "bfloat16"}
_ATEN_CASTS = {"to", "_to_copy", "type_as"}


def _elementwise_fn(node: fx.Node, is_add: bool, is_pow: bool, is_mul: bool) -> dict:
    """The ``fn`` attribute of an elementwise node the rules read: ``add`` (residual adds; not
    with an ``alpha``), ``square`` (``x ** 2``, ``x * x``: RMSNorm's mean of squares)."""
    if is_add:
        return {"fn": "add"} if "alpha" not in node.kwargs else {}
    args = node.args
    if (is_pow and len(args) == 2 and not isinstance(args[1], bool) and args[1] == 2) or (
            is_mul and len(args) == 2 and isinstance(args[0], fx.Node) and args[0] is args[1]):
        return {"fn": "square"}
    return {}


def _module_pad_fill(m: nn.Module) -> tuple:
    """(mode, value) of a padding module, in F.pad's terms."""
    name = type(m).__name__
    if name.startswith("Reflection"):
        return "reflect", None
    if name.startswith("Replication"):
        return "replicate", None
    return "constant", getattr(m, "value", 0.0)


def _aten_pad_fill(node: fx.Node, name: str) -> tuple:
    """(mode, value) of an ATen padding op."""
    if name.startswith(("reflection", "replication")):
        return name.split("_")[0].replace("reflection", "reflect").replace("replication", "replicate"), None
    if name == "constant_pad_nd":
        return "constant", _arg(node, 2, "value", 0.0)
    return _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", None)


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


class _Builder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.g = Graph(backend="fx")
        self.alias: dict[str, str] = {}  # fx node name -> IR tensor name
        self.modules = dict(gm.named_modules())
        self.trainable = {n for n, _ in gm.named_parameters(remove_duplicate=False)}

    # -- tensors ---------------------------------------------------------------------------
    def param(self, qualname: str) -> str | None:
        if qualname in self.g.tensors:
            return qualname
        value = _fetch(self.gm, qualname)
        if not isinstance(value, torch.Tensor):
            return None
        self.g.add_tensor(Tensor(
            qualname, tuple(value.shape), str(value.dtype).replace("torch.", ""), PARAM,
            load=lambda q=qualname: _fetch(self.gm, q).detach().cpu().float().numpy()
            if _fetch(self.gm, q).dtype.is_floating_point else _fetch(self.gm, q).cpu().numpy(),
            trainable=qualname in self.trainable))
        return qualname

    def module_param(self, target: str, attr: str) -> str | None:
        mod = self.modules[target]
        if getattr(mod, attr, None) is None:
            return None
        return self.param(f"{target}.{attr}" if target else attr)

    def ref(self, a: Any) -> str | None:
        if isinstance(a, fx.Node):
            return self.alias.get(a.name, a.name)
        return None

    def declare_outputs(self, node: fx.Node) -> list[str]:
        meta = node.meta.get("tensor_meta")
        if isinstance(meta, TensorMetadata):
            self.g.add_tensor(Tensor(node.name, tuple(int(d) for d in meta.shape),
                                     str(meta.dtype).replace("torch.", ""), ACTIVATION,
                                     symbolic=_symbolic_axes(node.meta.get("val"))))
            return [node.name]
        if isinstance(meta, (tuple, list)) and meta and all(isinstance(m, TensorMetadata) for m in meta):
            names = []
            for i, m in enumerate(meta):
                name = f"{node.name}.{i}"
                self.g.add_tensor(Tensor(name, tuple(int(d) for d in m.shape),
                                         str(m.dtype).replace("torch.", ""), ACTIVATION))
                names.append(name)
            return names
        self.g.add_tensor(Tensor(node.name, None, "", META))
        return [node.name]

    def add(self, node: fx.Node, op: str, inputs: list[str | None], attrs: dict | None = None,
            outputs: list[str] | None = None) -> None:
        outs = outputs if outputs is not None else self.declare_outputs(node)
        if op != "meta" and any(self.g.tensors[o].kind == META for o in outs):
            op = "meta"
        src = node.op + ":" + (type(self.modules[node.target]).__name__ if node.op == "call_module"
                               else getattr(node.target, "__name__", str(node.target)))
        self.g.add_node(Node(node.name, op, inputs, outs, attrs or {}, src, handle=node))

    def tensor_inputs(self, node: fx.Node) -> list[str]:
        out = []
        for a in list(node.args) + list(node.kwargs.values()):
            items = a if isinstance(a, (list, tuple)) else [a]
            for b in items:
                r = self.ref(b)
                if r is not None:
                    out.append(r)
        return out

    # -- nodes -----------------------------------------------------------------------------
    def build(self) -> Graph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.declare_outputs(node)
                if self.g.tensors[node.name].kind != META:
                    self.g.inputs.append(node.name)
                elif not node.args:  # a default fixed at trace time (see _unfed_defaults) is not fed
                    raise InputError(f"model input {node.name!r} is not a tensor")
            elif node.op == "get_attr":
                name = self.param(node.target)
                if name is None:
                    self.add(node, "meta", [])
                else:
                    self.alias[node.name] = name
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op == "call_function":
                self.call_function(node)
            elif node.op == "call_method":
                self.call_method(node)
            elif node.op == "output":
                outs = node.args[0]
                flat = list(outs.values()) if isinstance(outs, dict) else (
                    list(outs) if isinstance(outs, (list, tuple)) else [outs])
                for o in flat:
                    r = self.ref(o)
                    if r is None or self.g.tensors[r].kind == META:
                        raise InputError("model outputs must be tensors (or a tuple/dict of tensors)")
                    self.g.outputs.append(r)
        return self.g

    def call_module(self, node: fx.Node) -> None:
        m = self.modules[node.target]
        x = self.ref(node.args[0]) if node.args else None
        t = node.target
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            self.add(node, "conv", [x, self.module_param(t, "weight"), self.module_param(t, "bias")],
                     {"groups": m.groups, **_geometry(m.stride, m.padding, m.dilation,
                                                      m.padding_mode == "zeros")})
        elif isinstance(m, nn.Linear):
            self.add(node, "linear", [x, self.module_param(t, "weight"), self.module_param(t, "bias")],
                     {"layout": "oi"})
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = [self.module_param(t, a) for a in ("weight", "bias", "running_mean", "running_var")]
            self.add(node, "batchnorm", [x, *ps], {"eps": m.eps})
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm):
            ps = [self.module_param(t, a) for a in ("weight", "bias", "running_mean", "running_var")]
            self.add(node, "instancenorm", [x, *ps])
        elif isinstance(m, nn.GroupNorm):
            self.add(node, "groupnorm", [x, self.module_param(t, "weight"), self.module_param(t, "bias")],
                     {"groups": m.num_groups})
        elif isinstance(m, nn.LayerNorm):
            self.add(node, "layernorm", [x, self.module_param(t, "weight"), self.module_param(t, "bias")],
                     {"axis": -len(m.normalized_shape)})
        elif isinstance(m, _RMSNorm):
            self.add(node, "layernorm", [x, self.module_param(t, "weight"), None],
                     self._rms_attrs(x, m.normalized_shape, m.eps))
        elif isinstance(m, nn.Embedding) and m.max_norm is None:  # a lookup: table rows by index
            self.add(node, "gather", [self.module_param(t, "weight"), x], {"axis": 0})
        elif isinstance(m, nn.PReLU) and m.num_parameters > 1:  # per-channel slope, like a BN scale
            self.add(node, "batchnorm", [x, self.module_param(t, "weight")])
        elif isinstance(m, _UNARY_MODULES):
            self.add(node, "unary", [x], dict(IDENTITY) if isinstance(m, _IDENTITY_MODULES) else {})
        elif isinstance(m, _POOL_MODULES):
            self.add(node, "pool", [x])
        elif isinstance(m, _PAD_MODULES):
            self.pad(node, x, m.padding, _module_pad_fill(m))
        elif isinstance(m, nn.Flatten):
            self.add(node, "reshape", [x], {"target": "auto"})
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            self.add(node, "softmax", [x], {"axis": m.dim if m.dim is not None else -1})
        elif isinstance(m, nn.MultiheadAttention):
            self.add(node, "unknown", self.tensor_inputs(node) + [
                p for p in (self.module_param(t, "in_proj_weight"),) if p],
                {"reason": "nn.MultiheadAttention ties embed_dim to its input and output channels"})
        else:
            params = [self.param(f"{t}.{n}") for n, _ in m.named_parameters()]
            self.add(node, "unknown", self.tensor_inputs(node) + [p for p in params if p],
                     {"reason": f"no channel rule for module {type(m).__name__}"})

    def pad(self, node: fx.Node, x: str | None, pad, fill: tuple) -> None:
        """torch's pad list (last axis first, begin then end) as begins then ends per axis;
        ``fill`` is (mode, value) in torch's terms, canonical ``mode``/``value`` attributes
        (the value None where it is read at run time)."""
        shape = self.g.tensors[x].shape if x is not None else None
        if shape is None or not isinstance(pad, (tuple, list)) or len(pad) % 2 or \
                len(pad) > 2 * len(shape) or not all(isinstance(v, int) for v in pad):
            return self.add(node, "unknown", self.tensor_inputs(node),
                            {"reason": "padding of unknown extent"})
        r = len(shape)
        full = [0] * (2 * r)
        for i in range(len(pad) // 2):
            full[r - 1 - i], full[2 * r - 1 - i] = pad[2 * i], pad[2 * i + 1]
        mode, value = fill
        value = 0.0 if value is None and mode == "constant" else value
        return self.add(node, "pad", [x], {
            "pads": full, "mode": {"replicate": "edge"}.get(mode, mode),
            "value": float(value) if isinstance(value, (int, float)) else None,
            "torch_pad_len": len(pad)})

    def call_function(self, node: fx.Node) -> None:
        f = node.target
        if f is operator.getitem:
            return self.getitem(node)
        if isinstance(f, torch._ops.OpOverload):
            return self.aten(node, f.overloadpacket.__name__)
        self._common(node, f, node.args[0] if node.args else None, is_method=False)

    def call_method(self, node: fx.Node) -> None:
        self._common(node, node.target, node.args[0], is_method=True)

    def _common(self, node: fx.Node, f: Any, first: Any, is_method: bool) -> None:
        """A torch-level function or method call (``f``; a method by its name), by op family."""
        x = self.ref(first)
        meta = node.meta.get("tensor_meta")
        if not isinstance(meta, (TensorMetadata, tuple, list)) or (
                isinstance(meta, (tuple, list)) and not meta):
            return self.add(node, "meta", self.tensor_inputs(node))
        name = f if is_method else None
        for family in (self._torch_pointwise, self._torch_layout, self._torch_layer,
                       self._torch_split_expand):
            if family(node, f, name, x, meta, is_method):
                return None
        self.add(node, "unknown", self.tensor_inputs(node))

    def _rms_attrs(self, x: str, normalized_shape, eps) -> dict:
        """A fused RMSNorm's attributes: ``fn: rms`` and its eps (torch's default where None:
        the machine epsilon of the input's dtype), which a width rewrite changes."""
        if eps is None:
            dtype = getattr(torch, self.g.tensors[x].dtype, torch.float32)
            eps = torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps
        return {"axis": -len(normalized_shape), "fn": "rms", "eps": float(eps)}

    def _rms_norm(self, node: fx.Node, x: str) -> bool:
        """``F.rms_norm`` / ``aten.rms_norm(x, normalized_shape, weight, eps)``."""
        return self._added(node, "layernorm", [x, self.ref(_arg(node, 2, "weight")), None],
                           self._rms_attrs(x, _arg(node, 1, "normalized_shape"),
                                           _arg(node, 3, "eps")))

    def _added(self, node: fx.Node, op: str, inputs: list[str | None],
               attrs: dict | None = None) -> bool:
        """:meth:`add`, then True: what an op-family handler returns once it mapped ``node``."""
        self.add(node, op, inputs, attrs)
        return True

    def _torch_pointwise(self, node: fx.Node, f: Any, name: str | None, x: str | None, meta,
                         is_method: bool) -> bool:
        """Elementwise and unary ops, concatenation, pooling and padding (False: not mapped)."""
        if (f in _ELEMENTWISE_FUNCS) or (name in _ELEMENTWISE_METHODS):
            is_add = f in (operator.add, torch.add) or name in ("add", "add_")
            is_pow = f in (operator.pow, torch.pow) or name == "pow"
            return self._added(node, "elementwise", self.tensor_inputs(node),
                               _elementwise_fn(node, is_add, is_pow, f is operator.mul
                                               or f is torch.mul or name == "mul"))
        if f in _UNARY_FUNCS or name in _UNARY_METHODS or _is_stochastic_depth(f):
            attrs = dict(IDENTITY) if _is_stochastic_depth(f) else (
                {"fn": "cast"} if name in _CAST_METHODS else {})
            return self._added(node, "unary", [x], attrs)
        if f in (torch.cat, torch.concat):
            xs = [self.ref(a) for a in _arg(node, 0, "tensors")]
            return self._added(node, "concat", xs, {"axis": _arg(node, 1, "dim", 0)})
        if f in _POOL_FUNCS:
            return self._added(node, "pool", [x])
        if f is F.pad:
            self.pad(node, x, _arg(node, 1, "pad"),
                     (_arg(node, 2, "mode", "constant"), _arg(node, 3, "value", None)))
            return True
        return False

    def _torch_layout(self, node: fx.Node, f: Any, name: str | None, x: str | None, meta,
                      is_method: bool) -> bool:
        """Reshapes, permutations, transposes, reductions and softmax (False: not mapped)."""
        if f is torch.flatten or name in ("flatten", "squeeze", "unsqueeze") or f in (
                torch.squeeze, torch.unsqueeze):
            return self._added(node, "reshape", [x], {"target": "auto"})
        if name in ("reshape_as", "view_as") and is_method:  # the other's shape, at run time
            return self._added(node, "reshape", [x, self.ref(node.args[1])], {"target": "auto"})
        if f is torch.reshape or name in ("view", "reshape"):
            shape_args = node.args[1:] if is_method else node.args[1:]
            if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list)):
                shape_args = shape_args[0]
            target = [a if isinstance(a, int) else None for a in shape_args]
            if len(target) != len(meta.shape):
                return self._added(node, "reshape", [x], {"target": None})
            read = {}  # sizes read from a tensor at run time: they follow its channels
            for i, a in enumerate(shape_args):
                src = _size_source(a)
                if src is not None and self.ref(src[0]) in self.g.tensors:
                    read[i] = (self.ref(src[0]), src[1])
            return self._added(node, "reshape", [x], {"target": target, "sizes_from": read})
        if f is torch.permute or name == "permute":
            perm = node.args[1:] if is_method else node.args[1]
            if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
                perm = perm[0]
            if all(isinstance(p, int) for p in perm):
                r = len(meta.shape)
                return self._added(node, "transpose", [x], {"perm": [p % r for p in perm]})
        if f is torch.transpose or name == "transpose":
            d0, d1 = node.args[1], node.args[2]
            if isinstance(d0, int) and isinstance(d1, int):
                r = len(meta.shape)
                perm = list(range(r))
                perm[d0 % r], perm[d1 % r] = perm[d1 % r], perm[d0 % r]
                return self._added(node, "transpose", [x], {"perm": perm})
        if f in _REDUCE or name in _REDUCE_METHODS:
            dim = _arg(node, 1, "dim")
            keep = bool(_arg(node, 2, "keepdim", False))
            if dim is None or isinstance(dim, int) or all(isinstance(d, int) for d in dim):
                axes = None if dim is None else ([dim] if isinstance(dim, int) else list(dim))
                return self._added(node, "reduce", [x], {"axes": axes, "keepdims": keep,
                                                         "fn": _REDUCE.get(f, name)})
        if f in (F.softmax, torch.softmax, F.log_softmax) or name in ("softmax", "log_softmax"):
            return self._added(node, "softmax", [x], {"axis": _arg(node, 1, "dim", -1)})
        return False

    def _torch_layer(self, node: fx.Node, f: Any, name: str | None, x: str | None, meta,
                     is_method: bool) -> bool:
        """Matrix products, linear and conv layers and normalisations (False: not mapped)."""
        if f in (torch.matmul, operator.matmul, torch.bmm) or name in ("matmul", "bmm"):
            b = self.ref(node.args[1])
            if b is not None and self.g.tensors[b].kind == PARAM and self.g.tensors[b].rank == 2:
                return self._added(node, "linear", [x, b, None], {"layout": "io"})
            return self._added(node, "matmul", [x, b])
        if f is F.linear:
            w, b = self.ref(_arg(node, 1, "weight")), self.ref(_arg(node, 2, "bias"))
            if w is not None and self.g.tensors[w].kind == PARAM:
                return self._added(node, "linear", [x, w, b], {"layout": "oi"})
        if f in (F.conv1d, F.conv2d, F.conv3d):
            w, b = self.ref(_arg(node, 1, "weight")), self.ref(_arg(node, 2, "bias"))
            groups = _arg(node, 6, "groups", 1)
            if w is not None and self.g.tensors[w].kind == PARAM and isinstance(groups, int):
                return self._added(node, "conv", [x, w, b], {"groups": groups, **_geometry(
                    _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0),
                    _arg(node, 5, "dilation", 1))})
        if f is F.batch_norm:
            ps = [self.ref(_arg(node, i, n)) for i, n in
                  ((3, "weight"), (4, "bias"), (1, "running_mean"), (2, "running_var"))]
            return self._added(node, "batchnorm", [x, *ps], {"eps": _arg(node, 7, "eps", 1e-5)})
        if f is F.group_norm:
            ng = _arg(node, 1, "num_groups")
            w, b = self.ref(_arg(node, 2, "weight")), self.ref(_arg(node, 3, "bias"))
            if isinstance(ng, int):
                return self._added(node, "groupnorm", [x, w, b], {"groups": ng})
        if f is F.layer_norm:
            w, b = self.ref(_arg(node, 2, "weight")), self.ref(_arg(node, 3, "bias"))
            ns = _arg(node, 1, "normalized_shape")
            return self._added(node, "layernorm", [x, w, b], {"axis": -len(ns)})
        if f is getattr(F, "rms_norm", None):
            return self._rms_norm(node, x)
        return False

    def _torch_split_expand(self, node: fx.Node, f: Any, name: str | None, x: str | None, meta,
                            is_method: bool) -> bool:
        """Chunks, splits and unbinds, attention and expansion (False: not mapped)."""
        if f in (torch.chunk, torch.split) or name in ("chunk", "split"):
            dim = _arg(node, 2, "dim", 0)
            if isinstance(meta, (tuple, list)) and isinstance(dim, int):
                return self._added(node, "split", [x], {"axis": dim % len(meta[0].shape)})
        if f is torch.unbind or name == "unbind":
            dim = _arg(node, 1, "dim", 0)
            if isinstance(meta, (tuple, list)) and meta and isinstance(dim, int):
                return self._added(node, "unbind", [x], {"axis": dim % (len(meta[0].shape) + 1)})
        if f is F.scaled_dot_product_attention:
            self.attention(node)
            return True
        if name in ("expand", "expand_as"):
            sizes = node.args[1:] if name == "expand" else ()
            if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
                sizes = sizes[0]
            target = [a if isinstance(a, int) else None for a in sizes] or None
            like = [self.ref(node.args[1])] if name == "expand_as" else []
            return self._added(node, "expand", [x] + like, {"target": target})
        return False

    def aten(self, node: fx.Node, name: str) -> None:
        """ATen-level graphs (from ``torch.export``, used when symbolic tracing fails), by op
        family (``name``: the op's overload packet)."""
        meta = node.meta.get("tensor_meta")
        x = self.ref(node.args[0]) if node.args else None
        if not isinstance(meta, (TensorMetadata, tuple, list)) or (
                isinstance(meta, (tuple, list)) and not meta):
            return self.add(node, "meta", self.tensor_inputs(node))
        for family in (self._aten_pointwise, self._aten_layer, self._aten_layout,
                       self._aten_split_index):
            if family(node, name, x, meta):
                return None
        self.add(node, "unknown", self.tensor_inputs(node))

    def _aten_pointwise(self, node: fx.Node, name: str, x: str | None, meta) -> bool:
        """ATen elementwise and unary ops, padding and pooling (False: not mapped)."""
        if name in _ATEN_ELEMENTWISE:
            return self._added(node, "elementwise", self.tensor_inputs(node), _elementwise_fn(
                node, name in ("add", "add_"), name == "pow", name in ("mul", "mul_")))
        if name in _ATEN_UNARY:
            return self._added(node, "unary", [x], {"fn": "cast"} if name in _ATEN_CASTS else {})
        if name in _ATEN_PADS:
            self.pad(node, x, node.args[1] if len(node.args) > 1 else None, _aten_pad_fill(node, name))
            return True
        if name in ("adaptive_avg_pool2d", "max_pool2d", "avg_pool2d", "mean_dim",
                    "upsample_nearest2d"):
            return self._added(node, "pool", [x])
        return False

    def _aten_layer(self, node: fx.Node, name: str, x: str | None, meta) -> bool:
        """ATen linear and conv layers, normalisations, matrix products and attention (False:
        not mapped)."""
        if name == "linear":
            w, b = self.ref(_arg(node, 1, "weight")), self.ref(_arg(node, 2, "bias"))
            if w is not None and self.g.tensors[w].kind == PARAM:
                return self._added(node, "linear", [x, w, b], {"layout": "oi"})
        if name == "addmm":  # bias + x @ w (GPT-2's Conv1D)
            b, xx, w = (self.ref(a) for a in node.args[:3])
            beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
            if w is not None and self.g.tensors[w].kind == PARAM and beta == 1 and alpha == 1 \
                    and b is not None and self.g.tensors[b].rank == 1:
                return self._added(node, "linear", [xx, w, b], {"layout": "io"})
        if name in ("conv2d", "conv1d", "conv3d", "convolution"):
            w, b = self.ref(node.args[1]), self.ref(_arg(node, 2, "bias"))
            gpos = 8 if name == "convolution" else 6
            groups = _arg(node, gpos, "groups", 1)
            if w is not None and self.g.tensors[w].kind == PARAM and isinstance(groups, int) and (
                    name != "convolution" or not node.args[6]):
                return self._added(node, "conv", [x, w, b], {
                    "groups": groups, "groups_arg": gpos,
                    **_geometry(_arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0),
                                _arg(node, 5, "dilation", 1))})
        if name == "embedding":  # aten.embedding(weight, indices, ...): table rows by index
            w = self.ref(node.args[0])
            if w is not None and self.g.tensors[w].kind == PARAM:
                return self._added(node, "gather", [w, self.ref(node.args[1])], {"axis": 0})
        if name == "layer_norm":
            return self._added(node, "layernorm", [x, self.ref(_arg(node, 2, "weight")),
                                                   self.ref(_arg(node, 3, "bias"))],
                               {"axis": -len(node.args[1])})
        if name == "rms_norm":
            return self._rms_norm(node, x)
        if name == "batch_norm" or name == "_native_batch_norm_legit_no_training":
            eps = node.args[-1] if isinstance(node.args[-1], float) else 1e-5
            return self._added(node, "batchnorm",
                               [x] + [self.ref(node.args[i]) for i in (1, 2, 3, 4)], {"eps": eps})
        if name in ("matmul", "bmm"):
            return self._added(node, "matmul", [x, self.ref(node.args[1])])
        if name == "scaled_dot_product_attention":
            self.attention(node)
            return True
        return False

    def _aten_layout(self, node: fx.Node, name: str, x: str | None, meta) -> bool:
        """ATen reshapes, permutations, transposes, expansion, softmax and reductions (False:
        not mapped)."""
        if name in ("view", "reshape", "_unsafe_view"):
            target = [a if isinstance(a, int) else None for a in node.args[1]]
            return self._added(node, "reshape", [x], {
                "target": target if len(target) == len(meta.shape) else None})
        if name in ("unsqueeze", "squeeze", "flatten"):
            return self._added(node, "reshape", [x], {"target": "auto"})
        if name == "permute":
            r = len(meta.shape)
            return self._added(node, "transpose", [x], {"perm": [p % r for p in node.args[1]]})
        if name == "transpose":
            r = len(meta.shape)
            perm = list(range(r))
            d0, d1 = node.args[1] % r, node.args[2] % r
            perm[d0], perm[d1] = perm[d1], perm[d0]
            return self._added(node, "transpose", [x], {"perm": perm})
        if name == "expand":
            target = [a if isinstance(a, int) else None for a in node.args[1]]
            return self._added(node, "expand", [x], {"target": target})
        if name in ("softmax", "_softmax", "log_softmax"):
            return self._added(node, "softmax", [x], {"axis": node.args[1]})
        if name in ("mean", "sum", "amax"):
            dim = _arg(node, 1, "dim")
            return self._added(node, "reduce", [x], {
                "axes": dim, "keepdims": bool(_arg(node, 2, "keepdim", False)), "fn": name})
        return False

    def _aten_split_index(self, node: fx.Node, name: str, x: str | None, meta) -> bool:
        """ATen concatenation, splits, unbinds, selects and slices (False: not mapped)."""
        if name == "cat":
            return self._added(node, "concat", [self.ref(a) for a in node.args[0]],
                               {"axis": _arg(node, 1, "dim", 0)})
        if name in ("split", "split_with_sizes", "chunk") and isinstance(meta, (tuple, list)):
            dim = _arg(node, 2, "dim", 0)
            return self._added(node, "split", [x], {"axis": dim % len(meta[0].shape), "aten": True})
        if name == "index" and isinstance(node.args[1], (tuple, list)) and self.gather(
                node, x, tuple(slice(None) if e is None else e for e in node.args[1])):
            return True
        if name == "unbind" and isinstance(meta, (tuple, list)) and meta:
            return self._added(node, "unbind", [x], {"axis": _arg(node, 1, "dim", 0) % (
                len(meta[0].shape) + 1)})
        if name == "select":
            r = len(self.g.tensors[x].shape)
            d = node.args[1] % r
            return self._added(node, "index", [x], {"map": [(ax, 0, self.g.tensors[x].shape[ax], 1)
                                                            for ax in range(r) if ax != d]})
        if name == "slice":
            shape = self.g.tensors[x].shape
            d = _arg(node, 1, "dim", 0) % len(shape)
            start, stop, step = (_arg(node, 2, "start", None), _arg(node, 3, "end", None),
                                 _arg(node, 4, "step", 1))
            if all(v is None or isinstance(v, int) for v in (start, stop, step)):
                start, stop, step = slice(start, stop, step).indices(shape[d])
                mp = [(ax, 0, shape[ax], 1) for ax in range(len(shape))]
                mp[d] = (d, start, max(start, stop), step)
                return self._added(node, "index", [x], {"map": mp, "aten_slice": d})
        return False

    def gather(self, node: fx.Node, x: str, spec: tuple) -> bool:
        """``x[spec]`` with one axis indexed by a tensor and the others whole (``table[:, idx]``,
        a per-head bias table) as a gather (False: not of that form)."""
        axis = _gathered_axis(spec, len(self.g.tensors[x].shape))
        if axis is None or self.ref(spec[axis]) not in self.g.tensors:
            return False
        return self._added(node, "gather", [x, self.ref(spec[axis])], {"axis": axis})

    def attention(self, node: fx.Node) -> None:
        """``F.scaled_dot_product_attention`` and its ATen op (same argument order)."""
        q, k, v = (self.ref(a) for a in node.args[:3])
        mask = self.ref(_arg(node, 3, "attn_mask"))
        self.add(node, "attention", [q, k, v, mask], {"scale": _arg(node, 6, "scale")})

    def getitem(self, node: fx.Node) -> None:
        src, idx = node.args
        src_name = self.ref(src)
        if src_name is None:
            return self.add(node, "meta", [])
        if src_name not in self.g.tensors:  # element of a tuple-valued node
            names = self.g.nodes[src_name].outputs if src_name in self.g.nodes else []
            if isinstance(idx, int) and idx < len(names):
                self.alias[node.name] = names[idx]
                return
            return self.add(node, "unknown", [])
        t = self.g.tensors[src_name]
        if t.kind == META:
            return self.add(node, "meta", [src_name])
        spec = idx if isinstance(idx, tuple) else (idx,)
        mp, sp = _index_map(spec, t.shape)
        if self.gather(node, src_name, spec):
            return None
        if mp is None:  # other tensor indices are read too: every axis they touch is frozen
            read = [self.ref(e) for e in _nodes_in(spec)]
            return self.add(node, "unknown", [src_name, *[r for r in read if r is not None]])
        self.add(node, "index", [src_name], {"map": mp, "spec": sp})


_ATEN_ELEMENTWISE = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "where", "__and__",
                     "__or__", "ge", "le", "gt", "lt", "eq", "ne", "rsub", "add_", "sub_", "mul_",
                     "div_"}
_ATEN_UNARY = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
               "dropout", "to", "_to_copy", "clone", "contiguous", "alias", "detach", "neg", "exp",
               "sqrt", "rsqrt", "abs", "clamp", "hardtanh", "leaky_relu", "erf", "type_as",
               "relu6", "mish", "elu", "softplus", "lift_fresh_copy",
               # in-place forms (torch.export keeps nn.Hardswish(inplace=True) as hardswish_)
               "hardswish_", "hardsigmoid_", "silu_", "gelu_", "sigmoid_", "tanh_", "clamp_",
               "hardtanh_", "leaky_relu_", "elu_"}


def _size_source(a: Any) -> tuple[fx.Node, int] | None:
    """(tensor, axis) where ``a`` reads one size of a tensor at run time (``x.shape[k]``,
    ``x.size(k)``, ``x.size()[k]``, ``B, N, C = x.shape``), else None."""
    if not isinstance(a, fx.Node):
        return None
    if a.op == "call_method" and a.target == "size" and len(a.args) == 2 and isinstance(
            a.args[1], int):
        return _axis_of(a.args[0], a.args[1])
    if a.op != "call_function" or a.target is not operator.getitem or not isinstance(
            a.args[1], int):
        return None
    src = a.args[0]
    if isinstance(src, fx.Node) and (
            (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
            or (src.op == "call_method" and src.target == "size" and len(src.args) == 1)):
        return _axis_of(src.args[0], a.args[1])
    return None


def _axis_of(t: Any, k: int) -> tuple[fx.Node, int] | None:
    meta = t.meta.get("tensor_meta") if isinstance(t, fx.Node) else None
    if not isinstance(meta, TensorMetadata) or not -len(meta.shape) <= k < len(meta.shape):
        return None
    return t, k % len(meta.shape)


def _is_stochastic_depth(f: Any) -> bool:
    """torchvision.ops.stochastic_depth: identity in eval mode, a per-sample mask in training."""
    return getattr(f, "__name__", "") == "stochastic_depth" and getattr(
        f, "__module__", "").startswith("torchvision.ops")


def _nodes_in(value) -> list[fx.Node]:
    """The fx nodes inside a (nested) index spec."""
    if isinstance(value, fx.Node):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _nodes_in(v)]
    return []


def _index_map(spec: tuple, shape: tuple):
    """Per output axis (in_axis, start, stop, step) or None; plus a spec to rebuild the index."""
    n_real = sum(1 for e in spec if e is not None and e is not Ellipsis)
    if sum(1 for e in spec if e is Ellipsis) > 1 or n_real > len(shape):
        return None, None
    full = []
    for e in spec:
        if e is Ellipsis:
            full.extend([slice(None)] * (len(shape) - n_real))
        else:
            full.append(e)
    full.extend([slice(None)] * (len(shape) - sum(1 for e in full if e is not None)))
    mp, sp, ax = [], [], 0
    for e in full:
        if e is None:
            mp.append(None)
            sp.append(("none",))
        elif isinstance(e, int):
            sp.append(("int", e))
            ax += 1
        elif isinstance(e, slice) and all(v is None or isinstance(v, int) for v in (e.start, e.stop, e.step)):
            start, stop, step = e.indices(shape[ax])
            mp.append((ax, start, max(stop, start), step))
            sp.append(("slice", len(mp) - 1))
            ax += 1
        else:
            return None, None
    return mp, sp


def _gathered_axis(spec: tuple, rank: int) -> int | None:
    """The axis of ``x[spec]`` indexed by one tensor where every other entry is a whole axis
    (``x[idx]``, ``x[:, idx]``), else None."""
    nodes = [i for i, e in enumerate(spec) if isinstance(e, fx.Node)]
    if len(nodes) != 1 or len(spec) > rank or not all(
            i in nodes or e == slice(None) for i, e in enumerate(spec)):
        return None
    return nodes[0]


def _fetch(gm: nn.Module, qualname: str) -> Any:
    obj: Any = gm
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _geometry(stride, padding, dilation, zero_padding: bool = True) -> dict:
    """Canonical conv geometry (``stride``, ``pads`` as begins then ends, ``dilation``), or
    nothing when it is not plain numbers (``padding="same"``, reflect padding)."""
    if not zero_padding or isinstance(padding, str):
        return {}
    vals = [stride, padding, dilation]
    if not all(isinstance(v, int) or (isinstance(v, (tuple, list)) and all(isinstance(i, int) for i in v))
               for v in vals):
        return {}
    stride, padding, dilation = ([v] if isinstance(v, int) else list(v) for v in vals)
    return {"stride": stride, "pads": padding + padding, "dilation": dilation}


def impure(node: fx.Node) -> bool:
    """Like fx's own test, except that seeded-random ops in inference form are pure — a dropout
    with ``train=False`` or an attention with ``dropout_p=0``, as ``torch.export`` records them —
    and so is a metadata check (``torch.export``'s ``_assert_tensor_metadata`` after a ``.to``)
    on a tensor nothing else reads: so a dead branch ending in one is still removed (a bypassed
    decoder layer ends in such a check; kept, it ran the whole layer for nothing)."""
    if node.target is torch.ops.aten._assert_tensor_metadata.default:
        x = node.args[0] if node.args else None
        return not isinstance(x, fx.Node) or any(u.target is not node.target for u in x.users)
    if node.target is torch.ops.aten.dropout.default and not (node.args[2:3] or [True])[0]:
        return False
    if node.target is torch.ops.aten.scaled_dot_product_attention.default and not (
            node.args[4:5] or [node.kwargs.get("dropout_p", 0.0)])[0]:
        return False
    return node.is_impure()


def _export(module: nn.Module, args: tuple) -> fx.GraphModule:
    """``torch.export`` with every input axis dynamic where the module allows it (the batch and
    a token sequence; torch specialises the rest), else the batch axis alone, else the example's
    static shapes: the compressed module accepts the sizes the original did."""
    auto = torch.export.Dim.AUTO
    # a batch of 1 would be specialised (0/1 rule): export on the example repeated twice
    wide = tuple(torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == 1
                 else a for a in args)
    batch = tuple({0: auto} if isinstance(a, torch.Tensor) and a.ndim else None for a in args)
    every = tuple({ax: auto for ax in range(a.ndim)} if _dynamic_ok(a) else d
                  for a, d in zip(args, batch))
    tries = [(wide, every)] * (every != batch) + [(wide, batch), (args, None)]
    for i, (xs, dyn) in enumerate(tries):
        try:
            # a failing export prints the whole graph it traced to stderr (a detector: 180 kB)
            with contextlib.redirect_stderr(io.StringIO()):
                gm = torch.export.export(module, xs, dynamic_shapes=dyn, strict=False).module()
            break
        except Exception:  # noqa: BLE001 - the next, more static try
            if i == len(tries) - 1:
                raise
    gm.graph.eliminate_dead_code(is_impure_node=impure)  # e.g. a pooler whose output is unused
    gm.recompile()
    return gm


def _symbolic_axes(val) -> tuple[int, ...]:
    """The axes of an exported node's value (``meta["val"]``) whose size is symbolic."""
    shape = getattr(val, "shape", None)
    if shape is None:
        return ()
    return tuple(i for i, d in enumerate(shape) if not isinstance(d, int))


def _dynamic_ok(a) -> bool:
    """Integer inputs (token ids, masks) of rank ≤ 2 get every axis dynamic: (batch, sequence).
    Float inputs keep their non-batch sizes (an image's size sets its layers' shapes)."""
    return isinstance(a, torch.Tensor) and 0 < a.ndim <= 2 and not a.is_floating_point() and all(
        d > 1 for d in a.shape[1:])


def _unfed_defaults(module: nn.Module, n_fed: int) -> dict[str, Any]:
    """Forward parameters after the ``n_fed`` example inputs that have defaults (timm's
    ``attn_mask=None``): traced at their default, as the example run uses them, instead of as
    proxies that take every ``if mask is not None`` branch."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return {}
    named = [p for p in sig.parameters.values() if p.kind in (
        p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {p.name: p.default for p in named[n_fed:] if p.default is not p.empty}


def trace(module: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    try:
        gm = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(
            module, concrete_args=_unfed_defaults(module, len(example_inputs)) or None)
    except Exception as e:  # noqa: BLE001 - tracing errors come in every type
        # Models with data-dependent Python (transformers) do not trace symbolically; torch.export
        # gives an ATen-level fx graph of the same module instead.
        try:
            gm = _export(module, tuple(example_inputs))
        except Exception as e2:  # noqa: BLE001
            raise UntraceableError(f"cannot trace the module with torch.fx ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}) nor torch.export "
                             f"({type(e2).__name__})") from e2
    with torch.no_grad():
        try:
            ShapeProp(gm).propagate(*example_inputs)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"the module does not run on the example inputs: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return gm


def to_ir(gm: fx.GraphModule) -> Graph:
    """Build the IR of a shape-propagated GraphModule (see :func:`trace`)."""
    return _Builder(gm).build()

