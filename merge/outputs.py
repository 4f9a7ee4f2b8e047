"""The three outputs of a merge: an exact stacked adapter, a fixed-rank SVD adapter, a full model.

Space: stacked_factors works on A/B factors only (never forms out x in matrices); svd_factors and
the full model work on merged full deltas (out x in, float32), made by module_delta.
"""

import os

import torch

from common.cli import UserError
from merge.methods import coefficients, is_linear, merge_deltas


def stacked_factors(adapters, module, coeffs):
    """Exact merged factors in float32: A = [A_1; ...; A_N], B = [c_1 s_1 B_1, ..., c_N s_N B_N].

    Then B @ A = sum_i c_i * s_i * B_i @ A_i with a stored scaling of 1 (rank = sum of ranks).
    """
    a = torch.cat([ad.factors[module][0].float() for ad in adapters], dim=0)
    b = torch.cat([ad.factors[module][1].float() * (c * ad.scaling[module])
                   for ad, c in zip(adapters, coeffs.tolist())], dim=1)
    return a, b


def module_delta(adapters, module, method, weights, params):
    """The merged full delta of one module (float32, out x in)."""
    if is_linear(method):
        a, b = stacked_factors(adapters, module, coefficients(method, weights, **params))
        return b @ a
    deltas = [ad.scaling[module] * (ad.factors[module][1].float() @ ad.factors[module][0].float())
              for ad in adapters]
    return merge_deltas(method, deltas, weights, **params)


def _truncate(u, s, vh, rank):
    """Rank-`rank` factors (A, B) from an SVD, split sqrt(S) on each side; zero-padded up to rank."""
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    b = torch.zeros(u.shape[0], rank)
    a = torch.zeros(rank, vh.shape[1])
    b[:, :k] = u[:, :k] * root
    a[:k] = root[:, None] * vh[:k]
    return a, b


def svd_factors(adapters, module, method, weights, params, rank):
    """Best rank-`rank` approximation of the merged delta (Eckart-Young), float32 factors.

    Returns (A, B, tail, total): the squared Frobenius norms of the dropped part and of the delta,
    so the relative error is sqrt(tail / total). Linear methods are decomposed from their stacked
    factors (QR of each side, then an SVD of a small R x R matrix): exact and cheap.
    """
    if is_linear(method):
        a_s, b_s = stacked_factors(adapters, module, coefficients(method, weights, **params))
        qb, rb = torch.linalg.qr(b_s)
        qa, ra = torch.linalg.qr(a_s.T)
        u, s, vh = torch.linalg.svd(rb @ ra.T)
        u, vh = qb @ u, vh @ qa.T
    else:
        u, s, vh = torch.linalg.svd(module_delta(adapters, module, method, weights, params),
                                    full_matrices=False)
    a, b = _truncate(u, s, vh, rank)
    sq = s.double() ** 2
    return a, b, float(sq[rank:].sum()), float(sq.sum())


def _load_base(base_model, dtype):
    from transformers import AutoModelForCausalLM

    if not os.path.isfile(os.path.join(base_model, "config.json")):
        raise UserError(f"base model folder not found (no config.json): {base_model}; pass --base-model")
    model = AutoModelForCausalLM.from_pretrained(
        base_model, torch_dtype="auto" if dtype is None else dtype, low_cpu_mem_usage=True,
        trust_remote_code=False)
    return model


def _load_tokenizer(folders):
    from transformers import AutoTokenizer

    for folder in folders:
        if folder and os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    raise UserError(f"no tokenizer found in {' or '.join(f for f in folders if f)}")


def write_full_model(out_dir, base_model, tokenizer_from, deltas, dtype=None, max_shard_size="5GB"):
    """Base weights + merged deltas, saved as a normal HF folder (safetensors shards, config,
    generation config, tokenizer: the first adapter's when it has one, else the base's).

    `deltas` yields (module, float32 delta); embeddings are resized to the tokenizer's length first,
    as the original does. Returns the number of modules changed.
    """
    model = _load_base(base_model, dtype)
    tokenizer = _load_tokenizer([tokenizer_from, base_model])
    if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    changed = 0
    with torch.no_grad():
        for module, delta in deltas:
            try:
                weight = model.get_submodule(module).weight
            except AttributeError:
                raise UserError(f"the base model has no module {module}: wrong --base-model?") from None
            if tuple(weight.shape) != tuple(delta.shape):
                raise UserError(f"{module}: base weight is {tuple(weight.shape)}, the adapters' delta is "
                                f"{tuple(delta.shape)}: wrong --base-model?")
            merged = (weight.float() + delta).to(weight.dtype)
            if not torch.isfinite(merged).all():
                raise UserError(f"{module}: base weight + delta overflows {weight.dtype}")
            weight.copy_(merged)
            changed += 1
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    return changed
