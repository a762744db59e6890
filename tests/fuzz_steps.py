"""Steps of the fuzz model generator: each draws its parameters and records one primitive op
or a macro of several (residual block, squeeze-excitation, channel shuffle, attention, …)."""

from __future__ import annotations

import math

from hypothesis import strategies as st

from fuzz_spec import MAX_C, MAX_FLAT, _Gen


def _channels(g: _Gen, lo=2) -> int:
    return g.ints(lo, 8)


# ---------------------------------------------------------------------------------------------
# steps: each draws parameters and records one primitive or a macro of several
# ---------------------------------------------------------------------------------------------

def step_conv(g: _Gen) -> None:
    x = g.pick(lambda s: len(s) == 4)
    c = g.shapes[x][1]
    k = g.choice([1, 3])
    stride = g.choice([1, 2]) if min(g.shapes[x][2:]) >= 4 else 1
    mode = g.choice(["plain", "depthwise", "grouped"])
    divs = [d for d in range(2, c + 1) if c % d == 0]
    if mode == "depthwise":
        out, groups = c * g.choice([1, 2]), c
    elif mode == "grouped" and divs:
        groups = g.choice(divs)
        out = groups * g.ints(1, max(1, MAX_C // groups))
    else:
        out, groups = _channels(g), 1
    g.conv(x, out, k, stride, groups, bias=g.flag())


def step_bn(g: _Gen) -> None:
    x = g.pick(lambda s: len(s) in (2, 4))
    g.one("bn", [x], dict(c=g.shapes[x][1]), g.shapes[x])


def step_act(g: _Gen) -> None:
    g.act(g.pick(lambda s: True))


def step_res_block(g: _Gen) -> None:
    """y = x + F(x) with F of 1-3 shape-preserving layers (a bypassable block)."""
    g.tags.add("res_block")
    x = g.pick(lambda s: len(s) == 4)
    if x < g.n_inputs:  # a block needs a split point inside the model: add a stem conv
        x = g.conv(x, _channels(g), g.choice([1, 3]))
    c = g.shapes[x][1]
    y = x
    for _ in range(g.ints(1, 3)):
        kind = g.choice(["conv", "conv_dw", "bn", "act"])
        if kind == "conv":
            y = g.conv(y, c, g.choice([1, 3]), bias=g.flag())
        elif kind == "conv_dw":
            y = g.conv(y, c, 3, groups=c, bias=g.flag())
        elif kind == "bn":
            y = g.one("bn", [y], dict(c=c), g.shapes[y])
        else:
            y = g.act(y)
    if not any(o.kind == "conv" for o in g.ops[-3:]) or y == x:  # a block holds a layer
        y = g.conv(y, c, 1)
    ins = [x, y] if g.flag() else [y, x]
    g.one("add", ins, dict(form=g.choice(["op", "torch"])), g.shapes[x])


def step_se(g: _Gen) -> None:
    """Squeeze-excitation: the gate's channels follow the gated tensor."""
    g.tags.add("se")
    x = g.pick(lambda s: len(s) == 4)
    n, c = g.shapes[x][:2]
    s = g.one("mean", [x], dict(dims=(2, 3), keep=True), (n, c, 1, 1))
    s = g.conv(s, g.ints(1, 4), 1)
    s = g.act(s, "relu")
    s = g.conv(s, c, 1)
    s = g.act(s, g.choice(["sigmoid", "hardswish"]))
    how = g.ints(0, 2)  # broadcast in the mul, expand to stored sizes, expand_as a tensor
    if how == 1:
        s = g.one("expand", [s], dict(shape=g.shapes[x]), g.shapes[x])
    elif how == 2:
        like = g.partner(-1, lambda t: t == g.shapes[x])
        s = g.one("expand_as", [s, like], {}, g.shapes[x])
    g.one("mul", [x, s] if g.flag() else [s, x], {}, g.shapes[x])


def step_binary(g: _Gen) -> None:
    """add/mul of two existing tensors of the same shape, or with a broadcast (1, C, 1, 1)."""
    x = g.pick(lambda s: True)
    s = g.shapes[x]
    kind = g.choice(["add", "mul", "sub", "maximum"])
    y = g.partner(x, lambda t: t == s or (len(s) == 4 and t == (s[0], s[1], 1, 1)))
    if y is None:
        return step_scale(g, x)
    g.tags.add("binary")
    ins = [x, y] if g.flag() else [y, x]
    if kind in ("add", "mul"):
        g.one(kind, ins, dict(form=g.choice(["op", "torch"])), s)
    else:
        g.one("binop", ins, dict(fn=kind), s)


def step_scale(g: _Gen, x=None) -> None:
    """x * p or x + p with a stored parameter broadcast along the channel axis (layer scale)."""
    x = g.pick(lambda s: True) if x is None else x
    s = g.shapes[x]
    if len(s) == 4:
        pshape = g.choice([(1, s[1], 1, 1), (s[1], 1, 1)])
    else:
        pshape = g.choice([(s[-1],), (1,) * (len(s) - 1) + (s[-1],)])
    g.one("scale", [x], dict(fn=g.choice(["add", "mul"]), pshape=pshape), s)


def step_cat(g: _Gen) -> None:
    x = g.pick(lambda s: True)
    s = g.shapes[x]
    axis = g.choice({4: [1, 1, 2], 3: [2, 2, 1], 2: [1]}[len(s)])
    rest = [i for i in range(len(g.shapes)) if i != x and len(g.shapes[i]) == len(s)
            and all(a == b for j, (a, b) in enumerate(zip(g.shapes[i], s)) if j != axis)]
    ins = [x] + (g.draw(st.lists(st.sampled_from(rest), min_size=1, max_size=2)) if rest else [x])
    total = sum(g.shapes[i][axis] for i in ins)
    if total > 2 * MAX_C:
        return step_act(g)
    g.one("cat", ins, dict(dim=axis), s[:axis] + (total,) + s[axis + 1:])


def step_split(g: _Gen) -> None:
    x = g.pick(lambda s: s[1 if len(s) == 4 else -1] >= 2)
    if x is None:
        return step_act(g)
    s = g.shapes[x]
    axis = 1 if len(s) == 4 else len(s) - 1
    c = s[axis]
    if g.flag():
        k = g.choice([d for d in range(2, min(c, 4) + 1) if c % d == 0] or [c])
        sizes = [c // k] * k
        p = dict(dim=axis, sizes=sizes, form="chunk")
    else:
        cuts = sorted(g.draw(st.sets(st.integers(1, c - 1), min_size=1, max_size=min(2, c - 1))))
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [c])]
        p = dict(dim=axis, sizes=sizes, form="split")
    g.op("split", [x], p, [s[:axis] + (n,) + s[axis + 1:] for n in sizes])


def step_shuffle(g: _Gen) -> None:
    """ShuffleNet's channel shuffle with literal sizes: view, transpose, reshape."""
    x = g.pick(lambda s: len(s) == 4 and any(s[1] % d == 0 for d in (2, 3)))
    if x is None:
        return step_conv(g)
    g.tags.add("shuffle")
    n, c, h, w = g.shapes[x]
    grp = g.choice([d for d in (2, 3) if c % d == 0])
    shape = (n, grp, c // grp, h, w)
    y = g.reshape(x, shape)
    minus = g.ints(-1, 4)  # sometimes one size is left to the reshape (-1)
    if minus >= 0:
        g.ops[-1].p["arg"] = tuple(-1 if i == minus else d for i, d in enumerate(shape))
    y = g.one("transpose", [y], dict(d0=1, d1=2), (n, c // grp, grp, h, w))
    g.reshape(y, (n, c, h, w), method="reshape")


def step_slice(g: _Gen) -> None:
    x = g.pick(lambda s: s[1 if len(s) == 4 else -1] >= 2)
    if x is None:
        return step_act(g)
    s = g.shapes[x]
    axis = 1 if len(s) == 4 else len(s) - 1
    a = g.ints(0, s[axis] - 1)
    b = g.ints(a + 1, s[axis])
    step = g.choice([1, 1, 2])
    n = len(range(a, b, step))
    g.one("slice", [x], dict(dim=axis, start=a, stop=b, step=step), s[:axis] + (n,) + s[axis + 1:])


def step_pool(g: _Gen) -> None:
    x = g.pick(lambda s: len(s) == 4)
    n, c, h, w = g.shapes[x]
    kind = g.choice(["max", "avg", "adaptive_avg", "adaptive_max", "resize"])
    if kind == "resize" and max(h, w) <= 4:
        g.one("pool", [x], dict(fn=kind, k=2, module=False), (n, c, 2 * h, 2 * w))
    elif kind in ("max", "avg") and min(h, w) >= 2:
        g.one("pool", [x], dict(fn=kind, k=2, module=g.flag()), (n, c, h // 2, w // 2))
    elif kind == "adaptive_avg" and h % 2 == 0 and w % 2 == 0 and g.flag():
        g.one("pool", [x], dict(fn=kind, k=2, module=g.flag()), (n, c, 2, 2))
    else:
        fn = "adaptive_max" if kind == "adaptive_max" else "adaptive_avg"
        g.one("pool", [x], dict(fn=fn, k=1, module=g.flag()), (n, c, 1, 1))


def step_to_vector(g: _Gen) -> None:
    """Global average pool or flatten: rank 4 -> rank 2 (flatten ties blocks of features)."""
    x = g.pick(lambda s: len(s) == 4)
    n, c, h, w = g.shapes[x]
    if c * h * w <= MAX_FLAT and g.flag():
        g.tags.add("flatten")
        form = g.choice(["torch", "method", "module", "view", "view_size"])
        g.one("flatten", [x], dict(start=1, form=form, n=n), (n, c * h * w))
    else:
        g.one("mean", [x], dict(dims=(2, 3), keep=False), (n, c))


def step_groupnorm(g: _Gen) -> None:
    x = g.pick(lambda s: len(s) == 4 and s[2] * s[3] > 1)  # torch wants > 1 value per group
    if x is None:
        return step_conv(g)
    c = g.shapes[x][1]
    groups = g.choice([d for d in range(1, c + 1) if c % d == 0])
    g.one("groupnorm", [x], dict(groups=groups, c=c), g.shapes[x])


def step_layernorm(g: _Gen) -> None:
    """LayerNorm over the last axis; on NCHW over channels via permutes (ConvNeXt style)."""
    x = g.pick(lambda s: s[1 if len(s) == 4 else -1] >= 2)  # over one value it is a constant
    if x is None:
        return step_act(g)
    s = g.shapes[x]
    if len(s) == 4:
        y = g.permute(x, (0, 2, 3, 1))
        y = g.one("layernorm", [y], dict(n=s[1]), g.shapes[y])
        g.permute(y, (0, 3, 1, 2))
    else:
        g.one("layernorm", [x], dict(n=s[-1]), s)


def step_nhwc_mlp(g: _Gen) -> None:
    """permute to NHWC, linear(s) over channels, permute back (ConvNeXt pointwise MLP)."""
    g.tags.add("nhwc_mlp")
    x = g.pick(lambda s: len(s) == 4)
    y = g.permute(x, (0, 2, 3, 1))
    y = g.linear(y, _channels(g), bias=g.flag())
    if g.flag():
        y = g.act(y)
        y = g.linear(y, _channels(g))
    g.permute(y, (0, 3, 1, 2))


def step_unknown(g: _Gen) -> None:
    """An op without a channel rule (cumsum): everything it touches must be frozen."""
    x = g.pick(lambda s: True)
    s = g.shapes[x]
    if len(s) == 4 and g.flag():  # a layer without a rule: ConvTranspose2d
        out = _channels(g)
        g.one("convt", [x], dict(cin=s[1], out=out), (s[0], out) + s[2:])
    else:
        g.one("cumsum", [x], dict(dim=1 if len(s) == 4 else len(s) - 1), s)


def step_shared(g: _Gen) -> None:
    """Weight sharing: an earlier conv/linear applied again to another tensor."""
    cands = [(i, o) for i, o in enumerate(g.ops) if (o.kind == "conv" and o.p["groups"] == 1)
             or o.kind == "linear"]
    if not cands:
        return step_conv(g) if any(len(s) == 4 for s in g.shapes) else step_linear(g)
    i, o = g.choice(cands)
    fits = (lambda s: len(s) == 4 and s[1] == o.p["cin"] and min(s[2:]) >= o.p["k"]) \
        if o.kind == "conv" else (lambda s: len(s) in (2, 3) and s[-1] == o.p["cin"])
    # another input than the first call's: exporters merge two identical calls into one node
    others = [j for j, t in enumerate(g.shapes) if j != o.ins[0] and fits(t)]
    if not others:
        return step_act(g)
    x = g.pick(fits)
    if x == o.ins[0]:
        x = g.choice(others)
    g.tags.add("shared")
    s = g.shapes[x]
    if o.kind == "conv":
        k, st_, pad = o.p["k"], o.p["stride"], o.p["k"] // 2
        out = (s[0], o.p["out"], (s[2] + 2 * pad - k) // st_ + 1, (s[3] + 2 * pad - k) // st_ + 1)
    else:
        out = s[:-1] + (o.p["out"],)
    g.one("shared", [x], dict(of=i, kind=o.kind), out)


def step_select(g: _Gen) -> None:
    """x[:, i] on tokens (a class token): the token axis is indexed away."""
    x = g.pick(lambda s: len(s) == 3)
    n, L, d = g.shapes[x]
    g.one("select", [x], dict(dim=1, index=g.ints(0, L - 1)), (n, d))


def step_to_tokens(g: _Gen) -> None:
    """(N, C, H, W) -> (N, H*W, C), ViT style: flatten(2).transpose(1, 2)."""
    x = g.pick(lambda s: len(s) == 4 and s[2] * s[3] <= 16)
    if x is None:
        return step_pool(g)
    n, c, h, w = g.shapes[x]
    y = g.one("flatten", [x], dict(start=2, form="method"), (n, c, h * w))
    g.one("transpose", [y], dict(d0=1, d1=2), (n, h * w, c))


def step_linear(g: _Gen) -> None:
    x = g.pick(lambda s: len(s) in (2, 3))
    g.linear(x, _channels(g), bias=g.flag())


def step_mlp_res(g: _Gen) -> None:
    """x + W2 act(W1 [LN] x) on tokens or vectors (a transformer MLP sub-block)."""
    g.tags.add("mlp_res")
    x = g.pick(lambda s: len(s) in (2, 3))
    d = g.shapes[x][-1]
    y = g.one("layernorm", [x], dict(n=d), g.shapes[x]) if d > 1 and g.flag() else x
    y = g.linear(y, _channels(g), bias=g.flag())
    y = g.act(y)
    y = g.linear(y, d, bias=g.flag())
    g.one("add", [x, y], dict(form="op"), g.shapes[x])


def step_glu(g: _Gen) -> None:
    """Gated linear unit: up(x) * act(gate(x)), then down."""
    g.tags.add("glu")
    x = g.pick(lambda s: len(s) in (2, 3))
    h = _channels(g)
    a = g.linear(x, h, bias=g.flag())
    b = g.act(g.linear(x, h, bias=g.flag()))
    y = g.one("mul", [a, b], {}, g.shapes[a])
    g.linear(y, g.shapes[x][-1])


def step_attention(g: _Gen) -> None:
    """Self-attention from primitives: q/k/v linears, head reshapes, matmuls, softmax, proj."""
    g.tags.add("attention")
    x = g.pick(lambda s: len(s) == 3)
    n, L, d = g.shapes[x]
    heads, hd = g.choice([1, 2]), g.choice([2, 3, 4])
    e = heads * hd
    q, k, v = (g.linear(x, e, bias=g.flag(), form="module") for _ in range(3))
    if heads == 1:
        kt = g.one("transpose", [k], dict(d0=1, d1=2), (n, e, L))
        att = g.one("matmul", [q, kt], {}, (n, L, L))
    else:
        qh = g.permute(g.reshape(q, (n, L, heads, hd)), (0, 2, 1, 3))
        kh = g.permute(g.reshape(k, (n, L, heads, hd)), (0, 2, 3, 1))
        v = g.permute(g.reshape(v, (n, L, heads, hd)), (0, 2, 1, 3))
        att = g.one("matmul", [qh, kh], {}, (n, heads, L, L))
    att = g.one("mulc", [att], dict(c=1 / math.sqrt(hd)), g.shapes[att])
    att = g.one("softmax", [att], {}, g.shapes[att])
    o = g.one("matmul", [att, v], {}, g.shapes[att][:-1] + (g.shapes[v][-1],))
    if heads > 1:
        o = g.reshape(g.permute(o, (0, 2, 1, 3)), (n, L, e), method="reshape")
    o = g.linear(o, d, bias=g.flag(), form="module")
    if g.flag():
        g.one("add", [x, o], dict(form="op"), (n, L, d))


def step_token_mix(g: _Gen) -> None:
    """MLP-Mixer token mixing: transpose, linear over tokens, transpose back."""
    x = g.pick(lambda s: len(s) == 3)
    n, L, d = g.shapes[x]
    y = g.one("transpose", [x], dict(d0=1, d1=2), (n, d, L))
    y = g.linear(y, L, bias=g.flag())
    g.one("transpose", [y], dict(d0=1, d1=2), (n, L, d))


def step_token_pool(g: _Gen) -> None:
    x = g.pick(lambda s: len(s) == 3)
    n, L, d = g.shapes[x]
    g.one("mean", [x], dict(dims=(1,), keep=False), (n, d))


STEPS = {  # name -> (ranks it applies to, function, weight); the first is what shrinking prefers
    "conv": ((4,), step_conv, 10), "linear": ((2, 3), step_linear, 8),
    "res_block": ((4,), step_res_block, 3), "mlp_res": ((2, 3), step_mlp_res, 2),
    "bn": ((2, 4), step_bn, 3), "act": ((2, 3, 4), step_act, 3), "se": ((4,), step_se, 1),
    "binary": ((2, 3, 4), step_binary, 2), "scale": ((2, 3, 4), step_scale, 1),
    "cat": ((2, 3, 4), step_cat, 2), "split": ((2, 3, 4), step_split, 2),
    "shuffle": ((4,), step_shuffle, 1), "slice": ((2, 3, 4), step_slice, 1),
    "pool": ((4,), step_pool, 2), "to_vector": ((4,), step_to_vector, 2),
    "groupnorm": ((4,), step_groupnorm, 1), "layernorm": ((2, 3, 4), step_layernorm, 1),
    "nhwc_mlp": ((4,), step_nhwc_mlp, 1), "unknown": ((2, 3, 4), step_unknown, 1),
    "to_tokens": ((4,), step_to_tokens, 1), "glu": ((2, 3), step_glu, 1),
    "attention": ((3,), step_attention, 2), "token_mix": ((3,), step_token_mix, 1),
    "token_pool": ((3,), step_token_pool, 1), "shared": ((2, 3, 4), step_shared, 1),
    "select": ((3,), step_select, 1),
}
