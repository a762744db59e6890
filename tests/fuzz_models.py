"""Random small DAG models for property-based tests: the hypothesis strategy ``specs``.

Macros (residual blocks, squeeze-excitation, channel shuffle, attention, …) are drawn as one step
(``fuzz_steps``) but recorded as their primitive ops (``fuzz_spec``), so every builder only needs
the primitives. Sizes stay tiny (a few channels, 4–8 pixels) so one example takes milliseconds.

Builders: ``fuzz_torch.build`` (an ``nn.Module``, traced by torch.fx or exported to ONNX) and
``fuzz_onnx.build`` (a raw ONNX graph made with ``onnx.helper``).
"""

from __future__ import annotations

from hypothesis import strategies as st

from fuzz_spec import Spec, _Gen
from fuzz_steps import STEPS



def _input_shape(draw, kind: str, n: int) -> tuple:
    if kind == "image":
        return (n, draw(st.integers(1, 4)), draw(st.sampled_from([4, 6, 8])),
                draw(st.sampled_from([4, 6, 8])))
    if kind == "tokens":
        return (n, draw(st.integers(2, 5)), draw(st.integers(2, 8)))
    return (n, draw(st.integers(2, 8)))


@st.composite
def specs(draw, max_steps: int = 8, steps: frozenset[str] | None = None) -> Spec:
    """A random model spec. ``steps`` restricts the step kinds drawn (default: all)."""
    allowed = frozenset(STEPS) if steps is None else frozenset(steps)
    kinds = [draw(st.sampled_from(["image", "image", "image", "tokens", "vector"]))]
    if draw(st.integers(0, 3)) == 0:
        kinds.append(draw(st.sampled_from(["image", "tokens", "vector"])))
    n = draw(st.sampled_from([1, 1, 2]))  # batch size
    g = _Gen(draw, [_input_shape(draw, k, n) for k in kinds])
    n_steps = draw(st.integers(min(4, max_steps), max_steps))
    i = 0
    while i < n_steps or any(u == 0 for u in g.uses[:g.n_inputs]):
        pending = [s for s, u in zip(g.shapes[:g.n_inputs], g.uses) if u == 0]
        ranks = {len(pending[0])} if pending else {len(s) for s in g.shapes if len(s) <= 4}
        names = [n for n in STEPS if n in allowed and set(STEPS[n][0]) & ranks]
        if not names:
            break
        weighted = [n for n in names for _ in range(STEPS[n][2])]
        name = draw(st.sampled_from(weighted))
        g.tags.add(name)
        STEPS[name][1](g)
        i += 1
    # most dead ends get a head layer, so their channels are free inside the model
    for t in [t for t in range(g.n_inputs, len(g.shapes)) if g.uses[t] == 0]:
        if draw(st.integers(0, 3)) < 3:
            if len(g.shapes[t]) == 4:
                g.conv(t, g.ints(1, 4))
            else:
                g.linear(t, g.ints(1, 4), form="module")
    outs = [t for t in range(g.n_inputs, len(g.shapes)) if g.uses[t] == 0]
    extra = [t for t in range(g.n_inputs, len(g.shapes)) if t not in outs]
    if extra and draw(st.integers(0, 4)) == 0:  # an intermediate that is also a model output
        outs.append(draw(st.sampled_from(extra)))
    seed = draw(st.integers(0, 2**16))
    return Spec(list(g.shapes[:g.n_inputs]), g.ops, outs, g.shapes, seed, g.tags)
