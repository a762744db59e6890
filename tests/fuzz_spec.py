"""The model spec the fuzzer draws: inputs, primitive ops in execution order, outputs.

A :class:`Spec` lists model inputs, then primitive ops in execution order, each reading earlier
tensors by id and producing new ones, then the model outputs; shapes are tracked while drawing,
so every spec is valid by construction. ``fuzz_steps`` draws ops, ``fuzz_models.specs`` whole
specs; ``fuzz_torch.build`` and ``fuzz_onnx.build`` turn a spec into a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

ACTS = ("relu", "gelu", "sigmoid", "silu", "tanh", "hardswish", "leaky_relu")
MAX_C = 12  # channel/feature ceiling for convs, linears and concats
MAX_FLAT = 192  # largest flattened feature count
PRIMITIVES = {"conv", "bn", "act", "add", "mul", "binop", "expand", "expand_as", "scale", "cat",
              "split", "reshape", "permute", "transpose", "slice", "pool", "mean", "flatten",
              "groupnorm", "layernorm", "linear", "cumsum", "matmul", "mulc", "softmax", "convt",
              "shared", "select"}


@dataclass
class Op:
    kind: str
    ins: tuple[int, ...]
    p: dict
    outs: tuple[int, ...] = ()


@dataclass
class Spec:
    inputs: list[tuple[int, ...]]
    ops: list[Op]
    outputs: list[int]
    shapes: list[tuple[int, ...]]  # every tensor id -> shape
    seed: int = 0
    tags: set[str] = field(default_factory=set)  # which macros/steps were drawn (for statistics)

    def __repr__(self) -> str:  # readable in hypothesis' falsifying-example output
        lines = [f"Spec(seed={self.seed}, inputs={self.inputs}, outputs={self.outputs}, ops=["]
        for o in self.ops:
            lines.append(f"  {o.outs} = {o.kind}{o.ins} {o.p}")
        return "\n".join(lines + ["])"])


class _Gen:
    """Drawing state: tensors so far, their consumers, and the ops recorded."""

    def __init__(self, draw, inputs: list[tuple]) -> None:
        self.draw = draw
        self.shapes: list[tuple] = list(inputs)
        self.uses = [0] * len(inputs)
        self.n_inputs = len(inputs)
        self.ops: list[Op] = []
        self.tags: set[str] = set()

    # -- bookkeeping -------------------------------------------------------------------------
    def op(self, kind: str, ins, p: dict, outs: list[tuple]) -> list[int]:
        assert kind in PRIMITIVES, kind
        for i in ins:
            self.uses[i] += 1
        ids = list(range(len(self.shapes), len(self.shapes) + len(outs)))
        self.shapes.extend(tuple(s) for s in outs)
        self.uses.extend([0] * len(outs))
        self.ops.append(Op(kind, tuple(ins), dict(p), tuple(ids)))
        return ids

    def one(self, kind, ins, p, out) -> int:
        return self.op(kind, ins, p, [out])[0]

    def pick(self, pred) -> int | None:
        """A tensor satisfying ``pred``: an unused model input first, else preferably one that
        nothing consumes yet (most recent first, which is what hypothesis shrinks towards)."""
        def ok(s):  # never a reshape's 5-D intermediate
            return 2 <= len(s) <= 4 and pred(s)

        for i in range(self.n_inputs):
            if self.uses[i] == 0 and ok(self.shapes[i]):
                return i
        ids = [i for i in reversed(range(len(self.shapes))) if ok(self.shapes[i])]
        if not ids:
            return None
        fresh = [i for i in ids if self.uses[i] == 0]
        if fresh and self.ints(0, 3) < 3:  # mostly a chain: continue from the newest tensor
            return fresh[0]
        return self.draw(st.sampled_from(fresh + [i for i in ids if i not in fresh]))

    def partner(self, x: int, pred) -> int | None:
        ids = [i for i in reversed(range(len(self.shapes))) if i != x and len(self.shapes[i]) <= 4
               and pred(self.shapes[i])]
        return self.draw(st.sampled_from(ids)) if ids else None

    def ints(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, seq):
        return self.draw(st.sampled_from(list(seq)))

    def flag(self) -> bool:
        return self.draw(st.booleans())

    # -- primitives with shape rules ------------------------------------------------------------
    def conv(self, x, out, k=1, stride=1, groups=1, bias=True) -> int:
        n, c, h, w = self.shapes[x]
        pad = k // 2
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        return self.one("conv", [x], dict(cin=c, out=out, k=k, stride=stride, groups=groups,
                                          bias=bias), (n, out, oh, ow))

    def act(self, x, fn=None, module=None) -> int:
        fn = fn or self.choice(ACTS)
        module = self.flag() if module is None else module
        return self.one("act", [x], dict(fn=fn, module=module), self.shapes[x])

    def linear(self, x, out, bias=True, form=None) -> int:
        s = self.shapes[x]
        form = form or self.choice(["module", "matmul"] if len(s) > 2 else
                                   ["module", "matmul", "gemm_t"])
        return self.one("linear", [x], dict(cin=s[-1], out=out, bias=bias, form=form),
                        s[:-1] + (out,))

    def permute(self, x, perm) -> int:
        s = self.shapes[x]
        return self.one("permute", [x], dict(perm=tuple(perm)), tuple(s[p] for p in perm))

    def reshape(self, x, shape, method=None) -> int:
        method = method or self.choice(["view", "reshape"])
        return self.one("reshape", [x], dict(shape=tuple(shape), method=method), tuple(shape))
