"""The WeaveRec merge as a differentiable function of its raw weights w, on a frozen base model.

Space: A/B factors. For every adapted linear layer `m` the base output gets
`sum_i lambda_i(m) * s_i(m) * B_i A_i x`, computed as `B (c * (A x))` with the stacked factors
`A = [A_1; ...; A_N]`, `B = [B_1, ..., B_N]` and `c` = lambda_i(m) * s_i(m) repeated over adapter i's
rank: exactly the adapter that `merge.merge_lora --output stacked` writes for the same w (which
stores `B * c` with a scaling of 1). lambda = softmax(w / T) (or sigmoid / none) is computed by
merge.methods.weaverec_coefficients, the merge's own function.

The base weights and the LoRA factors are frozen (requires_grad False, the factors are buffers):
only w, float32, gets a gradient. w can be shared: one vector per adapted module, per layer, or one
for all modules (GROUPINGS).
"""

import re
from dataclasses import dataclass

import torch

from common.cli import UserError
from merge.methods import weaverec_coefficients

GROUPINGS = ("module", "layer", "adapter")
LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def group_of(module, grouping):
    """The key whose w a module uses: the module itself, its decoder layer, or one for all."""
    if grouping == "module":
        return module
    if grouping == "layer":
        match = LAYER_RE.search(module)
        return f"layers.{match[1]}" if match else module
    return "all"


def layer_index(module):
    match = LAYER_RE.search(module)
    return int(match[1]) if match else None


@dataclass
class Stack:
    """One module's stacked factors (compute dtype, on the model's device; no gradient)."""
    a: torch.Tensor  # [R, in]: A_1; ...; A_N
    b: torch.Tensor  # [out, R]: B_1, ..., B_N
    owner: torch.Tensor  # [R]: the adapter of each rank row
    scaling: torch.Tensor  # [N] float64: PEFT's s_i


def stack(adapters, module, device, dtype):
    ranks = torch.tensor([ad.factors[module][0].shape[0] for ad in adapters])
    return Stack(torch.cat([ad.factors[module][0] for ad in adapters]).to(device, dtype),
                 torch.cat([ad.factors[module][1] for ad in adapters], dim=1).to(device, dtype),
                 torch.repeat_interleave(torch.arange(len(adapters)), ranks).to(device),
                 torch.tensor([ad.scaling[module] for ad in adapters], dtype=torch.float64, device=device))


class WeightedMerge(torch.nn.Module):
    """Forward hooks that add the lambda-weighted stacked LoRA output to each adapted linear layer.

    Args:
        model: the base model (frozen here: every parameter gets requires_grad False).
        adapters: merge.adapters.Adapter list, target first (checked compatible by the caller).
        grouping: "module", "layer" or "adapter" (see group_of).
        init: the initial raw weight of every adapter (1: the equal-weight merge).
    """

    def __init__(self, model, adapters, grouping="module", normalize="softmax", temperature=1.0, init=1.0):
        super().__init__()
        model.requires_grad_(False)
        weight = model.get_input_embeddings().weight
        self.modules_ = sorted(adapters[0].factors)
        self.normalize, self.temperature = normalize, temperature
        groups = [group_of(m, grouping) for m in self.modules_]
        names = sorted(set(groups))
        self.group_index = torch.tensor([names.index(g) for g in groups], device=weight.device)
        self.w = torch.nn.Parameter(torch.full((len(names), len(adapters)), float(init),
                                         device=weight.device))
        self.stacks = [stack(adapters, m, weight.device, weight.dtype) for m in self.modules_]
        self._coeffs = None
        self._handles = [_linear(model, m, adapters[0].factors[m]).register_forward_hook(self._hook(k))
                         for k, m in enumerate(self.modules_)]

    def lambdas(self):
        """lambda per module [n_modules, N], float64, exactly as the merge computes it from w."""
        return weaverec_coefficients(self.w[self.group_index], self.normalize, self.temperature)

    def refresh(self):
        """Recompute the per-rank coefficients lambda_i * s_i from w; call before each forward pass."""
        lam = self.lambdas()
        self._coeffs = [(lam[k] * st.scaling)[st.owner] for k, st in enumerate(self.stacks)]

    def _hook(self, k):
        def add_lora(layer, inputs, output):
            if self._coeffs is None:
                raise RuntimeError("WeightedMerge.refresh() must run before the forward pass")
            z = torch.nn.functional.linear(inputs[0], self.stacks[k].a)
            return output + torch.nn.functional.linear(z * self._coeffs[k].to(z.dtype), self.stacks[k].b)
        return add_lora

    def frozen(self):
        """The factor tensors (no gradient), e.g. to leave them out of activation counts."""
        return [t for st in self.stacks for t in (st.a, st.b, st.owner, st.scaling)]

    def weights_table(self):
        """{module: [w_1, ..., w_N]}: what merge_lora --weights-file reads (JSON lists of floats)."""
        w = self.w.detach().float().cpu()[self.group_index.cpu()]
        return {m: w[k].tolist() for k, m in enumerate(self.modules_)}

    def load_table(self, table):
        """Set w from a {module: [w_1..w_N]} table made by weights_table (same grouping)."""
        with torch.no_grad():
            for k, m in enumerate(self.modules_):
                self.w[self.group_index[k]] = torch.tensor(table[m], dtype=self.w.dtype, device=self.w.device)

    def remove(self):
        """Detach the hooks: the model is the plain base model again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def check_base(base_model, adapters):
    """Every adapted module must be a linear layer of the base model with the adapters' shape: checked on
    an empty (meta device) copy built from the base's config, before any weights are loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_model, trust_remote_code=False)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    for module, factors in adapters[0].factors.items():
        _linear(skeleton, module, factors)


def _linear(model, module, factors):
    """The base model's linear layer `module`; a one-line error when the adapters do not fit it."""
    try:
        layer = model.get_submodule(module)
    except AttributeError:
        raise UserError(f"the base model has no module {module}: the adapters were trained on another "
                        "base model (wrong --base-model?)") from None
    a, b = factors
    delta = (b.shape[0], a.shape[1])
    if not isinstance(layer, torch.nn.Linear) or (layer.out_features, layer.in_features) != delta:
        found = tuple(layer.weight.shape) if hasattr(layer, "weight") else type(layer).__name__
        raise UserError(f"{module}: the base layer is {found}, the adapters' delta is {delta}: "
                        "the adapters do not match --base-model")
    return layer
