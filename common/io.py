"""Shared file helpers: jsonl reading/writing and atomic replacement of outputs."""

import contextlib
import json
import os
import shutil
import tempfile

from common.cli import UserError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or an error inside the block leaves no file at `path` that looks complete.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path, may_replace=None, kind="output of this stage"):
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds.

    may_replace(path) -> bool decides whether an existing `path` may be replaced (default: always);
    when it says no, UserError before anything is written.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and may_replace is not None and not may_replace(path):
        raise UserError(f"output {path} exists and is not an earlier {kind}; choose another --out")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
    try:
        yield tmp
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def dump_jsonl_line(obj):
    """One jsonl line, the same bytes for the same object (keys keep insertion order)."""
    return json.dumps(obj, ensure_ascii=False) + "\n"


def write_jsonl_atomic(path, rows):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(dump_jsonl_line(row))


def iter_jsonl(path, what="file", strict=False):
    """Yield (line number, text, parsed object) for each line of a jsonl file.

    A line that is not JSON, a file that is not UTF-8 or cannot be read: UserError naming the file and
    line. Blank lines are skipped; with strict=True (files aligned line by line with another, such as
    predictions with their test file) a blank line is allowed only at the end.
    """
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    blank = None
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    blank = blank or lineno
                    continue
                if strict and blank:
                    raise UserError(f"{path}:{blank}: blank line inside a jsonl {what} (alignment would shift)")
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg}; a jsonl {what} has one object a line)") from None
                yield lineno, line, obj
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text (expected jsonl)") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror}") from None


def read_jsonl(path, what="file", strict=False):
    """The parsed lines of a jsonl file, as a list (see iter_jsonl); strict: also refuse an empty file."""
    rows = [obj for _, _, obj in iter_jsonl(path, what, strict)]
    if strict and not rows:
        raise UserError(f"{what} {path} is empty")
    return rows


def read_json(path, what="file"):
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg})") from None
