"""Calibrate a KV policy: measure each layer's K/V quantization error in attention terms,
choose centering and Hadamard rotation, and spend a bit budget on the sensitive layers.

The error of a choice is the relative change of the layer's attention output
``softmax(q k^T / sqrt(d)) v`` over the sample, ``|dO|^2 / |O|^2`` summed over heads and
queries, with K and V round-tripped through the real C codecs.  It sees everything that
matters for K (a quantization error that exceeds the spread of a query's logits
changes the attention pattern) and puts K and V in one currency for the budget.

Allocation: for each combination of K centering and K Hadamard, start every layer at
the base types and repeatedly make the upgrade (layer, K or V, to a higher rung of
3-bit -> 4-bit rotor -> q5_0 -> q8_0 -> f16) that removes the most error per added bit, while
the average bits per element stays within the budget; keep the combination with the
least total error.  V's Hadamard is chosen on V alone.

The error model does not know how much a layer's V error costs the model relative to
its K error (measured: less than the output error suggests).  ``calibrate_model``
therefore builds candidates with V's error weighted by a few factors (and with and
without the q5_0 rung, i.e. many small upgrades or a few large ones), runs each
through the real engine on a held-out window of the sample, and keeps the one whose
next-token distributions are closest (KL) to an f16 cache's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import cache_types
from .capture import LayerActivations, capture
from .fakequant import V_ROTATION_SIZE, k_rotation_size, rotate, roundtrip
from .policy import KVPolicy

_UPGRADES = {"planar3": "planar4", "iso3": "iso4"}


RUNGS = ("q5_0", "q8_0", "f16")


def ladder(base: str, rungs: "tuple[str, ...]" = RUNGS) -> list[str]:
    """Cache types a layer may be raised to, cheapest first."""
    steps = [base]
    if base in _UPGRADES:
        steps.append(_UPGRADES[base])
    for t in rungs:
        if cache_types.get(t).bits_per_element > cache_types.get(steps[-1]).bits_per_element:
            steps.append(t)
    return steps


class _Layer:
    """Reference attention of one layer over a subset of queries, and errors against it."""

    def __init__(self, act: LayerActivations, queries: np.ndarray):
        self.il = act.layer
        self.k, self.v = act.k, act.v
        t, n_head, d = act.q.shape
        self.n_kv = act.k.shape[1]
        self.group = n_head // self.n_kv
        self.scale = 1.0 / np.sqrt(d)
        self.q = act.q[queries].transpose(1, 0, 2)  # [n_head, nq, d]
        self.mask = np.where(np.arange(t)[None, :] <= queries[:, None], 0.0, -np.inf).astype(np.float32)
        self.out = self._attend(self.k, self.v) if self.v is not None else None
        self.norm = float(np.sum(self.out ** 2)) if self.out is not None else 0.0
        self.mu = act.k.mean(axis=0)  # [n_kv, d]: per head, per channel

    def _attend(self, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        kh = np.repeat(k.transpose(1, 0, 2), self.group, axis=0)  # [n_head, T, d]
        vh = np.repeat(v.transpose(1, 0, 2), self.group, axis=0)
        s = (self.q @ kh.transpose(0, 2, 1)) * self.scale + self.mask
        s -= s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=-1, keepdims=True)
        return p @ vh

    def error(self, k: np.ndarray, v: np.ndarray) -> float:
        if self.out is None or self.norm == 0.0:
            return 0.0
        return float(np.sum((self._attend(k, v) - self.out) ** 2) / self.norm)

    def k_roundtrip(self, type_name: str, center: bool, hadamard: bool) -> np.ndarray:
        if type_name == "f16":
            return self.k
        mu = self.mu if center else 0.0
        x = self.k - mu
        n = k_rotation_size(x.shape[-1])
        if hadamard:
            x = rotate(x, n)
        x = roundtrip(x, type_name)
        if hadamard:
            x = rotate(x, n)
        return x + mu

    def v_roundtrip(self, type_name: str, hadamard: bool) -> np.ndarray:
        if type_name == "f16":
            return self.v
        x = rotate(self.v, V_ROTATION_SIZE) if hadamard else self.v
        x = roundtrip(x, type_name)
        return rotate(x, V_ROTATION_SIZE) if hadamard else x


@dataclass
class Calibration:
    """What calibration measured and chose."""

    policy: KVPolicy
    bits_per_element: float
    error: float                  # total relative attention-output error of the policy
    error_base: float             # ... with the base types and no technique
    choices: dict = field(default_factory=dict)   # (center, hadamard) -> total error after allocation
    layer_errors: dict = field(default_factory=dict)  # il -> {"k": {type: err}, "v": {type: err}}
    measured: "object | None" = None   # measure.SampleQuality of the policy on the held-out window
    measured_plain: "object | None" = None  # ... of the plain base types


def _allocate(errs_k, errs_v, ladder_k, ladder_v, n_k, n_v, budget):
    """Greedy upgrades under an average-bits budget; returns per-layer rung indices.

    Each step may jump several rungs (iso3 -> q8_0): a layer whose 4-bit step barely
    helps but whose 8-bit step cures it must not be hidden behind the small step."""
    bits = lambda t: cache_types.get(t).bits_per_element  # noqa: E731
    layers = list(errs_k)
    total_elems = sum(n_k[il] + n_v[il] for il in layers)
    rung = {(il, kind): 0 for il in layers for kind in ("k", "v")}
    spent = sum(bits(ladder_k[0]) * n_k[il] + bits(ladder_v[0]) * n_v[il] for il in layers)
    while True:
        best, best_gain, best_cost = None, 0.0, 0.0
        for (il, kind), r in rung.items():
            steps, errs, n = (ladder_k, errs_k, n_k) if kind == "k" else (ladder_v, errs_v, n_v)
            if n[il] == 0:
                continue
            for r2 in range(r + 1, len(steps)):
                cost = (bits(steps[r2]) - bits(steps[r])) * n[il]
                if (spent + cost) / total_elems > budget + 1e-9:
                    break
                gain = (errs[il][steps[r]] - errs[il][steps[r2]]) / cost
                if gain > best_gain:
                    best, best_gain, best_cost = ((il, kind), r2), gain, cost
        if best is None:
            return rung, spent / total_elems
        key, r2 = best
        rung[key] = r2
        spent += best_cost


def calibrate(layers: "list[LayerActivations]", n_layer: int, *, base_type_k: str = "iso3",
              base_type_v: str = "iso3", budget_bits: float = 3.5, centering: "bool | None" = None,
              hadamard_k: "bool | None" = None, hadamard_v: "bool | None" = None,
              protect: bool = True, n_queries: int = 192, v_weight: float = 1.0,
              rungs: "tuple[str, ...]" = RUNGS) -> Calibration:
    """Choose a policy from captured activations.  ``centering`` / ``hadamard_k`` /
    ``hadamard_v`` force a technique on or off (``None`` = measure and decide);
    ``protect=False`` keeps every layer at the base types; ``v_weight`` scales V's
    errors against K's in the allocation; ``rungs`` are the types above the 4-bit rotor
    type that a layer may be raised to."""
    for t in (base_type_k, base_type_v):
        if not cache_types.get(t).quantized:
            raise ValueError(f"calibration is for quantized cache types, not {t!r}")
    if not layers:
        raise ValueError("no attention layer was captured: nothing to calibrate")
    t = layers[0].k.shape[0]
    queries = np.unique(np.linspace(t // 4, t - 1, min(n_queries, t - t // 4)).astype(int))
    ls = [_Layer(a, queries) for a in layers]
    n_k = {l.il: l.k.shape[1] * l.k.shape[2] for l in ls}
    n_v = {l.il: (l.v.shape[1] * l.v.shape[2] if l.v is not None else 0) for l in ls}
    ladder_k, ladder_v = ladder(base_type_k, rungs), ladder(base_type_v, rungs)
    bits_floor = sum(cache_types.get(base_type_k).bits_per_element * n_k[i] +
                     cache_types.get(base_type_v).bits_per_element * n_v[i] for i in n_k) / \
        sum(n_k[i] + n_v[i] for i in n_k)
    if not protect:
        budget_bits = bits_floor
    elif budget_bits < bits_floor - 1e-9:
        raise ValueError(f"budget of {budget_bits} bits per element is below the base types' "
                         f"{bits_floor:.2f} ({base_type_k}/{base_type_v})")

    # V: rotation chosen on V alone, with exact K
    v_options = [hadamard_v] if hadamard_v is not None else [False, True]
    errs_v_by = {h: {l.il: {tv: l.error(l.k, l.v_roundtrip(tv, h)) if l.v is not None else 0.0
                            for tv in ladder_v} for l in ls} for h in v_options}
    had_v = min(v_options, key=lambda h: sum(e[base_type_v] for e in errs_v_by[h].values()))
    errs_v = {il: {t: v_weight * e for t, e in d.items()} for il, d in errs_v_by[had_v].items()}

    combos = [(c, h) for c in ([centering] if centering is not None else [False, True])
              for h in ([hadamard_k] if hadamard_k is not None else [False, True])]
    results = {}
    for c, h in combos:
        errs_k = {l.il: {tk: l.error(l.k_roundtrip(tk, c, h), l.v) for tk in ladder_k} for l in ls}
        rung, bits = _allocate(errs_k, errs_v, ladder_k, ladder_v, n_k, n_v, budget_bits)
        total = sum(errs_k[i][ladder_k[rung[(i, "k")]]] + errs_v[i][ladder_v[rung[(i, "v")]]] for i in n_k)
        results[(c, h)] = (total, rung, bits, errs_k)
    (center, had_k), (total, rung, bits, errs_k) = min(results.items(), key=lambda kv: kv[1][0])
    base_errs_k = results[(False, False)][3] if (False, False) in results else \
        {l.il: {base_type_k: l.error(l.k_roundtrip(base_type_k, False, False), l.v)} for l in ls}
    base_errs_v = errs_v_by[False] if False in errs_v_by else \
        {l.il: {base_type_v: l.error(l.k, l.v_roundtrip(base_type_v, False)) if l.v is not None else 0.0}
         for l in ls}
    error_base = sum(base_errs_k[i][base_type_k] + base_errs_v[i][base_type_v] for i in n_k)

    policy = KVPolicy(n_layer=n_layer, base_type_k=base_type_k, base_type_v=base_type_v,
                      attn_rot_k=had_k, attn_rot_v=had_v)
    for l in ls:
        tk, tv = ladder_k[rung[(l.il, "k")]], ladder_v[rung[(l.il, "v")]]
        policy.type_k[l.il] = tk if tk != base_type_k else None
        policy.type_v[l.il] = tv if tv != base_type_v else None
        if center:
            policy.k_center[l.il] = l.mu.reshape(-1).astype(np.float32)
    return Calibration(policy=policy, bits_per_element=bits, error=total, error_base=error_base,
                       choices={k: v[0] for k, v in results.items()},
                       layer_errors={i: {"k": errs_k[i], "v": errs_v[i]} for i in n_k})


V_WEIGHTS = (3.0, 1.0, 0.3, 0.1)
LADDERS = (RUNGS, ("q8_0", "f16"))  # with q5_0: many small upgrades; without: a few large ones


def calibrate_model(model_path, tokens: "list[int]", *, n_threads: "int | None" = None,
                    n_gpu_layers: int = 0, window: int = 1024, measure: bool = True, **kw) -> Calibration:
    """Capture the first ``window`` tokens, build candidate policies, and (``measure``)
    keep the one closest to f16 on the rest of the sample, scored in 512-token windows."""
    import tempfile
    from pathlib import Path

    from . import measure as m

    layers, n_layer = capture(model_path, tokens[:window], n_threads=n_threads, n_gpu_layers=n_gpu_layers)
    candidates = []
    variants = [(w, r) for r in LADDERS for w in V_WEIGHTS] if measure and kw.get("protect", True) else [(1.0, RUNGS)]
    for w, r in variants:
        cal = calibrate(layers, n_layer, v_weight=w, rungs=r, **kw)
        if not any(c.policy.type_k == cal.policy.type_k and c.policy.type_v == cal.policy.type_v and
                   c.policy.attn_rot_k == cal.policy.attn_rot_k and c.policy.attn_rot_v == cal.policy.attn_rot_v
                   for c in candidates):
            candidates.append(cal)
    if not measure:
        return candidates[0]
    rest = tokens[window:]
    windows = [rest[i:i + 512] for i in range(0, len(rest) - 255, 512)] or [tokens[-min(512, len(tokens)):]]
    run = dict(n_threads=n_threads, n_gpu_layers=n_gpu_layers)
    base = dict(cache_type_k=kw.get("base_type_k", "iso3"), cache_type_v=kw.get("base_type_v", "iso3"))
    refs = [m.scored_logprobs(model_path, w, kv_policy=None, **run) for w in windows]

    def quality(**llama_kw):
        qs = [m.compare(ref, m.scored_logprobs(model_path, w, **llama_kw, **base, **run), w)
              for ref, w in zip(refs, windows)]
        return m.SampleQuality(kl=float(np.mean([q.kl for q in qs])),
                               ppl_ratio=float(np.exp(np.mean([np.log(q.ppl_ratio) for q in qs]))))

    plain = quality(kv_policy=None)
    with tempfile.TemporaryDirectory() as tmp:
        for i, cal in enumerate(candidates):
            cal.measured = quality(kv_policy=cal.policy.write(Path(tmp) / f"candidate-{i}.kvpolicy.gguf"))
            cal.measured_plain = plain
    return min(candidates, key=lambda c: c.measured.kl)
