"""Merge methods as small pure functions, dispatched from one registry.

Space: every method works on full weight deltas (task vectors) of one linear layer,
`delta_i = scaling_i * B_i @ A_i` (out x in, float32), with one weight `w_i` per adapter, and
returns the merged delta. The linear methods (weaverec, linear, task_arithmetic) are
`sum_i c_i * delta_i`; their record's `coefficients` gives `c`, which lets merge/ build the exact
merged adapter in A/B factor space (stacking the factors) without ever forming a full delta.

METHODS holds one record per method (MergeMethod: function, declared parameters, weight constraint,
paper); PARAMS the parameters' defaults and checks.
"""

import inspect
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

NORMALIZE = ("softmax", "sigmoid", "none")
# PEFT's merge utilities are imported inside the functions that use them: importing peft takes
# seconds, and the common WeaveRec merge needs nothing from it.
MAJORITY_SIGN = ("total", "frequency")


def weaverec_coefficients(weights, normalize="softmax", temperature=1.0):
    """WeaveRec's lambda: softmax(w / T) (default), sigmoid(w / T), or w / T itself ("none")."""
    scaled = weights.double() / temperature
    if normalize == "softmax":
        return torch.softmax(scaled, dim=-1)
    if normalize == "sigmoid":
        return torch.sigmoid(scaled)
    return scaled


def linear_coefficients(weights):
    """Weighted average: c_i = w_i / sum_j w_j (all w equal: the plain mean of the deltas)."""
    total = weights.double().sum()
    if total == 0:
        raise ValueError("the weights of a linear average must not sum to zero")
    return weights.double() / total


def task_arithmetic_coefficients(weights, scale=1.0):
    """Task arithmetic (Ilharco et al. 2023): c_i = scale * w_i, i.e. scale * sum_i w_i tau_i."""
    return weights.double() * scale


def weighted_sum(deltas, coefficients):
    """sum_i c_i * delta_i, accumulated in float32."""
    out = torch.zeros_like(deltas[0], dtype=torch.float32)
    for c, delta in zip(coefficients.tolist(), deltas):
        out.add_(delta.float(), alpha=c)
    return out


def weaverec(deltas, weights, normalize="softmax", temperature=1.0):
    """WeaveRec: delta = sum_i lambda_i * delta_i, lambda = softmax(w / T) (or sigmoid / none)."""
    return weighted_sum(deltas, weaverec_coefficients(weights, normalize, temperature))


def linear(deltas, weights):
    """Linear average: delta = sum_i w_i * delta_i / sum_i w_i."""
    return weighted_sum(deltas, linear_coefficients(weights))


def task_arithmetic(deltas, weights, scale=1.0):
    """Task arithmetic: delta = scale * sum_i w_i * delta_i."""
    return weighted_sum(deltas, task_arithmetic_coefficients(weights, scale))


def disjoint_mean(trimmed, weights, majority_sign="total"):
    """TIES steps 2-3 on stacked trimmed deltas [N, ...]: elect a sign, average those that agree.

    gamma = sgn(sum_i w_i tau_i) ("total"; "frequency": the sign most entries have), then
    tau_m = sum_{i in A} w_i tau_i / sum_{i in A} w_i over A = {i : sgn(tau_i) = gamma} (zeros
    excluded); an entry no adapter agrees on is 0. With equal w this is the paper's mean over A.
    """
    from peft.utils.merge_utils import calculate_majority_sign_mask

    w = weights.float().view(-1, *([1] * (trimmed.dim() - 1)))
    agree = calculate_majority_sign_mask(trimmed * w, method=majority_sign)
    total = (trimmed * w * agree).sum(dim=0)
    mass = (w * agree).sum(dim=0)
    return torch.where(mass > 0, total / mass.clamp(min=1e-30), torch.zeros_like(total))


def trim(delta, density):
    """TIES's trim: keep the int(density * numel) entries of largest |value|, zero the rest."""
    from peft.utils.merge_utils import magnitude_based_pruning

    return magnitude_based_pruning(delta.float(), density)


def ties(deltas, weights, density=0.5, scale=1.0, majority_sign="total"):
    """TIES-Merging (Yadav et al. 2023, arXiv:2306.01708): trim, elect sign, disjoint merge.

    1. trim: keep the `density` fraction of entries of each delta with the largest |value|;
    2-3. see disjoint_mean; 4. delta = scale * tau_m (the paper's lambda). Weights must be > 0.
    """
    trimmed = torch.stack([trim(d, density) for d in deltas])
    return scale * disjoint_mean(trimmed, weights, majority_sign)


def module_seed(seed, module):
    """A seed for one module that does not depend on the order modules are processed in."""
    return (seed * 1_000_003 + zlib.crc32(module.encode("utf-8"))) % (2**63)


def dare(deltas, drop_rate, seed):
    """DARE (Yu et al. 2024, arXiv:2311.03099): drop entries at rate p, rescale the rest by 1/(1-p).

    A torch.Generator seeded with `seed` draws u ~ U[0,1) of each delta's shape, adapter by adapter
    in order; an entry is kept when u >= p: tau~_i = (u_i >= p) * tau_i / (1 - p). Stacked [N, ...].
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for delta in deltas:
        keep = torch.rand(delta.shape, generator=gen) >= drop_rate
        out.append(delta.float() * keep / (1.0 - drop_rate))
    return torch.stack(out)


def dare_linear(deltas, weights, drop_rate=0.5, seed=0, scale=1.0):
    """DARE + task arithmetic: delta = scale * sum_i w_i * DARE(delta_i)."""
    return weighted_sum(list(dare(deltas, drop_rate, seed)), weights.double() * scale)


def dare_ties(deltas, weights, drop_rate=0.5, seed=0, scale=1.0, majority_sign="total"):
    """DARE + TIES: DARE replaces TIES's magnitude trim, then sign election and disjoint merge."""
    return scale * disjoint_mean(dare(deltas, drop_rate, seed), weights, majority_sign)


def magnitude_prune(deltas, weights, density=0.5, scale=1.0):
    """Magnitude pruning: trim each delta as TIES does, then delta = scale * sum_i w_i * trim(delta_i)."""
    trimmed = [trim(d, density) for d in deltas]
    return weighted_sum(trimmed, weights.double() * scale)


@dataclass(frozen=True)
class Param:
    """A merge parameter: its default, the check its value must pass, and what the check asks."""
    default: object
    check: Callable
    rule: str


PARAMS = {
    "normalize": Param("softmax", lambda v: v in NORMALIZE, f"one of {', '.join(NORMALIZE)}"),
    "temperature": Param(1.0, lambda v: math.isfinite(v) and v > 0, "a positive number"),
    "scale": Param(1.0, math.isfinite, "a finite number"),
    "density": Param(0.5, lambda v: 0 < v <= 1, "in (0, 1]"),
    "drop_rate": Param(0.5, lambda v: 0 <= v < 1, "in [0, 1)"),
    "majority_sign": Param("total", lambda v: v in MAJORITY_SIGN, f"one of {', '.join(MAJORITY_SIGN)}"),
    "seed": Param(0, lambda v: isinstance(v, int), "a whole number"),
}


@dataclass(frozen=True)
class MergeMethod:
    """One merge method, as mergekit keeps them: everything about it in one place.

    fn: full-delta space, fn(deltas, weights, **params) -> merged delta (float32).
    params: the parameters it declares (keys of PARAMS); any other is an error.
    weights: the constraint on the raw weights w: "any", "positive" or "nonzero_sum".
    coefficients: for methods linear in the deltas, w -> c with delta = sum_i c_i delta_i, which
        gives the exact merged adapter in A/B factor space (stacked factors); None otherwise.
    """
    fn: Callable
    params: tuple
    paper: str
    weights: str = "any"
    coefficients: Callable = None


METHODS = {
    "weaverec": MergeMethod(weaverec, ("normalize", "temperature"), "WeaveRec: lambda = softmax(w / T)",
                            coefficients=weaverec_coefficients),
    "linear": MergeMethod(linear, (), "weighted average of the deltas", "nonzero_sum",
                          coefficients=linear_coefficients),
    "task_arithmetic": MergeMethod(task_arithmetic, ("scale",), "Ilharco et al. 2023, arXiv:2212.04089",
                                   coefficients=task_arithmetic_coefficients),
    "ties": MergeMethod(ties, ("density", "scale", "majority_sign"), "Yadav et al. 2023, arXiv:2306.01708",
                        "positive"),
    "dare_linear": MergeMethod(dare_linear, ("drop_rate", "seed", "scale"), "Yu et al. 2024, arXiv:2311.03099"),
    "dare_ties": MergeMethod(dare_ties, ("drop_rate", "seed", "scale", "majority_sign"),
                             "Yu et al. 2024, arXiv:2311.03099 (with TIES's sign election)", "positive"),
    "magnitude_prune": MergeMethod(magnitude_prune, ("density", "scale"), "magnitude pruning (TIES's trim alone)"),
}


def is_linear(method):
    """True when the method's merged delta is sum_i c_i delta_i (an exact stacked adapter exists)."""
    return METHODS[method].coefficients is not None


def method_params(method, given):
    """The parameters of `method`: its declared ones with their defaults, overridden by `given`.

    Raises ValueError naming the first parameter the method does not declare or a value that fails
    its check, so an option is never silently ignored.
    """
    record = METHODS[method]
    unknown = sorted(set(given) - set(record.params))
    if unknown:
        takes = ", ".join(record.params) or "no parameters"
        raise ValueError(f"{method} does not take {unknown[0]} (it takes {takes})")
    params = {name: PARAMS[name].default for name in record.params}
    params.update(given)
    for name, value in params.items():
        if not PARAMS[name].check(value):
            raise ValueError(f"{name} must be {PARAMS[name].rule}, got {value}")
    return params


def check_weights(method, weights):
    """ValueError when raw weights w break the method's constraint."""
    rule = METHODS[method].weights
    if rule == "positive" and (weights <= 0).any():
        raise ValueError(f"{method} needs positive weights")
    if rule == "nonzero_sum" and weights.sum() == 0:
        raise ValueError(f"{method}: the weights must not sum to zero")


def merge_deltas(method, deltas, weights, **params):
    """Merged full delta of one module with `method` and its declared parameters."""
    return METHODS[method].fn(deltas, weights, **method_params(method, params))


def coefficients(method, weights, **params):
    """Per-adapter coefficients c of a linear method (delta = sum_i c_i delta_i), float64."""
    fn = METHODS[method].coefficients
    if fn is None:
        raise ValueError(f"{method} is not linear in the deltas: it has no coefficients")
    kept = method_params(method, params)
    accepted = inspect.signature(fn).parameters
    return fn(weights, **{k: v for k, v in kept.items() if k in accepted})
