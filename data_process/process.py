"""Process one Amazon domain: reads RAW_DIR's review + meta files, writes traindata/<d>.jsonl,
<d>.items.jsonl, <d>.stats.json, registers <d> in traindata/dataset_info.json, and writes
testdata/<d>.jsonl and testdata/<d>_valid.jsonl.

Users with fewer than 3 items after dropping untitled items are dropped (counted); equal
timestamps within a user keep the review file's line order. See readers.py for which bad
input stops the run and which is skipped with a warning.
"""

import argparse
import os
import time

import numpy as np
from tqdm import tqdm

from common import dataset_info
from common.cli import UserError, run_main
from common.domains import category, short_name
from common.io import atomic_path, write_json_atomic, write_jsonl_atomic
from data_process import items as it
from data_process.readers import raw_files, read_meta, read_reviews
from data_process.samples import SampleBuilder, train_positions

# independent seeded random streams, so one option does not shift another's draws
TEST_USERS, TRAIN_PICK, VALID_PICK, SHUFFLE, TEST_NEG, VALID_NEG, TRAIN_NEG = range(7)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--raw-dir", required=True, help="folder with the raw .json.gz files")
    p.add_argument("--domain", required=True, help="short name (beauty) or category (Beauty)")
    p.add_argument("--train-dir", required=True)
    p.add_argument("--test-dir", required=True)
    p.add_argument("--train-samples", type=int, default=30000, help="training samples in the train file")
    p.add_argument("--valid-samples", type=int, default=-1,
                   help="validation samples in the train file (-1: all, as the original)")
    p.add_argument("--test-users", type=int, default=0, help="users in the test/valid files (0: all)")
    p.add_argument("--history", type=int, default=20, help="most recent items shown (0: all)")
    p.add_argument("--candidates", type=int, default=30)
    p.add_argument("--answer-items", type=int, default=5, choices=range(1, 6), metavar="{1..5}",
                   help="titles in a training answer: 5 = the target + 4 negatives, as the published "
                        "code; 1 = the target alone (test and validation files keep 5)")
    p.add_argument("--title-words", type=int, default=0, metavar="N",
                   help="keep the first N words of each title (0: whole titles); cutting changes no "
                        "user, item or interaction, titles that become equal are told apart as usual")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--refilter-5core", action="store_true",
                   help="re-apply 5-core filtering after dropping items without a title")
    p.add_argument("--max-bad-fraction", type=float, default=0.001,
                   help="share of bad lines a file may have; they are skipped with a warning")
    args = p.parse_args(argv)
    if args.title_words < 0:
        raise UserError("--title-words must be 0 (whole titles) or more")
    if args.train_samples < 0 or args.test_users < 0 or args.valid_samples < -1:
        raise UserError("--train-samples, --valid-samples and --test-users must not be negative")
    if args.train_samples == 0 and args.valid_samples == 0:
        raise UserError("--train-samples 0 with --valid-samples 0 would write an empty train file")
    return args


def load(args, cat):
    """Read and filter the raw files: (user ids, sequences as item-id lists, item asins, titles, stats)."""
    reviews_path, meta_path = raw_files(args.raw_dir, cat)
    users, asins, times, bad_reviews = read_reviews(reviews_path, args.max_bad_fraction)
    meta, bad_meta = read_meta(meta_path, set(asins), args.max_bad_fraction)
    titles, brands, no_meta, no_title = it.clean_items(asins, meta, args.title_words)
    keep = [i for i, a in enumerate(asins) if a in titles]
    if args.refilter_5core:
        sub = it.kcore([users[i] for i in keep], [asins[i] for i in keep])
        keep = [keep[j] for j in sub]
    seqs = it.sequences(users, asins, times, keep)
    short = {u: s for u, s in seqs.items() if len(s) < it.MIN_SEQUENCE}
    seqs = {u: s for u, s in seqs.items() if len(s) >= it.MIN_SEQUENCE}
    if not seqs:
        raise UserError(f"{reviews_path}: no user has {it.MIN_SEQUENCE} or more titled items")
    item_ids = {a: None for s in seqs.values() for a in s}
    item_asins = list(item_ids)
    for i, a in enumerate(item_asins):
        item_ids[a] = i
    unique, renamed = it.disambiguate({a: titles[a] for a in item_asins}, brands)
    stats = {
        "users": len(seqs), "items": len(item_asins),
        "interactions": sum(len(s) for s in seqs.values()),
        "dropped": {
            "bad_review_lines": bad_reviews, "bad_meta_lines": bad_meta,
            "items_without_meta": no_meta, "items_without_title": no_title,
            "interactions": len(asins) - len(keep) + sum(len(s) for s in short.values()),
            "users_under_3_items": len(short),
            "items_by_filtering": len(titles) - len(item_asins),
        },
        "titles_disambiguated": renamed,
    }
    id_seqs = {u: [item_ids[a] for a in s] for u, s in seqs.items()}
    return id_seqs, item_asins, [unique[a] for a in item_asins], stats


def train_counts(seqs, n_items):
    """Interactions of each item inside training prefixes (each user's items but the last two)."""
    counts = np.zeros(n_items, dtype=np.int64)
    for s in seqs:
        np.add.at(counts, s[:-2], 1)
    return counts.tolist()


def pick_users(n, count, rng):
    """Sorted indices of `count` users drawn at random (all when count is 0 or covers them)."""
    if count == 0 or count >= n:
        return list(range(n))
    return sorted(rng.choice(n, size=count, replace=False).tolist())


def _write(path, lines):
    """Write an iterable of jsonl lines to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)


def write_outputs(args, domain, user_names, seqs, builder):
    """Render and write the test, valid and train files; return the sample counts."""
    def rng(stream):
        return np.random.default_rng([args.seed, stream])

    def bar(items, split):
        return tqdm(items, desc=f"{domain} {split}", disable=None)

    test_users = pick_users(len(seqs), args.test_users, rng(TEST_USERS))
    draws = builder.draws(rng(TEST_NEG))
    _write(os.path.join(args.test_dir, f"{domain}.jsonl"),
           (builder.render(builder.build(seqs[u], len(seqs[u]) - 1, draws), user_names[u])
            for u in bar(test_users, "test")))
    draws = builder.draws(rng(VALID_NEG))
    valid = [builder.build(s, len(s) - 2, draws) for s in bar(seqs, "valid")]
    _write(os.path.join(args.test_dir, f"{domain}_valid.jsonl"),
           (builder.render(valid[u], user_names[u]) for u in test_users))
    n_valid = len(seqs) if args.valid_samples == -1 else args.valid_samples
    rows = [(u, None) for u in pick_users(len(seqs), n_valid, rng(VALID_PICK))] if n_valid else []
    picks, available = train_positions([len(s) for s in seqs], args.train_samples, rng(TRAIN_PICK))
    rows += picks
    train_draws = builder.draws(rng(TRAIN_NEG))

    def train_line(u, k):  # k None: the user's validation sample, shared with the valid file
        sample = valid[u] if k is None else builder.build(seqs[u], k, train_draws)
        return builder.render(sample, answer_items=args.answer_items)

    order = rng(SHUFFLE).permutation(len(rows)).tolist()
    _write(os.path.join(args.train_dir, f"{domain}.jsonl"), (train_line(*rows[j]) for j in bar(order, "train")))
    return {"train_file": len(rows), "train_file_valid": len(rows) - len(picks), "train_file_train": len(picks),
            "train_positions": available, "test": len(test_users), "valid": len(test_users)}


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    cat = category(args.domain, args.raw_dir)
    domain = short_name(cat)
    seqs_by_user, item_asins, titles, stats = load(args, cat)
    user_names, seqs = list(seqs_by_user), list(seqs_by_user.values())
    builder = SampleBuilder(titles, args.history, args.candidates)
    counts = train_counts(seqs, len(titles))
    write_jsonl_atomic(os.path.join(args.train_dir, f"{domain}.items.jsonl"), (
        {"id": i, "asin": a, "title": t, "train_count": c}
        for i, (a, t, c) in enumerate(zip(item_asins, titles, counts))))
    stats["samples"] = write_outputs(args, domain, user_names, seqs, builder)
    stats["options"] = {k: getattr(args, k) for k in
                        ("train_samples", "valid_samples", "test_users", "history", "candidates",
                         "answer_items", "title_words", "seed", "refilter_5core")}
    write_json_atomic(os.path.join(args.train_dir, f"{domain}.stats.json"), {"domain": domain, **stats})
    dataset_info.register(args.train_dir, [domain])
    s = stats["samples"]
    print(f"{domain}: {stats['users']} users, {stats['items']} items, {stats['interactions']} "
          f"interactions; dropped {stats['dropped']['items_without_meta']} items without meta, "
          f"{stats['dropped']['items_without_title']} without title, "
          f"{stats['dropped']['users_under_3_items']} users under 3 items; wrote "
          f"{s['train_file']} train lines, {s['test']} test, {s['valid']} valid samples "
          f"in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    run_main(main)
