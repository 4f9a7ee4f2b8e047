"""Training budgets of LoRA modules: reads traindata/<ds>.jsonl and save/<ds>/ (what LLaMA-Factory wrote:
all_results.json, trainer_state.json, trainer_log.jsonl), writes <out-dir>/training.{json,md}.

One row per module: the lines of its training file, the epochs, the samples it was trained on
(examples x epochs, as the trainer counts them), its optimisation steps, its training seconds and
its first and last logged losses, so a reader sees that every module read its whole file for the
same number of epochs.

    python -m metric.training --data-dir traindata --save-dir save --datasets sports sports_beauty \
        --out-dir result/compare_sports
"""

import argparse
import json
import os

from common.cli import UserError, run_main
from common import io
from common.io import write_json_atomic, write_text_atomic


def count_lines(path):
    """Non-blank lines of a jsonl file."""
    if not os.path.isfile(path):
        raise UserError(f"training file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def read_json(path):
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: is the module trained (scripts/train_lora.sh)?")
    return io.read_json(path)


def logged_losses(path):
    """The training losses LLaMA-Factory logged (trainer_log.jsonl), in order; [] without the file."""
    if not os.path.isfile(path):
        return []
    losses = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("loss"), (int, float)):
                losses.append(float(row["loss"]))
    return losses


def module_row(data_dir, save_dir, dataset):
    """The budget of one trained module."""
    folder = os.path.join(save_dir, dataset)
    results = read_json(os.path.join(folder, "all_results.json"))
    state = read_json(os.path.join(folder, "trainer_state.json"))
    runtime = float(results.get("train_runtime", 0.0))
    losses = logged_losses(os.path.join(folder, "trainer_log.jsonl"))
    return {
        "dataset": dataset,
        "lines": count_lines(os.path.join(data_dir, f"{dataset}.jsonl")),
        "epochs": float(results.get("epoch", state.get("epoch", 0.0))),
        "samples": round(float(results.get("train_samples_per_second", 0.0)) * runtime),
        "steps": int(state.get("global_step", 0)),
        "seconds": round(runtime, 1),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


def markdown(rows):
    def loss(x):
        return "n/a" if x is None else f"{x:.3f}"
    out = ["| module (dataset) | lines in its file | epochs | samples trained | optimisation steps | "
           "seconds | loss first -> last logged |", "|" + " --- |" * 7]
    for r in rows:
        out.append(f"| {r['dataset']} | {r['lines']:,} | {r['epochs']:g} | {r['samples']:,} | {r['steps']:,} | "
                   f"{r['seconds']:.0f} | {loss(r['first_loss'])} -> {loss(r['last_loss'])} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="the LLaMA-Factory dataset_dir (traindata)")
    p.add_argument("--save-dir", required=True, help="folder holding one trained module per dataset")
    p.add_argument("--datasets", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    rows = [module_row(args.data_dir, args.save_dir, d) for d in dict.fromkeys(args.datasets)]
    md = markdown(rows)
    write_json_atomic(os.path.join(args.out_dir, "training.json"), rows)
    write_text_atomic(os.path.join(args.out_dir, "training.md"), "# Training budgets\n\n" + md)
    each = ", ".join(f"{r['dataset']} {r['samples']:,}" for r in rows)
    print(f"wrote {args.out_dir}/training.json, training.md: {len(rows)} modules, samples trained: {each}")
    return 0


if __name__ == "__main__":
    run_main(main)
