"""Merge LoRA adapters: reads N PEFT adapter folders [target, target_source1, ...], writes one merged
PEFT adapter (exact stacked, or SVD rank-r) or a full merged model folder to --out.

    python -m merge.merge_lora --adapters save/sports save/sports_beauty save/sports_clothing \
        --out save/merged/sports_weaverec [--method weaverec] [--weights 1 1 1] [--temperature 1]

Weights: --weights gives one raw weight w_i per adapter (default all 1); --weights-file gives one
per adapter per adapted module: JSON {"model.layers.0.self_attn.q_proj": [w_1, ..., w_N], ...}
(every adapted module, nothing else; --write-weights-template writes one) or a safetensors file
with one float tensor of shape [N] under each such key. WeaveRec turns w into
lambda = softmax(w / T) (or sigmoid(w / T), or w / T with --normalize none); the baselines use w as
given (see merge/methods.py). Nothing is written unless the whole merge succeeds.
"""

import argparse
import math
import os
import time

import torch
from tqdm import tqdm

from common.cli import UserError, run_main
from common.io import atomic_dir, read_json, write_json_atomic
from merge.adapters import (
    INFO_NAME,
    adapter_config,
    check_compatible,
    file_size,
    is_merge_output,
    load_adapter,
    output_dtype,
    read_safetensors,
    save_adapter,
)
from merge.methods import (
    MAJORITY_SIGN,
    METHODS,
    NORMALIZE,
    check_weights,
    coefficients,
    is_linear,
    method_params,
    module_seed,
)
from inference.memory import peak_text
from merge.outputs import module_delta, stacked_factors, svd_factors, write_full_model

DTYPES = ("auto", "float32", "bfloat16", "float16")


OPTION_PARAMS = ("normalize", "temperature", "scale", "density", "drop_rate", "majority_sign", "seed")


def option(param):
    return "--" + param.replace("_", "-")


def method_help():
    lines = ["methods (what each takes; every method also takes the raw weights w):"]
    for name, m in sorted(METHODS.items()):
        takes = ", ".join(option(p) for p in m.params) or "nothing more"
        lines.append(f"  {name:16} {takes}; {m.paper}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=method_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapters", nargs="+", required=True, help="adapter folders, target first")
    p.add_argument("--out", help="output folder (replaced only if empty or an earlier merge output)")
    p.add_argument("--method", default="weaverec", choices=sorted(METHODS))
    p.add_argument("--weights", nargs="+", type=float, help="one raw weight per adapter (default all 1)")
    p.add_argument("--weights-file", help="per-module weights: .json or .safetensors (schema above)")
    p.add_argument("--write-weights-template", metavar="FILE", help="write a weights file of 1s and exit")
    # method parameters: None = not given (the method's default); one the method does not take is an error
    p.add_argument("--normalize", choices=NORMALIZE, help="weaverec: w -> lambda (default softmax)")
    p.add_argument("--temperature", type=float, help="weaverec: T in softmax(w / T) (default 1)")
    p.add_argument("--scale", type=float, help="task_arithmetic, ties, dare_*, magnitude_prune: a factor "
                                               "on the merged delta (default 1)")
    p.add_argument("--density", type=float, help="ties, magnitude_prune: share of entries kept (0.5)")
    p.add_argument("--drop-rate", type=float,
                   help="dare_*: share of entries dropped, p in the DARE paper (0.5); PEFT's and mergekit's "
                        "`density` for DARE is the share kept, 1 - p")
    p.add_argument("--majority-sign", choices=MAJORITY_SIGN, help="ties, dare_ties (default total)")
    p.add_argument("--seed", type=int, help="dare_*: seed of the drop masks (default 0)")
    p.add_argument("--output", default="stacked", choices=("stacked", "svd", "full"),
                   help="stacked: the exact merge as one PEFT adapter, A = [A_1; ...; A_N] and "
                        "B = [c_1 s_1 B_1, ..., c_N s_N B_N] (PEFT's add_weighted_adapter "
                        "combination_type='cat'; rank = sum of ranks; linear methods only); svd: a rank-R "
                        "adapter (the best approximation); full: a merged model folder")
    p.add_argument("--rank", type=int, help="svd: rank of the merged adapter (default: largest input r)")
    p.add_argument("--base-model", help="base model folder; overrides adapter_config.json's path")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="output dtype (auto: as the inputs)")
    p.add_argument("--max-shard-size", default="5GB", help="full: safetensors shard size")
    p.add_argument("--threads", type=int, help="CPU threads (default: 1 for stacked, all for svd/full)")
    return p.parse_args(argv)


def check_args(args):
    """Every bad option is one clear error before anything is read or written."""
    if args.out is None and args.write_weights_template is None:
        raise UserError("--out is required")
    if args.weights is not None and args.weights_file is not None:
        raise UserError("give --weights or --weights-file, not both")
    if args.weights is not None and len(args.weights) != len(args.adapters):
        raise UserError(f"--weights has {len(args.weights)} values for {len(args.adapters)} adapters")
    given = {k: getattr(args, k) for k in OPTION_PARAMS if getattr(args, k) is not None}
    declared = METHODS[args.method].params
    unknown = [k for k in given if k not in declared]
    if unknown:
        takes = ", ".join(option(k) for k in declared) or "none of the method options"
        raise UserError(f"{option(unknown[0])} does not apply to --method {args.method} (it takes {takes})")
    try:
        args.params = method_params(args.method, given)
    except ValueError as err:  # "<param> must be ..."
        name, _, rest = str(err).partition(" ")
        raise UserError(f"{option(name)} {rest}") from None
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.rank is not None and args.rank < 1:
        raise UserError(f"--rank must be at least 1, got {args.rank}")
    if args.output == "stacked" and not is_linear(args.method):
        raise UserError(f"--method {args.method} does not give a low-rank delta, so it has no exact "
                        f"stacked adapter: use --output svd or --output full")
    if args.output != "svd" and args.rank is not None:
        raise UserError("--rank applies to --output svd only (stacked rank = sum of the input ranks)")
    if len({os.path.abspath(a) for a in args.adapters}) != len(args.adapters):
        raise UserError("the same adapter folder is given twice")


def _weight_list(values, n, where):
    if not isinstance(values, list) or len(values) != n:
        raise UserError(f"{where}: expected a list of {n} weights (one per adapter)")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values):
        raise UserError(f"{where}: weights must be finite numbers")
    return torch.tensor(values, dtype=torch.float64)


def read_weights_file(path, modules, n):
    """{module: tensor [n]} from a JSON or safetensors weights file whose keys are exactly `modules`."""
    if path.endswith(".json"):
        raw = read_json(path, "weights file")
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a JSON object of module -> list of weights")
    elif path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise UserError(f"weights file not found: {path}")
        raw = {k: v.tolist() if v.dim() == 1 else None for k, v in read_safetensors(path).items()}
    else:
        raise UserError(f"weights file must end in .json or .safetensors (never a pickle): {path}")
    missing, unknown = sorted(set(modules) - set(raw)), sorted(set(raw) - set(modules))
    if missing or unknown:
        eg = [f"{len(missing)} adapted modules missing (e.g. {missing[0]})"] if missing else []
        eg += [f"{len(unknown)} unknown keys (e.g. {unknown[0]})"] if unknown else []
        raise UserError(f"{path}: keys do not match the adapted modules: {'; '.join(eg)}")
    return {m: _weight_list(raw[m], n, f"{path}: {m}") for m in modules}


def weights_table(args, modules, n):
    """{module: raw weights w [n]}, from the weights file or from --weights (default all 1)."""
    if args.weights_file:
        table = read_weights_file(args.weights_file, modules, n)
    else:
        w = _weight_list(args.weights if args.weights is not None else [1.0] * n, n, "--weights")
        table = {m: w for m in modules}
    for w in table.values():
        try:
            check_weights(args.method, w)
        except ValueError as err:
            raise UserError(f"--method {err}") from None
    return table


def module_params(args, module):
    """The method's parameters for one module (DARE's seed made per module)."""
    params = dict(args.params)
    if "seed" in params:
        params["seed"] = module_seed(params["seed"], module)
    return params


def merge_adapter(args, adapters, table, dtype):
    """Factors of the merged adapter, {module: (A, B)}, plus SVD errors {module: (tail, total)}."""
    factors, errors = {}, {}
    rank = args.rank or max(max(a.factors[m][0].shape[0] for m in a.factors) for a in adapters)
    for module in tqdm(sorted(table), desc=f"merge ({args.output})", unit="module"):
        params = module_params(args, module)
        if args.output == "stacked":
            a, b = stacked_factors(adapters, module, coefficients(args.method, table[module], **params))
        else:
            a, b, tail, total = svd_factors(adapters, module, args.method, table[module], params, rank)
            errors[module] = (tail, total)
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise UserError(f"{module}: the merged weights are not finite (weights too large?)")
        factors[module] = (a.to(dtype), b.to(dtype))
    return factors, errors


def pad_to_common_rank(factors):
    """Zero-pad every module's factors to the largest rank: the product B @ A is unchanged, and the
    adapter needs no per-module rank_pattern (which vLLM does not read). Returns that rank."""
    rank = max(a.shape[0] for a, _ in factors.values())
    for module, (a, b) in factors.items():
        if a.shape[0] < rank:
            extra = rank - a.shape[0]
            factors[module] = (torch.cat([a, a.new_zeros(extra, a.shape[1])]),
                               torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1))
    return rank


def full_deltas(args, adapters, table):
    """Yield (module, merged float32 delta), one module at a time."""
    for module in tqdm(sorted(table), desc="merge (full)", unit="module"):
        delta = module_delta(adapters, module, args.method, table[module], module_params(args, module))
        if not torch.isfinite(delta).all():
            raise UserError(f"{module}: the merged weights are not finite (weights too large?)")
        yield module, delta


def merge_info(args, adapters, table, base_model):
    info = {"method": args.method, "output": args.output, "base_model": base_model,
            "adapters": [{"path": a.path, "r": a.config.get("r"), "lora_alpha": a.config.get("lora_alpha"),
                          "use_rslora": bool(a.config.get("use_rslora")), "dtype": str(a.dtype)}
                         for a in adapters],
            "weights": args.weights_file or next(iter(table.values())).tolist(),
            "params": {**args.params, "rank": args.rank, "dtype": args.dtype}}
    if is_linear(args.method):
        lam = {m: coefficients(args.method, w, **module_params(args, m)).tolist() for m, w in table.items()}
        distinct = {tuple(v) for v in lam.values()}
        info["lambdas"] = list(distinct.pop()) if len(distinct) == 1 else lam
    return info


def write_template(path, modules, n):
    write_json_atomic(path, {m: [1.0] * n for m in modules})
    print(f"wrote {path}: {len(modules)} modules x {n} weights (all 1); edit and pass --weights-file")


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    # the stacked merge is thousands of small memory-bound ops: one thread is as fast when the CPUs
    # are idle and 40x faster when they are shared (OpenMP threads wait on each other)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads or (1 if args.output == "stacked" else previous))
    try:
        return run_merge(args)
    finally:
        torch.set_num_threads(previous)


def run_merge(args):
    """Load, check, merge and write; prints what was written."""
    start = time.time()
    adapters = [load_adapter(path) for path in args.adapters]
    check_compatible(adapters)
    modules = sorted(adapters[0].factors)
    if args.write_weights_template:
        return write_template(args.write_weights_template, modules, len(adapters))
    table = weights_table(args, modules, len(adapters))
    base_model = args.base_model or adapters[0].config.get("base_model_name_or_path")
    if not os.path.isfile(os.path.join(base_model or "", "config.json")):
        if args.output == "full":
            raise UserError(f"base model folder not found (no config.json): {base_model}; pass --base-model")
        print(f"note: the base model {base_model} (from adapter_config.json) is not here; the merged "
              f"adapter records it as is (--base-model sets another)")
    dtype = output_dtype(adapters, args.dtype)
    info = merge_info(args, adapters, table, base_model)
    with atomic_dir(args.out, is_merge_output, kind="merge output") as tmp:
        if args.output == "full":
            write_full_model(tmp, base_model, args.adapters[0], full_deltas(args, adapters, table),
                             None if args.dtype == "auto" else dtype, args.max_shard_size)
            write_json_atomic(os.path.join(tmp, INFO_NAME), info)
        else:
            factors, errors = merge_adapter(args, adapters, table, dtype)
            info["rank"] = rank = pad_to_common_rank(factors)
            if errors:
                report_svd_errors(info, errors)
            config = adapter_config(adapters[0].config, rank, base_model)
            save_adapter(tmp, factors, config, info, tokenizer_from=args.adapters[0])
        size = file_size(tmp)
    print(f"merged {len(adapters)} adapters x {len(modules)} modules with {args.method} "
          f"({args.output}) -> {args.out} ({size / 1e6:.1f} MB, {time.time() - start:.1f} s, {peak_text('cpu')})")
    if "lambdas" in info and isinstance(info["lambdas"], list):
        print("lambdas: " + " ".join(f"{x:.4f}" for x in info["lambdas"]))


def report_svd_errors(info, errors):
    """Relative Frobenius error of the rank-r approximation, per module and overall, into info."""
    per = {m: math.sqrt(t / s) if s > 0 else 0.0 for m, (t, s) in errors.items()}
    overall = math.sqrt(sum(t for t, _ in errors.values()) / max(sum(s for _, s in errors.values()), 1e-300))
    worst = max(per, key=per.get)
    info["svd_relative_error"] = {"overall": overall, "per_module": per}
    print(f"svd rank {info['rank']}: relative error overall {overall:.4g}, "
          f"worst {per[worst]:.4g} ({worst})")


if __name__ == "__main__":
    run_main(main)
