"""Learn WeaveRec merge weights: reads a base model, N adapter folders (target first) and a prompt file,
writes the weights file that `merge.merge_lora --weights-file` reads, plus report.json, objective.png
and lambdas.png, into --out-dir.

    python -m merge.learn_weights --base-model models/tiny-qwen2 \
        --adapters save/sports save/sports_beauty save/sports_toys \
        --objective likelihood --prompts testdata/sports_valid.jsonl --out-dir save/learned/sports

The raw weights w (one vector of N per adapted module; --grouping layer or adapter shares them) are
fitted by Adam with the base weights and the LoRA factors frozen; lambda = softmax(w / T) exactly as
the merge computes it, so merging with the written file (and the same --temperature / --normalize)
gives the model that was evaluated here. Objectives (merge/objectives.py): likelihood, the
cross-entropy of the candidate ranking against the true item (labelled samples, e.g. the
validation split); entropy, the entropy of the distribution over each prompt's candidates (no label
read: it may run on the test prompts). A seeded share of the prompts (--holdout) is held out; the w
with the best held-out objective (equal weights included, at step 0) is written, and fitting stops
after --patience evaluations without improvement.

Memory (merge/fit_memory.py): each step's gradient is accumulated over micro-batches of
--micro-batch-size prompts (1: one prompt and its candidates per forward/backward pass), so peak memory
does not grow with --batch-size; --gradient-checkpointing (on by default on CUDA) keeps one decoder
layer's activations at a time. A pass that runs out of CUDA memory is redone at half the micro-batch size.
"""

import argparse
import math
import os
import random
import time

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from common.cli import UserError, run_main
from common.io import atomic_path, write_json_atomic
from inference.loading import SDPA_BACKENDS, attention_backends
from inference.memory import peak_memory_mb
from merge.adapters import check_compatible, load_adapter
from merge.fit_memory import (
    CHECKPOINTING,
    MicroBatches,
    accumulate_gradient,
    mean_objective,
    use_checkpointing,
)
from merge.learn_report import adapter_names, write_curve, write_heatmap
from merge.methods import NORMALIZE
from merge.objectives import NORMS, OBJECTIVES, read_prompts
from merge.weighted_model import GROUPINGS, WeightedMerge, check_base


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-model", required=True, help="HF model folder the adapters were trained on")
    p.add_argument("--adapters", nargs="+", required=True, help="adapter folders, target first")
    p.add_argument("--objective", required=True, choices=sorted(OBJECTIVES))
    p.add_argument("--prompts", required=True,
                   help="WeaveRec jsonl: labelled validation samples (likelihood), target prompts (entropy)")
    p.add_argument("--out-dir", required=True, help="weights file, report.json, objective.png, lambdas.png")
    p.add_argument("--format", default="json", choices=("json", "safetensors"), help="of the weights file")
    p.add_argument("--grouping", default="module", choices=GROUPINGS, help="one w vector per ...")
    p.add_argument("--normalize", default="softmax", choices=NORMALIZE, help="w -> lambda, as the merge")
    p.add_argument("--temperature", type=float, default=1.0, help="T in softmax(w / T), as the merge")
    p.add_argument("--init", type=float, default=1.0, help="initial w of every adapter (1: equal weights)")
    p.add_argument("--steps", type=int, default=200, help="most optimisation steps")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate on w")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    p.add_argument("--micro-batch-size", type=int, default=1,
                   help="prompts per forward/backward pass (the step's gradient is accumulated over them); "
                        "halved on CUDA out-of-memory")
    p.add_argument("--gradient-checkpointing", default="auto", choices=CHECKPOINTING,
                   help="recompute each decoder layer in the backward pass (auto: on CUDA)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of prompts held out for early stopping")
    p.add_argument("--eval-every", type=int, default=10, help="steps between held-out evaluations")
    p.add_argument("--patience", type=int, default=5, help="evaluations without improvement before stopping")
    p.add_argument("--limit", type=int, help="only the first N prompts of the file")
    p.add_argument("--score-norm", default="sum", choices=NORMS,
                   help="the candidate score the objective ranks by, as inference --score-norm")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the base model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="of the forward pass (auto: bfloat16 on a GPU, float32 on CPU); w is float32")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--sdpa-backends", choices=SDPA_BACKENDS, default="auto",
                   help="attention kernels (auto: all but cuDNN's, which plans anew for every shape; docs/inference.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def check_args(args):
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise UserError(f"--temperature must be a positive number, got {args.temperature}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError(f"--lr must be a positive number, got {args.lr}")
    if not math.isfinite(args.init):
        raise UserError(f"--init must be a finite number, got {args.init}")
    for name in ("steps", "batch_size", "micro_batch_size", "eval_every", "patience", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= args.holdout < 1:
        raise UserError(f"--holdout must be in [0, 1), got {args.holdout}")
    if len({os.path.abspath(a) for a in args.adapters}) != len(args.adapters):
        raise UserError("the same adapter folder is given twice")


def split(prompts, holdout, seed):
    """(training prompts, held-out prompts): a seeded share held out, at least one when holdout > 0."""
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(holdout * len(prompts))) if holdout > 0 else 0
    if n_held >= len(prompts):
        raise UserError(f"{len(prompts)} prompts cannot be split into training and held-out parts "
                        "(give more prompts or --holdout 0)")
    return [prompts[i] for i in order[n_held:]], [prompts[i] for i in order[:n_held]]


def batches(prompts, size, seed):
    """Endless seeded batches: every epoch a new shuffle of the training prompts."""
    rng = random.Random(seed + 1)
    while True:
        order = list(range(len(prompts)))
        rng.shuffle(order)
        for i in range(0, len(order), size):
            yield [prompts[j] for j in order[i:i + size]]


def evaluate(model, merge, prompts, args, micro):
    """Mean objective over `prompts` at the current w, in micro-batches."""
    def run(part, size):
        return mean_objective(model, merge, part, size, args.objective, args.score_norm)
    return micro.run(run, prompts)


def train_step(model, merge, opt, batch, args, micro):
    """One Adam step on the batch's mean objective, its gradient accumulated over micro-batches (the
    whole step redone from its start when a micro-batch runs out of memory); returns that mean."""
    def run(part, size):
        opt.zero_grad(set_to_none=True)
        return accumulate_gradient(model, merge, part, size, args.objective, args.score_norm)
    loss = micro.run(run, batch, params=[merge.w])
    opt.step()
    return loss


def fit(model, merge, train, held, args, micro):
    """Adam on w; returns the fit's record (curves, best step) and leaves the best w in `merge`."""
    torch.manual_seed(args.seed)
    opt = torch.optim.Adam([merge.w], lr=args.lr)
    rec = {"train": [], "heldout": [], "stopped_early": False}
    best = evaluate(model, merge, held, args, micro) if held else math.inf
    if held:
        rec["heldout"].append((0, best))
    best_w, best_step, bad = merge.w.detach().clone(), 0, 0
    bar = tqdm(range(1, args.steps + 1), desc=f"fit ({args.objective})", unit="step",
               disable=args.no_progress)
    stream = batches(train, args.batch_size, args.seed)
    for step in bar:
        loss = train_step(model, merge, opt, next(stream), args, micro)
        rec["train"].append((step, loss))
        if not held:
            best_w, best_step = merge.w.detach().clone(), step
        elif step % args.eval_every == 0 or step == args.steps:
            value = evaluate(model, merge, held, args, micro)
            rec["heldout"].append((step, value))
            if value < best:
                best, best_w, best_step, bad = value, merge.w.detach().clone(), step, 0
            else:
                bad += 1
            if bad >= args.patience:
                rec["stopped_early"] = True
                break
        shown = f" heldout={rec['heldout'][-1][1]:.4f}" if held else ""
        bar.set_postfix_str(f"objective={loss:.4f}{shown}")
    bar.close()
    if not torch.isfinite(best_w).all():
        raise UserError("the fitted weights are not finite (lower --lr)")
    with torch.no_grad():
        merge.w.copy_(best_w)
    rec.update(steps_run=step, best_step=best_step, best_heldout=best if held else None)
    return rec


def write_weights(path, table):
    if path.endswith(".safetensors"):
        with atomic_path(path) as tmp:
            save_file({m: torch.tensor(w, dtype=torch.float32) for m, w in table.items()}, tmp)
    else:
        write_json_atomic(path, table)


def load(args):
    """Adapters (checked against each other and the base), (training, held-out) prompts, the model:
    every check that can fail runs before the model's weights are loaded."""
    from common.folders import check_model_folder
    from inference.loading import (
        load_model,
        load_tokenizer,
        resolve_device,
        resolve_dtype,
    )

    adapters = [load_adapter(path) for path in args.adapters]
    check_compatible(adapters)
    check_model_folder(args.base_model, "base model folder")
    check_base(args.base_model, adapters)
    tokenizer = load_tokenizer(args.tokenizer or args.base_model)
    prompts = read_prompts(args.prompts, tokenizer, OBJECTIVES[args.objective]["labelled"], args.limit)
    train, held = split(prompts, args.holdout, args.seed)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = load_model(args.base_model, (), device, dtype, tokenizer)
    return adapters, (train, held), model, device, dtype


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    adapters, (train, held), model, device, dtype = load(args)
    if len(adapters) == 1 and args.normalize == "softmax":
        print("note: with one adapter softmax(w / T) is 1 whatever w is: the weights cannot change the merge")
    merge = WeightedMerge(model, adapters, args.grouping, args.normalize, args.temperature, args.init)
    checkpointing = use_checkpointing(model, args.gradient_checkpointing, device)
    micro = MicroBatches(min(args.micro_batch_size, args.batch_size), device, checkpointing)
    with attention_backends(args.sdpa_backends):
        rec = fit(model, merge, train, held, args, micro)
    rec.update(micro_batch_size=micro.size, gradient_checkpointing=checkpointing)
    weights_path = os.path.join(args.out_dir, f"weights.{args.format}")
    os.makedirs(args.out_dir, exist_ok=True)
    if os.path.exists(weights_path):
        os.remove(weights_path)  # an earlier fit's weights never sit beside this fit's report
    report = make_report(args, merge, rec, (train, held), device, dtype, weights_path)
    report["seconds"] = round(time.time() - start, 2)
    names = list(report["mean_lambdas"])
    write_json_atomic(os.path.join(args.out_dir, "report.json"), report)
    write_curve(os.path.join(args.out_dir, "objective.png"), rec["train"], rec["heldout"], args.objective)
    write_heatmap(os.path.join(args.out_dir, "lambdas.png"), report["lambdas"], names)
    write_weights(weights_path, merge.weights_table())  # last: a weights file means a finished fit
    summary(args, report, weights_path)
    return 0


SETTINGS = ("grouping", "normalize", "temperature", "init", "steps", "lr", "batch_size", "micro_batch_size",
            "gradient_checkpointing", "holdout", "eval_every", "patience", "score_norm", "seed")


def make_report(args, merge, rec, parts, device, dtype, weights_path):
    """Everything about the fit, lambdas per module included, for report.json."""
    lambdas = {m: lam.tolist() for m, lam in zip(merge.modules_, merge.lambdas().detach().cpu())}
    mean = torch.tensor(list(lambdas.values())).mean(0).tolist()
    return {"objective": args.objective, "prompts": args.prompts, "n_train": len(parts[0]),
            "n_heldout": len(parts[1]), "base_model": args.base_model, "adapters": args.adapters,
            "weights_file": weights_path, "settings": {k: getattr(args, k) for k in SETTINGS},
            "device": str(device), "dtype": dtype, **rec,
            "mean_lambdas": dict(zip(adapter_names(args.adapters), mean)), "lambdas": lambdas,
            "peak_memory_mb": round(peak_memory_mb(device), 1)}


def summary(args, report, weights_path):
    held, names = report["heldout"], list(report["mean_lambdas"])
    change = (f"{held[0][1]:.4f} -> {report['best_heldout']:.4f} on {report['n_heldout']} held-out prompts, "
              if held else "")
    early = " (stopped early)" if report["stopped_early"] else ""
    print(f"wrote {weights_path} ({len(report['lambdas'])} modules x {len(names)} weights, grouping "
          f"{args.grouping}) and report.json, objective.png, lambdas.png: {args.objective} {change}best step "
          f"{report['best_step']} of {report['steps_run']}{early}, {report['n_train']} training prompts, "
          f"{report['seconds']:.1f}s, peak {report['peak_memory_mb']:.0f} MB at micro-batch "
          f"{report['micro_batch_size']}, checkpointing {'on' if report['gradient_checkpointing'] else 'off'}")
    print("mean lambdas: " + "  ".join(f"{n} {v:.4f}" for n, v in report["mean_lambdas"].items()))
    print(f"merge with: python -m merge.merge_lora --adapters {' '.join(args.adapters)} --weights-file "
          f"{weights_path} --temperature {args.temperature} --normalize {args.normalize} --out OUT")


if __name__ == "__main__":
    run_main(main)
