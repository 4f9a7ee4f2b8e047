"""Build the embedded base model: reads traindata/<d>.items.jsonl + traindata/<d>.jsonl, writes an HF folder.

Trains a byte-level BPE tokenizer on the item titles and the fixed prompt text, builds a small
Qwen2-architecture model, pre-trains it on next-title sequences, and saves it atomically (a temporary
folder renamed onto --out), with build_info.json recording what was done.

    python -m models.build_base --train-dir traindata --domains beauty sports toys --out models/tiny-qwen2
"""

import argparse
import os
import time

import torch

from common.cli import UserError, run_main
from common.io import atomic_dir, read_jsonl, write_json_atomic
from common.prompt import CANDIDATES_CLOSE, CANDIDATES_OPEN, HISTORY_OPEN, SEP, SYSTEM
from models.pretrain import pretrain, title_sequences, token_stream
from models.tiny import init_model, save_model, tiny_config
from models.tokenizer import train_tokenizer


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-dir", required=True, help="folder with <d>.items.jsonl and <d>.jsonl")
    p.add_argument("--domains", nargs="+", required=True, help="short domain names, e.g. beauty sports")
    p.add_argument("--out", required=True, help="model folder to write (replaced atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--steps", type=int, default=600, help="pre-training steps (0: no pre-training)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop pre-training after this long (makes the result depend on speed)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block-size", type=int, default=128, help="tokens per pre-training window")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed, for reproducibility)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("vocab_size", "hidden_size", "layers", "heads", "kv_heads", "batch_size", "block_size", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.steps < 0:
        raise UserError("--steps must be 0 or more")
    if args.hidden_size % args.heads or args.heads % args.kv_heads:
        raise UserError("--hidden-size must be a multiple of --heads, and --heads a multiple of --kv-heads")
    return args


def read_domains(train_dir, domains):
    """(all item titles, all sharegpt samples) of the domains; UserError naming a missing file."""
    titles, samples = [], []
    for d in domains:
        items = read_jsonl(os.path.join(train_dir, f"{d}.items.jsonl"), what=f"items file of '{d}'")
        titles.extend(str(row["title"]) for row in items if row.get("title"))
        samples.extend(read_jsonl(os.path.join(train_dir, f"{d}.jsonl"), what=f"training file of '{d}'"))
    if not titles or not samples:
        raise UserError(f"no titles or no samples in {train_dir} for {' '.join(domains)}")
    return titles, samples


def build_tokenizer(titles, sequences, vocab_size, max_sequences=20000):
    """BPE on every title, users' sequences (so '||' and popular titles merge) and the prompt text."""
    fixed = [SYSTEM, HISTORY_OPEN, CANDIDATES_OPEN, CANDIDATES_CLOSE, SEP]
    texts = titles + [SEP.join(s) for s in sequences[:max_sequences]] + fixed * 100
    return train_tokenizer(texts, vocab_size=vocab_size)


def save_atomic(model, tokenizer, out, info):
    """Write into a temporary folder beside `out`, then swap it in; a failure leaves no partial `out`."""
    with atomic_dir(out) as tmp:
        save_model(model, tokenizer, tmp)
        write_json_atomic(os.path.join(tmp, "build_info.json"), info)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    titles, samples = read_domains(args.train_dir, args.domains)
    sequences = title_sequences(samples, args.seed)
    tokenizer = build_tokenizer(titles, sequences, args.vocab_size)
    config = tiny_config(tokenizer, hidden_size=args.hidden_size, num_layers=args.layers,
                         num_heads=args.heads, num_kv_heads=args.kv_heads)
    model = init_model(config, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tokenizer)} tokens; model: {n_params:,} parameters; "
          f"{len(titles)} titles, {len(sequences)} sequences")
    losses, secs, stopped, trained = [], 0.0, False, "no pre-training"
    if args.steps:
        # about twice the tokens that training reads, so no time goes into encoding text never seen
        stream = token_stream(tokenizer, sequences, max_tokens=2 * args.steps * args.batch_size * args.block_size)
        try:
            losses, secs, stopped = pretrain(
                model, stream, args.steps, batch_size=args.batch_size, block_size=args.block_size,
                lr=args.lr, seed=args.seed, max_minutes=args.max_minutes, progress=not args.no_progress)
        except ValueError as err:
            raise UserError(str(err)) from None
        trained = f"{len(losses)} pre-training steps over {len(stream):,} tokens in {secs:.0f}s" \
            + (" (stopped by --max-minutes)" if stopped else "")
    tail = losses[-max(1, min(50, len(losses) // 10)):]  # mean of the last 10% (at most 50) steps
    info = {
        "domains": args.domains, "seed": args.seed, "parameters": n_params, "vocab_size": len(tokenizer),
        "hidden_size": args.hidden_size, "layers": args.layers, "threads": args.threads,
        "batch_size": args.batch_size, "block_size": args.block_size, "steps_done": len(losses),
        "stopped_by_time": stopped, "first_loss": losses[0] if losses else None,
        "final_loss": sum(tail) / len(tail) if tail else None, "pretrain_seconds": round(secs, 1),
    }
    save_atomic(model, tokenizer, args.out, info)
    final = f"{info['final_loss']:.3f}" if tail else "n/a"
    print(f"wrote {args.out}: {trained}, final loss {final}; {time.time() - start:.0f}s in all")
    return 0


if __name__ == "__main__":
    run_main(main)
