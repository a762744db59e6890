"""Build a torch ``nn.Module`` from a :class:`fuzz_models.Spec`.

``forward`` interprets the spec with plain torch calls, so ``torch.fx.symbolic_trace`` unrolls it
into a flat graph and the ONNX exporters see ordinary ops. Weights are seeded from the spec;
norm statistics and affine parameters are randomised so no layer is an identity.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fuzz_spec import Spec

_ACT_FN = {"relu": F.relu, "gelu": F.gelu, "sigmoid": torch.sigmoid, "silu": F.silu,
           "tanh": torch.tanh, "hardswish": F.hardswish, "leaky_relu": F.leaky_relu}
_ACT_MOD = {"relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
            "tanh": nn.Tanh, "hardswish": nn.Hardswish, "leaky_relu": nn.LeakyReLU}
_POOL_FN = {"max": lambda x, k: F.max_pool2d(x, k), "avg": lambda x, k: F.avg_pool2d(x, k),
            "resize": lambda x, k: F.interpolate(x, scale_factor=k, mode="nearest"),
            "adaptive_avg": F.adaptive_avg_pool2d, "adaptive_max": F.adaptive_max_pool2d}
_POOL_MOD = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "adaptive_avg": nn.AdaptiveAvgPool2d,
             "adaptive_max": nn.AdaptiveMaxPool2d}


def _randomise(m: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(m, name, None)
            if isinstance(p, torch.Tensor) and p is not None:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if name == "weight" else 0))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def _make(op, spec: Spec, gen: torch.Generator):
    """(module or None, parameter or None) for ``op``."""
    p = op.p
    if op.kind == "conv":
        return nn.Conv2d(p["cin"], p["out"], p["k"], p["stride"], p["k"] // 2, groups=p["groups"],
                         bias=p["bias"]), None
    if op.kind == "bn":
        cls = nn.BatchNorm2d if len(spec.shapes[op.ins[0]]) == 4 else nn.BatchNorm1d
        m = cls(p["c"])
    elif op.kind == "groupnorm":  # eps 1e-3: normalising a near-constant channel (random
        m = nn.GroupNorm(p["groups"], p["c"], eps=1e-3)  # nets make them) amplifies rounding
    elif op.kind == "layernorm":  # by 1/sqrt(eps); the invariants compare at 1e-4
        m = nn.LayerNorm(p["n"], eps=1e-3)
    elif op.kind == "linear":
        if p["form"] == "module":
            return nn.Linear(p["cin"], p["out"], bias=p["bias"]), None
        lin = nn.Linear(p["cin"], p["out"], bias=p["bias"])  # same init, stored as parameters
        mod = nn.Module()
        mod.w = nn.Parameter(lin.weight.detach().t().contiguous() if p["form"] == "matmul"
                             else lin.weight.detach().clone())
        mod.b = nn.Parameter(lin.bias.detach().clone()) if p["bias"] else None
        return mod, None
    elif op.kind == "act" and p["module"]:
        return _ACT_MOD[p["fn"]](), None
    elif op.kind == "pool" and p["module"]:
        return _POOL_MOD[p["fn"]](p["k"]), None
    elif op.kind == "flatten" and p["form"] == "module":
        return nn.Flatten(p["start"]), None
    elif op.kind == "convt":
        m = nn.ConvTranspose2d(p["cin"], p["out"], 1)
    elif op.kind == "scale":
        return None, nn.Parameter(torch.randn(p["pshape"], generator=gen) * 0.5 + 1.0)
    else:
        return None, None
    _randomise(m, gen)
    return m, None


class FuzzNet(nn.Module):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        gen = torch.Generator().manual_seed(spec.seed)
        torch.manual_seed(spec.seed)
        self.m = nn.ModuleDict()
        self.p = nn.ParameterDict()
        for i, op in enumerate(spec.ops):
            mod, param = _make(op, spec, gen)
            if mod is not None:
                self.m[f"o{i}"] = mod
            if param is not None:
                self.p[f"o{i}"] = param

    def run(self, xs):
        env = list(xs)
        for i, op in enumerate(self.spec.ops):
            args = [env[j] for j in op.ins]
            out = _APPLY[op.kind](self, f"o{i}", op.p, *args)
            env.extend(out if op.kind == "split" else [out])
        outs = tuple(env[j] for j in self.spec.outputs)
        return outs[0] if len(outs) == 1 else outs


class FuzzNet1(FuzzNet):
    def forward(self, x0):
        return self.run([x0])


class FuzzNet2(FuzzNet):
    def forward(self, x0, x1):
        return self.run([x0, x1])


def _linear(self, k, p, x):
    if p["form"] == "module":
        return self.m[k](x)
    mod = self.m[k]
    y = x @ mod.w if p["form"] == "matmul" else F.linear(x, mod.w)
    return y + mod.b if p["bias"] else y


def _split(self, k, p, x):
    if p["form"] == "chunk":
        parts = x.chunk(len(p["sizes"]), p["dim"])
    else:
        parts = torch.split(x, p["sizes"], p["dim"])
    return [parts[j] for j in range(len(p["sizes"]))]


def _slice(self, k, p, x):
    idx = (slice(None),) * p["dim"] + (slice(p["start"], p["stop"], p.get("step", 1)),)
    return x[idx]


def _shared(self, k, p, x):
    of = f"o{p['of']}"
    if p["kind"] == "conv":
        return self.m[of](x)
    return _linear(self, of, self.spec.ops[p["of"]].p, x)


def _flatten(self, k, p, x):
    if p["form"] == "module":
        return self.m[k](x)
    if p["form"] == "view":
        return x.contiguous().view(p["n"], -1)
    if p["form"] == "view_size":
        return x.contiguous().view(x.size(0), -1)
    return torch.flatten(x, p["start"]) if p["form"] == "torch" else x.flatten(p["start"])


_APPLY = {
    "conv": lambda self, k, p, x: self.m[k](x),
    "bn": lambda self, k, p, x: self.m[k](x),
    "groupnorm": lambda self, k, p, x: self.m[k](x),
    "layernorm": lambda self, k, p, x: self.m[k](x),
    "act": lambda self, k, p, x: self.m[k](x) if p["module"] else _ACT_FN[p["fn"]](x),
    "add": lambda self, k, p, a, b: a + b if p["form"] == "op" else torch.add(a, b),
    "mul": lambda self, k, p, a, b: a * b if p.get("form", "op") == "op" else torch.mul(a, b),
    "binop": lambda self, k, p, a, b: a - b if p["fn"] == "sub" else torch.maximum(a, b),
    "expand": lambda self, k, p, x: x.expand(*p["shape"]),
    "expand_as": lambda self, k, p, x, like: x.expand_as(like),
    "scale": lambda self, k, p, x: x + self.p[k] if p["fn"] == "add" else x * self.p[k],
    "cat": lambda self, k, p, *xs: torch.cat(list(xs), p["dim"]),
    "split": _split,
    "reshape": lambda self, k, p, x: x.contiguous().view(*p.get("arg", p["shape"]))
    if p["method"] == "view"
    else x.reshape(p.get("arg", p["shape"])),
    "convt": lambda self, k, p, x: self.m[k](x),
    "shared": _shared,
    "select": lambda self, k, p, x: x[:, p["index"]],
    "permute": lambda self, k, p, x: x.permute(*p["perm"]),
    "transpose": lambda self, k, p, x: x.transpose(p["d0"], p["d1"]),
    "slice": _slice,
    "pool": lambda self, k, p, x: self.m[k](x) if p["module"] else _POOL_FN[p["fn"]](x, p["k"]),
    "mean": lambda self, k, p, x: x.mean(p["dims"], keepdim=p["keep"]),
    "flatten": _flatten,
    "linear": _linear,
    "cumsum": lambda self, k, p, x: torch.cumsum(x, dim=p["dim"]),
    "matmul": lambda self, k, p, a, b: a @ b,
    "mulc": lambda self, k, p, x: x * p["c"],
    "softmax": lambda self, k, p, x: x.softmax(-1),
}


def build(spec: Spec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The module (eval mode) and seeded example inputs."""
    cls = FuzzNet1 if len(spec.inputs) == 1 else FuzzNet2
    model = cls(spec).eval()
    gen = torch.Generator().manual_seed(spec.seed + 1)
    args = tuple(torch.randn(s, generator=gen) for s in spec.inputs)
    return model, args
