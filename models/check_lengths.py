"""Count the training samples LLaMA-Factory would cut: reads sharegpt jsonl files and a model's tokenizer; writes nothing.

A sample longer than `cutoff_len` tokens (prompt + answer, encoded by LLaMA-Factory's own template and the
model's own tokenizer) loses its end: the tail of the candidate list, then the answer. scripts/train_lora.sh
calls check() before training; the command line measures files, e.g. to choose cutoff_len:

    python -m models.check_lengths --model ../shared/models/qwen2-7b-instruct-tokenizer \
        --cutoff-len 1200 traindata/beauty.jsonl traindata/sports.jsonl
"""

import argparse
import itertools
import json
import logging
import math
import os

from tqdm import tqdm

from common.cli import UserError, run_main
from models.families import choose_template

ROLES = ("user", "assistant")


def load_template(model, template):
    """The tokenizer and chat template exactly as LLaMA-Factory sets them up for training."""
    import transformers
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model import load_tokenizer

    transformers.logging.set_verbosity_error()
    logging.getLogger("llamafactory").setLevel(logging.WARNING)  # not its "Add pad token" lines on the console
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=model))["tokenizer"]
    return tokenizer, get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template))


def sample_length(tokenizer, template, sample):
    """Tokens of one sharegpt sample as LLaMA-Factory's supervised processor builds it, before any cut."""
    messages = list(sample["messages"])
    system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else None
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if [m["role"] for m in turns] != [ROLES[i % 2] for i in range(len(turns))] or len(turns) % 2:
        raise UserError("a sample is not system?, (user, assistant)+ messages")
    pairs = template.encode_multiturn(tokenizer, turns, system, None)
    return sum(len(s) + len(t) for s, t in pairs) + (1 if template.efficient_eos else 0)


def file_lengths(path, tokenizer, template, max_samples=None, progress=False):
    """Token length of each of the first `max_samples` lines of `path` (all lines when None)."""
    if not os.path.isfile(path):
        raise UserError(f"dataset file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = [line for line in itertools.islice(f, max_samples) if line.strip()]
    lengths = []
    for lineno, line in enumerate(tqdm(lines, desc="token lengths", unit="sample", disable=not progress,
                                       leave=False), 1):
        try:
            lengths.append(sample_length(tokenizer, template, json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, UserError) as err:
            raise UserError(f"{path}:{lineno}: not a sharegpt sample ({err})") from None
    return lengths


def summary(lengths, cutoff_len):
    """{samples, longest, p99, over}: `over` counts samples longer than cutoff_len."""
    ordered = sorted(lengths)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else 0
    return {"samples": len(ordered), "longest": ordered[-1] if ordered else 0, "p99": p99,
            "over": sum(n > cutoff_len for n in ordered), "cutoff_len": cutoff_len}


def check(path, model, template, cutoff_len, max_samples=None, max_cut=0.001, progress=False):
    """The summary of `path`; UserError when more than `max_cut` of its samples would be cut."""
    tokenizer, tpl = load_template(model, template)
    return check_loaded(path, tokenizer, tpl, cutoff_len, max_samples, max_cut, progress)


def check_loaded(path, tokenizer, tpl, cutoff_len, max_samples=None, max_cut=0.001, progress=False):
    """check() with the tokenizer and template load_template() gave."""
    stats = summary(file_lengths(path, tokenizer, tpl, max_samples, progress), cutoff_len)
    if stats["samples"] and stats["over"] > max_cut * stats["samples"]:
        raise UserError(
            f"{stats['over']:,} of {stats['samples']:,} samples ({stats['over'] / stats['samples']:.1%}) in {path} "
            f"are longer than cutoff_len {cutoff_len:,} tokens (longest {stats['longest']:,}) and LLaMA-Factory "
            f"would cut their end; raise cutoff_len (TRAIN_ARGS=\"cutoff_len={stats['longest']}\") or lower HISTORY "
            f"in scripts/make_data.sh (MAX_CUT={max_cut} is the share tolerated)")
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="sharegpt jsonl files (traindata/<dataset>.jsonl)")
    p.add_argument("--model", required=True, help="model folder whose tokenizer LLaMA-Factory will use")
    p.add_argument("--template", help="LLaMA-Factory template (default: the model's own, models/families.py)")
    p.add_argument("--cutoff-len", type=int, default=1200)
    p.add_argument("--max-samples", type=int, help="only the first N lines, as LLaMA-Factory's max_samples")
    args = p.parse_args(argv)
    if not os.path.isdir(args.model):
        raise UserError(f"model folder not found: {args.model}")
    tokenizer, template = load_template(args.model, choose_template(args.model, args.template, "--template")[0])
    print(f"{'file':<40} {'samples':>8} {'longest':>8} {'p99':>6} {'over ' + str(args.cutoff_len):>10}")
    for path in args.files:
        s = summary(file_lengths(path, tokenizer, template, args.max_samples, progress=True), args.cutoff_len)
        print(f"{path:<40} {s['samples']:>8,} {s['longest']:>8,} {s['p99']:>6,} "
              f"{s['over']:>6,} ({s['over'] / max(1, s['samples']):.1%})")
    return 0


if __name__ == "__main__":
    run_main(main)
