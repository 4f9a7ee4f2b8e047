"""Read a test file and prediction files, strictly aligned line by line (no line is ever skipped).

Prediction lines may be, in any mix:
- ours: {"id": i, "output": "t1||...||t5", ...}; `id` must equal the 0-based line index;
  score mode's extra "ranking"/"scores" are ignored (metrics read "output");
- the published code's: one JSON string a line (the raw generated text);
- LLaMA-Factory's generated_predictions.jsonl: {"predict": ..., "label": ...}; when "label" is
  there its first `||` field must agree with the test answer, or the files are misaligned.
"""

from pathlib import Path

from common.cli import UserError
from common.io import read_jsonl
from common.prompt import parse_user_prompt, sample_parts
from metric.ranking import normalise, truth_of

RUN_FILES = ("output.jsonl", "output/output.jsonl", "generated_predictions.jsonl")


def load_test(path, match):
    """(normalised truths, candidate title lists, normalised candidate sets), one per line."""
    truths, cand_lists, cand_sets = [], [], []
    for lineno, row in enumerate(read_jsonl(path, "test file", strict=True), 1):
        _, user, answer = sample_parts(row, lineno)
        if not isinstance(answer, str) or not answer.strip():
            raise UserError(f"{path}:{lineno}: test line has no assistant answer (ground truth)")
        try:
            _, cands = parse_user_prompt(user)
        except UserError as err:
            raise UserError(f"{path}:{lineno}: {err}") from None
        truths.append(truth_of(answer, match))
        cand_lists.append(cands)
        cand_sets.append({normalise(c, match) for c in cands})
    return truths, cand_lists, cand_sets


def _output_of(row, index, truth, match, where):
    """The generated text of one prediction line, whatever its format."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON string or object, got {type(row).__name__}")
    if "output" in row:
        if "id" in row and row["id"] != index:
            raise UserError(f"{where}: id {row['id']!r} does not match line index {index} (misaligned)")
        text = row["output"]
    elif "predict" in row:
        text = row["predict"]
        label = row.get("label")
        if isinstance(label, str) and label.strip() and not truth.startswith(truth_of(label, match)):
            raise UserError(f"{where}: its label does not match the test answer (misaligned files?)")
    else:
        raise UserError(f"{where}: no 'output' or 'predict' field")
    if not isinstance(text, str):
        raise UserError(f"{where}: the prediction is not a string")
    return text


def load_predictions(path, truths, match):
    """The generated texts of a prediction file, one per test line; UserError on any misalignment."""
    rows = read_jsonl(path, "prediction file", strict=True)
    if len(rows) != len(truths):
        raise UserError(f"{path} has {len(rows)} lines but the test file has {len(truths)}: "
                        "predictions must align line by line with the test file")
    return [_output_of(r, i, t, match, f"{path}:{i + 1}") for i, (r, t) in enumerate(zip(rows, truths))]


def discover(pred_dir):
    """Prediction files under a result folder: */output.jsonl (and the published */output/output.jsonl,
    LLaMA-Factory's */generated_predictions.jsonl) plus *.jsonl directly inside; sorted."""
    root = Path(pred_dir)
    if not root.is_dir():
        raise UserError(f"prediction folder not found: {pred_dir}")
    found = sorted(p for p in root.glob("*.jsonl") if p.is_file())
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        found += [run / f for f in RUN_FILES if (run / f).is_file()]
    if not found:
        raise UserError(f"no prediction files in {pred_dir} (looked for */output.jsonl and *.jsonl)")
    return [str(p) for p in found]


def default_name(path):
    """result/RUN/output.jsonl -> RUN; result/RUN/output/output.jsonl -> RUN; dir/foo.jsonl -> foo."""
    p = Path(path)
    if p.name in ("output.jsonl", "generated_predictions.jsonl"):
        parent = p.parent
        if parent.name == "output" and parent.parent.name:
            parent = parent.parent
        return parent.name or p.stem
    return p.stem
