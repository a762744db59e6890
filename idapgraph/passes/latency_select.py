"""Joint channel-count and block selection under a latency budget: a MILP solved by HiGHS
(``scipy.optimize.milp``), with a greedy fallback when SciPy's solver is missing.

Variables: ``x[g, j]`` (binary) -- group ``g`` keeps ``options[g][j]`` units, one option per
group; ``z[B]`` (binary) -- gated block ``B`` stays. For a term inside gated blocks, a group's
choice is carried by ``w[j] = x[g, j]·G`` with ``G`` the AND of the gates (``Σ_j w[j] = G``,
``w ≤ x``, ``w ≥ x + G − 1``), so a shut gate zeroes the term. A term over two groups' options is
bilinear in their choices; it is linearised exactly, and tightly, by continuous ``y[i, j]``
whose row and column sums are the two choices (``Σ_j y[i, j] = w_a[i]``, ``Σ_i y[i, j] =
w_b[j]``): at integral choices the only solution is their product. The objective is the summed
importance of the kept units (:func:`idapgraph.passes.latency.importance`) plus, with measured
block weights (``model.block_weight``), ``Σ weight[B]·z[B]``; without them a group that lives
inside gated blocks counts through its ``w`` (nothing while a block that holds it is bypassed).
Either way a bypassed block's own groups stay whole, which also removes symmetric solutions.
With ``model.error_cap`` set, the bypassed blocks' summed errors (``model.block_error``) stay
within it: ``Σ error[B]·(1 − z[B]) ≤ cap``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .latency import LatencyModel


@dataclass
class Solution:
    choice: list[int]  # option index per group
    kept_blocks: list[int]  # indices into model.blocks that stay
    predicted_ms: float
    importance: float
    solver: str  # "highs" or "greedy"
    status: str
    seconds: float
    feasible: bool
    notes: list[str] = field(default_factory=list)


def _objective(imp: list[np.ndarray], model: LatencyModel, choice, kept) -> float:
    """Kept importance: with measured block weights, every group's kept units plus the weight
    of every block that stays; without, a group counts only while its blocks stay."""
    kept = set(kept)
    if model.block_weight is not None:
        return float(sum(v[choice[g]] for g, v in enumerate(imp))
                     + sum(model.block_weight[bi] for bi in kept))
    return float(sum(v[choice[g]] for g, v in enumerate(imp)
                     if kept.issuperset(model.internal.get(g, ()))))


class _Vars:
    def __init__(self) -> None:
        self.n = 0
        self.integral: list[int] = []

    def add(self, k: int, integral: bool) -> np.ndarray:
        idx = np.arange(self.n, self.n + k)
        self.n += k
        self.integral += [1 if integral else 0] * k
        return idx


def _capped(model: LatencyModel) -> bool:
    return model.error_cap is not None and model.block_error is not None


def _fits(model: LatencyModel, summed_error: float) -> bool:
    """Bypassed blocks whose single errors sum to ``summed_error`` keep the error cap."""
    return summed_error <= model.error_cap * (1 + 1e-9)


def _within_cap(model: LatencyModel, kept) -> bool:
    if not _capped(model):
        return True
    kept = set(kept)
    return _fits(model, sum(e for bi, e in enumerate(model.block_error) if bi not in kept))


def fastest(model: LatencyModel) -> float:
    """The predicted latency of the most pruned model the options allow: every group at its
    smallest count and every gated block bypassed -- under an error cap, the blocks that save the
    most time per unit of error while their errors fit (a feasible point, so a budget at least
    this is feasible)."""
    least = [0] * len(model.options)
    if not _capped(model):
        return model.predict(least, [])
    kept = set(range(len(model.blocks)))
    base = model.predict(least, kept)
    gain = {bi: base - model.predict(least, kept - {bi}) for bi in kept}
    used = 0.0
    for bi in sorted(kept, key=lambda b: -gain[b] / max(model.block_error[b], 1e-12)):
        e = model.block_error[bi]
        if gain[bi] > 0 and _fits(model, used + e):
            kept.discard(bi)
            used += e
    return model.predict(least, kept)


def solve(model: LatencyModel, imp: list[np.ndarray], budget_ms: float, *,
          time_limit: float = 60.0, method: str = "milp") -> Solution:
    """The kept-importance-maximising choice whose predicted latency is within ``budget_ms``
    (``method="greedy"``: the fallback heuristic, also used when SciPy has no ``milp``). A
    budget below the fastest reachable model gives the best choice at that speed, marked
    infeasible."""
    floor = fastest(model)
    if budget_ms < floor:
        sol = solve(model, imp, floor * (1 + 1e-9), time_limit=time_limit, method=method)
        sol.feasible = False
        sol.notes.append(f"latency budget {budget_ms:.4g} ms is below the fastest model the "
                         f"frozen channels and the per-group minimum allow ({floor:.4g} ms, "
                         "predicted)")
        return sol
    if not model.blocks and all(len(o) < 2 for o in model.options):
        full = model.full_choice()
        return Solution(full, [], floor, _objective(imp, model, full, []),
                        "highs" if method == "milp" else "greedy", "nothing to choose", 0.0,
                        True, ["nothing to choose: every channel group is frozen or has one "
                               "count, and no block is offered"])
    if method == "milp":
        try:
            from scipy.optimize import milp  # noqa: F401
        except ImportError:
            sol = greedy(model, imp, budget_ms)
            sol.notes.append("scipy.optimize.milp unavailable: greedy fallback")
            return sol
        return _milp(model, imp, budget_ms, time_limit)
    return greedy(model, imp, budget_ms)


def _milp(model: LatencyModel, imp, budget_ms: float, time_limit: float) -> Solution:
    """Build the MILP of the module docstring, solve it with HiGHS and decode its solution."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    t0 = time.perf_counter()
    prog = _Program(model)
    for t in model.terms:
        prog.add_term(model.cost(t), t.a, t.b, t.gates)
    prog.add_objective(model, imp)
    prog.add_limits(model, budget_ms)
    A, lb, ub, cvec = prog.arrays()
    res = milp(cvec, constraints=LinearConstraint(A, lb, ub),
               integrality=np.array(prog.V.integral), bounds=Bounds(0, 1),
               options={"time_limit": time_limit, "mip_rel_gap": 2e-3, "disp": False})
    secs = time.perf_counter() - t0
    if res.x is None:
        full = model.full_choice()
        return Solution(full, list(range(len(model.blocks))), model.predict(full), 0.0, "highs",
                        res.message, secs, False, [f"solver: {res.message}"])
    sol = res.x
    x, z = prog.x, prog.z
    choice = [int(np.argmax(sol[x[g]])) if x[g] is not None else 0 for g in range(len(x))]
    kept = [bi for bi in range(len(model.blocks)) if sol[z[bi]] > 0.5]
    pred = model.predict(choice, kept)
    return Solution(choice, kept, pred, _objective(imp, model, choice, kept), "highs",
                    res.message, secs, pred <= budget_ms * (1 + 1e-6))


def _add(into: dict[int, float], var: int, c: float) -> None:
    """Add ``c`` to the coefficient of variable ``var`` in ``into``."""
    into[var] = into.get(var, 0.0) + c


class _Program:
    """The MILP under construction: variables (``x`` per group with a choice, ``z`` per gated
    block), constraint rows (coefficients, lower, upper), the latency row's coefficients and
    constant, and the objective's coefficients (maximised)."""

    def __init__(self, model: LatencyModel) -> None:
        self.V = _Vars()
        self.x = [self.V.add(len(o), True) if len(o) > 1 else None for o in model.options]
        self.z = self.V.add(len(model.blocks), True)
        self.rows: list[tuple[dict[int, float], float, float]] = []
        self.lat: dict[int, float] = {}
        self.obj: dict[int, float] = {}
        self.const = 0.0
        self.gate_var: dict[tuple, int] = {}
        self.gated_choice: dict[tuple, np.ndarray] = {}
        for xg in self.x:  # one option per group
            if xg is not None:
                self.rows.append(({int(v): 1.0 for v in xg}, 1.0, 1.0))

    def gate(self, gates: tuple) -> int:
        """A variable equal to 1 exactly when every block of ``gates`` stays."""
        z, rows = self.z, self.rows
        if len(gates) == 1:
            return int(z[gates[0]])
        if gates not in self.gate_var:
            v = int(self.V.add(1, False)[0])
            for bi in gates:
                rows.append(({v: 1.0, int(z[bi]): -1.0}, -np.inf, 0.0))
            rows.append(({v: 1.0, **{int(z[bi]): -1.0 for bi in gates}}, 1.0 - len(gates), np.inf))
            self.gate_var[gates] = v
        return self.gate_var[gates]

    def choice_vars(self, g: int, gates: tuple) -> np.ndarray | None:
        """``w[i] = x[g, i] · (all gates stay)``: the one-hot choice of ``g``, or all zeros when
        a gate is shut. None when ``g`` has a single option and no gates."""
        x, rows = self.x, self.rows
        if not gates:
            return x[g]
        key = (g, gates)
        if key not in self.gated_choice:
            gv = self.gate(gates)
            if x[g] is None:
                self.gated_choice[key] = np.array([gv])
            else:
                w = self.V.add(len(x[g]), False)
                rows.append(({int(v): 1.0 for v in w} | {gv: -1.0}, 0.0, 0.0))
                for wv, xv in zip(w, x[g]):
                    rows.append(({int(wv): 1.0, int(xv): -1.0}, -np.inf, 0.0))
                    rows.append(({int(wv): 1.0, int(xv): -1.0, gv: -1.0}, -1.0, np.inf))
                self.gated_choice[key] = w
        return self.gated_choice[key]

    def add_term(self, cost: np.ndarray, a: int | None, b: int | None, gates: tuple) -> None:
        """Add a latency term (``cost`` over the options of groups ``a`` and ``b``, paid while
        every block of ``gates`` stays) to the latency row; two groups' terms through ``y``."""
        a = a if a is not None and self.x[a] is not None else None
        b = b if b is not None and self.x[b] is not None else None
        if a is None and b is None:
            if gates:
                _add(self.lat, self.gate(gates), float(cost[0, 0]))
            else:
                self.const += float(cost[0, 0])
            return
        if a is None or b is None:
            vec = cost[:, 0] if a is not None else cost[0, :]
            for v, c in zip(self.choice_vars(a if a is not None else b, gates), vec):
                _add(self.lat, int(v), float(c))
            return
        wa, wb = self.choice_vars(a, gates), self.choice_vars(b, gates)
        y = self.V.add(cost.size, False).reshape(cost.shape)
        for i in range(cost.shape[0]):
            self.rows.append(({int(v): 1.0 for v in y[i]} | {int(wa[i]): -1.0}, 0.0, 0.0))
        for j in range(cost.shape[1]):
            self.rows.append(({int(v): 1.0 for v in y[:, j]} | {int(wb[j]): -1.0}, 0.0, 0.0))
        for (i, j), c in np.ndenumerate(cost):
            _add(self.lat, int(y[i, j]), float(c))

    def add_objective(self, model: LatencyModel, imp) -> None:
        """The kept importance (:func:`_objective`), and whole groups inside bypassed blocks."""
        x = self.x
        for g in range(len(x)):
            gates = model.internal.get(g, ())
            if gates and x[g] is not None:  # a bypassed block's own groups stay whole (no symmetry)
                self.rows.append(({int(x[g][-1]): 1.0, self.gate(gates): 1.0}, 1.0, np.inf))
            w = self.choice_vars(g, gates if model.block_weight is None else ())
            if w is None:  # one option, no gate: a constant
                continue
            for v, s in zip(w, imp[g]):
                _add(self.obj, int(v), float(s))
        if model.block_weight is not None:
            for bi, wt in enumerate(model.block_weight):
                _add(self.obj, int(self.z[bi]), float(wt))

    def add_limits(self, model: LatencyModel, budget_ms: float) -> None:
        """The error cap's row (when set) and the latency budget's row."""
        if _capped(model) and len(model.blocks):
            self.rows.append(({int(self.z[bi]): -float(e) for bi, e in
                               enumerate(model.block_error)}, -np.inf,
                              model.error_cap - float(sum(model.block_error))))
        self.rows.append((self.lat, -np.inf, budget_ms - self.const))

    def arrays(self) -> tuple:
        """(constraint matrix, lower bounds, upper bounds, cost vector to minimise)."""
        from scipy.sparse import coo_matrix

        r, c, d = [], [], []
        for k, (coef, _, _) in enumerate(self.rows):
            for var, val in coef.items():
                r.append(k)
                c.append(var)
                d.append(val)
        A = coo_matrix((d, (r, c)), shape=(len(self.rows), self.V.n)).tocsr()
        lb = np.array([lo for _, lo, _ in self.rows])
        ub = np.array([hi for _, _, hi in self.rows])
        cvec = np.zeros(self.V.n)
        for var, s in self.obj.items():
            cvec[var] = -s
        return A, lb, ub, cvec


def greedy(model: LatencyModel, imp: list[np.ndarray], budget_ms: float) -> Solution:
    """Step down one option of one group, or bypass one block, whichever loses the least
    importance per millisecond saved, until the predicted latency is within budget."""
    t0 = time.perf_counter()
    choice = model.full_choice()
    kept = set(range(len(model.blocks)))
    pred = model.predict(choice, kept)
    while pred > budget_ms:
        best = None
        base = _objective(imp, model, choice, kept)
        moves = [("g", g) for g in range(len(choice)) if choice[g] > 0] + \
                [("b", bi) for bi in kept]
        for kind, k in moves:
            ch, kp = list(choice), set(kept)
            if kind == "g":
                ch[k] -= 1
            else:
                kp.discard(k)
                if not _within_cap(model, kp):
                    continue
            p = model.predict(ch, kp)
            saved = pred - p
            if saved <= 0:
                continue
            ratio = (base - _objective(imp, model, ch, kp)) / saved
            if best is None or ratio < best[0]:
                best = (ratio, ch, kp, p)
        if best is None:
            break
        _, choice, kept, pred = best
    return Solution(choice, sorted(kept), pred, _objective(imp, model, choice, kept), "greedy",
                    "done", time.perf_counter() - t0, pred <= budget_ms * (1 + 1e-6))
