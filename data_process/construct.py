"""Mixed-domain training files: reads traindata/<T>.jsonl and traindata/<S>.jsonl, writes
traindata/<T>_<S>.jsonl for every source S (and with --all-mixed traindata/<T>_<S1>_<S2>...jsonl),
and registers each in traindata/dataset_info.json.

Each file holds up to --cap seeded random lines of each domain's file, shuffled. The draws for a
file depend only on the seed and the file's name, so adding a source changes no other file.
"""

import argparse
import json
import os
import time
import zlib

import numpy as np

from common import dataset_info
from common.cli import UserError, run_main
from common.domains import CATEGORIES, short_name
from common.io import atomic_path


def read_lines(path):
    """The lines of a sharegpt jsonl file, each ending in a newline; UserError on a bad line."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ok = isinstance(json.loads(line).get("messages"), list)
            except (json.JSONDecodeError, AttributeError):
                ok = False
            if not ok:
                raise UserError(f"{path}:{lineno}: not a sharegpt line with 'messages'")
            lines.append(line if line.endswith("\n") else line + "\n")
    if not lines:
        raise UserError(f"{path}: empty file")
    return lines


def domain_file(train_dir, name):
    """traindata/<name>.jsonl of a domain; UserError for an unknown domain or a missing file."""
    path = os.path.join(train_dir, f"{name}.jsonl")
    if os.path.isfile(path):
        return path
    if name not in CATEGORIES:
        raise UserError(f"unknown domain '{name}': no {path} (known: {', '.join(sorted(CATEGORIES))})")
    raise UserError(f"{path} not found; run data_process.process --domain {name} first")


def mix(name, parts, cap, seed, train_dir):
    """Write train_dir/<name>.jsonl: up to `cap` random lines of each part, shuffled; return the count."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    chosen = []
    for lines in parts:
        picks = rng.choice(len(lines), size=min(cap, len(lines)), replace=False)
        chosen.extend(lines[i] for i in picks.tolist())
    order = rng.permutation(len(chosen)).tolist()
    with atomic_path(os.path.join(train_dir, f"{name}.jsonl")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(chosen[i] for i in order)
    return len(chosen)


def check_names(target, sources):
    if target in sources:
        raise UserError(f"target '{target}' is also listed among the sources")
    if len(set(sources)) != len(sources):
        raise UserError(f"a source is listed twice: {' '.join(sources)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-dir", required=True)
    p.add_argument("--target", required=True, help="target domain (short name)")
    p.add_argument("--sources", nargs="+", required=True, help="source domains (short names)")
    p.add_argument("--cap", type=int, default=40000, help="lines taken from each domain's file")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--all-mixed", action="store_true",
                   help="also write <target>_<s1>_<s2>... with every domain (naive mixed training)")
    args = p.parse_args(argv)
    start = time.time()
    target, sources = short_name(args.target), [short_name(s) for s in args.sources]
    check_names(target, sources)
    if args.cap < 1:
        raise UserError("--cap must be at least 1")
    dataset_info.load(args.train_dir)  # a broken registry stops the run before anything is written
    lines = {d: read_lines(domain_file(args.train_dir, d)) for d in [target, *sources]}
    outputs = {f"{target}_{s}": [target, s] for s in sources}
    if args.all_mixed:
        outputs["_".join([target, *sources])] = [target, *sources]
    written = []
    for name, domains in outputs.items():
        count = mix(name, [lines[d] for d in domains], args.cap, args.seed, args.train_dir)
        written.append(f"{os.path.join(args.train_dir, name + '.jsonl')} ({count:,} lines)")
    dataset_info.register(args.train_dir, list(outputs))
    print(f"wrote {', '.join(written)}; registered in {os.path.join(args.train_dir, dataset_info.FILE_NAME)} "
          f"({time.time() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    run_main(main)
