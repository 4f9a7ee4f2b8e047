"""The test examples of an inference run: read from a test file, cut into the chunks a runner receives,
and checked against their outputs. Shared by the command line (inference/generate.py), its jobs
(inference/jobs.py) and the benchmarks."""

from common.cli import UserError
from common.io import read_jsonl
from common.prompt import TOP_K, parse_user_prompt, sample_parts, split_titles

DEFAULT_BATCH_SIZE = 32
CHUNK_BATCHES = 8  # examples handed to the runner at once, in batches: the unit of saved progress


def read_tests(path, mode, limit=None):
    """Test examples: id, system, user and the prompt's candidates (None if unparsable in free mode)."""
    rows = read_jsonl(path, "test file")
    if not rows:
        raise UserError(f"test file is empty: {path}")
    rows = rows[:limit] if limit else rows
    examples = []
    for i, row in enumerate(rows):
        try:
            system, user, _ = sample_parts(row, i + 1)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        try:
            candidates = parse_user_prompt(user)[1]
        except UserError as err:
            if mode != "free":
                raise UserError(f"{path}: line {i + 1}: {err} (needed by --mode {mode})") from None
            candidates = None
        if mode != "free" and not any(c.strip() for c in candidates):
            raise UserError(f"{path}: line {i + 1}: the candidate list is empty")
        examples.append({"id": i, "system": system, "user": user, "candidates": candidates})
    return examples


def chunk_batch(args):
    """The batch size chunks are cut by: --batch-size, or with auto the default (on a GPU the batches that
    run may be larger or smaller; on CPU auto is the default itself), so auto and a given size chunk alike."""
    return DEFAULT_BATCH_SIZE if args.batch_size == "auto" else args.batch_size


def chunks_of(examples, args):
    """The chunks handed to the runner, longest prompts first; fixed for given inputs (a resumed run and
    every data-parallel worker cut the same chunks). Needs each example's "prompt_ids"."""
    size = chunk_batch(args) * CHUNK_BATCHES
    order = sorted(examples, key=lambda ex: (-len(ex["prompt_ids"]), ex["id"]))
    return [order[i:i + size] for i in range(0, len(order), size)]


def validity(examples, records):
    """(share of output titles that are candidates, share of outputs that are 5 distinct candidates)."""
    items = valid = full = answers = 0
    for ex, rec in zip(examples, records):
        if ex["candidates"] is None:
            continue
        answers += 1
        cands = {c.strip() for c in ex["candidates"]}
        titles = split_titles(rec["output"])
        items += len(titles)
        valid += sum(t in cands for t in titles)
        full += len(titles) == TOP_K and len(set(titles)) == TOP_K and all(t in cands for t in titles)
    return valid / max(items, 1), full / max(answers, 1)
