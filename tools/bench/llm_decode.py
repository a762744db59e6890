"""One decode step with a KV cache for SmolLM2 and its torch-route compressions.

The fx module idapgraph emits has no cache (it is ``input_ids -> logits``), so its weights are
put back into a copy of the transformers model, which has one: every ``nn.Linear`` the emitted
module holds (parameter names ``model.<transformers name>``) replaces the copy's, so do the
tied embedding and the RMSNorm weights (rescaled where the hidden width lost channels), and
the decoder layers the plan bypassed are dropped. Heads go by whole key/value groups, so the copy's
``num_key_value_groups`` still holds; a removed layer's mean output (mean substitution) is
added by a hook where the layer was. The copy is used only after its logits match the
emitted module's on a calibration window (else the row gets no decode figure). Timed: one
token after a 128-token prefix, the cache cropped back after each step, one thread.
"""

from __future__ import annotations

import copy
import re

import numpy as np

PREFIX = "model."  # LogitsWrapper's attribute: the emitted module's names start with it
MATCH = 1e-4  # the copy's logits against the emitted module's, relative to their largest


def hf_copy(hf, gm, bypass=()):
    """A copy of ``hf`` (``LlamaForCausalLM``) with ``gm``'s linear layers and without the
    decoder layers the plan bypassed (``bypass``: its ``layerN`` block keys)."""
    import torch

    params = {n[len(PREFIX):]: p for n, p in gm.named_parameters(remove_duplicate=False)
              if n.startswith(PREFIX)}
    new = copy.deepcopy(hf)
    for name, mod in list(new.named_modules()):
        if isinstance(mod, torch.nn.Linear) and f"{name}.weight" in params:
            w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            lin.weight = torch.nn.Parameter(w.detach().clone())
            if b is not None:
                lin.bias = torch.nn.Parameter(b.detach().clone())
            parent, _, leaf = name.rpartition(".")
            setattr(new.get_submodule(parent), leaf, lin)
        elif hasattr(mod, "variance_epsilon") and f"{name}.weight" in params:
            _rms_norm(mod, params[f"{name}.weight"])
    # torch.export keeps a tied weight under one name (the LM head's)
    table = params.get("model.embed_tokens.weight", params["lm_head.weight"]).detach().clone()
    new.model.embed_tokens = torch.nn.Embedding.from_pretrained(table, freeze=False)
    if new.config.tie_word_embeddings:
        new.lm_head.weight = new.model.embed_tokens.weight
    layers = new.model.layers
    drop = {int(k[len("layer"):]) for k in bypass if k.startswith("layer")}
    kept = [i for i in range(len(layers)) if i not in drop]
    _substitute(new, gm, kept)
    new.model.layers = torch.nn.ModuleList(layers[i] for i in kept)
    for j, layer in enumerate(new.model.layers):
        layer.self_attn.layer_idx = j
    new.config.num_hidden_layers = len(kept)
    if getattr(new.config, "layer_types", None):
        new.config.layer_types = [new.config.layer_types[i] for i in kept]
    return new.eval()


def _rms_norm(norm, weight) -> None:
    """``norm`` (transformers' RMSNorm over n channels) given the emitted module's ``weight`` of
    n' channels: the emitted mean of squares keeps the divisor n (sum / n), transformers divides
    by n', so eps' = eps * n / n' and w' = w * sqrt(n / n') give the same output."""
    import torch

    n, n_new = norm.weight.shape[0], weight.shape[0]
    norm.weight = torch.nn.Parameter(weight.detach().clone() * (n / n_new) ** 0.5)
    norm.variance_epsilon = norm.variance_epsilon * n / n_new


def _substitute(new, gm, kept: list[int]) -> None:
    """A removed layer's mean output (an emitted ``_idapgraph_mean_*`` buffer) added where it
    is added in the emitted module: before the decoder layer (or the final norm) whose input
    cast it joins (the node's ``nn_module_stack``), or the next layer kept after that one."""
    add: dict = {}
    for n in gm.graph.nodes:
        if n.op != "get_attr" or not str(n.target).startswith("_idapgraph_mean_"):
            continue
        stack = " ".join(v[0] for u in n.users for v in u.meta.get("nn_module_stack", {}).values())
        at = re.search(r"\.layers\.(\d+)\.", stack)
        j = int(at.group(1)) if at else len(new.model.layers)  # else: the final norm's input
        nxt = next((new.model.layers[k] for k in kept if k >= j), new.model.norm)
        add[nxt] = add.get(nxt, 0) + getattr(gm, n.target).detach().clone()
    for mod, c in add.items():
        mod.register_forward_pre_hook(lambda _, args, c=c: (args[0] + c, *args[1:]))


def matches(hf, gm, ids) -> bool:
    """The copy computes what the emitted module does on ``ids`` ((1, n) int64 tensor); a copy
    that does not run (a layer of the original width left in it) does not."""
    import torch

    with torch.no_grad():
        a = gm(ids).numpy().astype(np.float64)
        try:
            b = hf(input_ids=ids, use_cache=False).logits.numpy().astype(np.float64)
        except RuntimeError:
            return False
    return a.shape == b.shape and float(np.abs(a - b).max() / np.abs(a).max()) < MATCH


def step(hf, prefix):
    """``run(_)`` for :func:`tools.bench.llm.median_ms`: one token decoded after ``prefix``
    ((1, n) tensor) from its cache, the cache cropped back after."""
    import torch

    with torch.no_grad():
        cache = hf(input_ids=prefix, use_cache=True).past_key_values
    token = prefix[:, -1:]

    def run(_):
        with torch.no_grad():
            hf(input_ids=token, past_key_values=cache, use_cache=True)
        cache.crop(-1)  # the token just added

    run.cache = cache
    return run
