"""The ``--json`` outputs of ``compress``, ``analyze`` and ``diff`` as small schemas (the ones docs/schemas.md
documents), and a checker.

Schema language: ``int``/``float``/``str``/``bool`` (a float accepts an int: JSON numbers); a tuple
is a union (``(float, None)``: a number or null); ``[s]`` is a list of ``s``; a dict of fixed keys
must have exactly those keys; ``{str: s}`` maps any keys to ``s``.
"""

from __future__ import annotations

from typing import Any

# what healing did to one layer (compress --json heal.corrections, diff's node "healing")
_REFIT = {"kind": str, "residual_before": float, "residual_after": float, "weight_change": float}
_AFFINE = {"kind": str, "channels": int, "scale_min": float, "scale_max": float,
           "shift_max": float}
_BIAS = {"kind": str, "channels": int, "shift_max": float}
HEALED = (_REFIT, _AFFINE, _BIAS)
CORRECTION = tuple(dict(h, layer=str) for h in HEALED)

FROZEN = {"layer": str, "source": str, "role": str, "channels": int, "reason": str}
LATENCY = {"median_ms": float, "min_ms": float, "max_ms": float, "runs": int, "warmup": int,
           "threads": int, "provider": str}

LATENCY_ROUND = {"round": int, "budget_ms": float, "predicted_ms": float, "measured_ms": float,
                 "reference_ms": float,
                 "solver": str, "status": str, "solve_s": float, "feasible": bool,
                 "blocks_bypassed": [str], "bypass_error": (float, None)}
LATENCY_TARGET = {
    "target": float, "threads": int, "provider": str, "before_ms": float, "goal_ms": float,
    "predicted_ms": float, "selected_ms": float, "after_ms": float, "reference_ms": float,
    "ratio": float,
    "model_error": float, "solver": str, "notes": [str], "rounds": [LATENCY_ROUND],
    "table": {"path": str, "entries": int, "needed": int, "timed": int, "reused": int,
              "seconds": float},
    "quantum": int, "finest": int, "gated_blocks": int, "gate_error": float, "gate_errors": {str: float},
    "dims": {str: int}, "group_losses": (None, {str: {str: float}}),
    "error_cap": (float, None),
}

COMPRESS = {
    "backend": str, "output": (str, None),
    "flops_before": int, "flops_after": int, "flops_ratio": float,
    "params_before": int, "params_after": int, "params_ratio": float, "params_constants": int,
    "size_before": int, "size_after": int,
    "latency": (None, {"before": LATENCY, "after": LATENCY, "speedup": float}),
    "target": ({"flops": (float, None), "params": (float, None)},
               {"flops": None, "params": None, "latency": float}), "reached": bool,
    "latency_target": (None, LATENCY_TARGET),
    "parts": (None, [{"module": str, "flops_before": int, "flops_after": int,
                      "params_before": int, "params_after": int, "reached": bool,
                      "share_of_flops": float}]),
    "method": str, "calibration": str, "round_to": (int, None),
    "groups": int, "groups_pruned": int, "units_removed": int,
    "steps": [{"step": int, "fraction": float, "removed": int, "flops": int, "params": int}],
    "protected": {str: float}, "group_losses": (None, [{str: {str: float}}]),
    "order": (None, str),
    "layers": [{"layer": str, "source": str, "channels_before": int, "channels_after": int,
                "flops_before": int, "flops_after": int, "bypassed": bool}],
    "frozen": [FROZEN], "keep": [str], "kept_nodes": [str],
    "blocks_bypassed": [str], "block_scores": {str: float},
    "heal": {"method": str, "layers": int, "scale_min": float, "scale_max": float,
             "error_before": (float, None), "error_after": (float, None), "kept": bool,
             "notes": [str], "corrections": [CORRECTION], "bias_added": {str: int},
             "rows_per_input": {str: float}},
    "pipeline": [({"step": int, "stage": str, "flops": int, "params": int, "error": float},
                  {"step": int, "stage": str, "flops": int, "params": int, "error": float,
                   "metric": float})],
    "warnings": [str],
}

ANALYZE = {
    "backend": str, "nodes": int, "flops": int, "params": int, "ops": {str: int},
    "groups": [(
        {"key": str, "units": int, "params": [str], "unit_width": {str: int}},
        {"key": str, "units": int, "params": [str], "unit_width": {str: int},
         "score": {"min": float, "mean": float, "max": float}})],
    "blocks": [{"key": str, "kind": str, "add": str, "nodes": int, "flops": int}],
    "cost": [{"node": str, "op": str, "source": str, "flops": int}],
    "frozen": [FROZEN], "calibration": str, "warnings": [str],
}
ANALYZE_CALIB = dict(ANALYZE, divergence={str: [float]})

_SIDE = {"path": str, "nodes": int, "flops": int, "params": int}
_SHAPES = ([[(int, None)]], None)
DIFF = {
    "schema": str, "version": int, "a": _SIDE, "b": _SIDE,
    "totals": {"flops_a": int, "flops_b": int, "flops_ratio": float, "params_a": int,
               "params_b": int, "params_ratio": float,
               "nodes": {"same": int, "retuned": int, "changed": int, "removed": int,
                         "bypassed": int, "added": int},
               "layers": int, "layers_pruned": int, "layers_healed": int, "channels_a": int,
               "channels_b": int},
    "match": {"name": int, "tensor": int, "structure": int, "order": int},
    "blocks_bypassed": [{"key": str, "add": str, "add_kept": bool, "nodes": [str],
                         "flops": int}],
    "healing": (None, {"method": str, "layers": int, "scale_min": float, "scale_max": float,
                       "error_before": (float, None), "error_after": (float, None),
                       "kept": bool, "notes": [str]}),
    "nodes": [{"a": (str, None), "b": (str, None), "op": str, "status": str,
               "match": (str, None), "block": (str, None), "outputs_a": _SHAPES,
               "outputs_b": _SHAPES, "weights_a": ([[int]], None), "weights_b": ([[int]], None),
               "channels_a": (int, None), "channels_b": (int, None), "kept": (float, None),
               "flops_a": (int, None), "flops_b": (int, None), "params_a": (int, None),
               "params_b": (int, None), "weights_change": (float, None),
               "healing": (None,) + HEALED}],
}


def check(value: Any, schema: Any, where: str = "$") -> None:
    """Raise ``AssertionError`` naming the first place ``value`` does not fit ``schema``."""
    if isinstance(schema, tuple):
        errors = []
        for s in schema:
            try:
                check(value, s, where)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: fits none of the alternatives: {errors}")
    if schema is None:
        assert value is None, f"{where}: expected null, got {value!r}"
    elif schema is bool:
        assert isinstance(value, bool), f"{where}: expected bool, got {value!r}"
    elif schema is int:
        assert isinstance(value, int) and not isinstance(value, bool), \
            f"{where}: expected int, got {value!r}"
    elif schema is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), \
            f"{where}: expected number, got {value!r}"
    elif schema is str:
        assert isinstance(value, str), f"{where}: expected string, got {value!r}"
    elif isinstance(schema, list):
        assert isinstance(value, list), f"{where}: expected list, got {type(value).__name__}"
        for i, v in enumerate(value):
            check(v, schema[0], f"{where}[{i}]")
    elif isinstance(schema, dict) and list(schema) == [str]:
        assert isinstance(value, dict), f"{where}: expected object, got {type(value).__name__}"
        for k, v in value.items():
            check(v, schema[str], f"{where}.{k}")
    else:
        assert isinstance(value, dict), f"{where}: expected object, got {type(value).__name__}"
        assert set(value) == set(schema), \
            f"{where}: keys differ: missing {sorted(set(schema) - set(value))}, " \
            f"extra {sorted(set(value) - set(schema))}"
        for k, s in schema.items():
            check(value[k], s, f"{where}.{k}")


def keys(schema: Any) -> set[str]:
    """Every fixed key named anywhere in ``schema``."""
    if isinstance(schema, tuple) or isinstance(schema, list):
        return set().union(*(keys(s) for s in schema)) if schema else set()
    if isinstance(schema, dict):
        if list(schema) == [str]:
            return keys(schema[str])
        return set(schema) | set().union(*(keys(s) for s in schema.values()))
    return set()
