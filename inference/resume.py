"""Resumable, never-duplicated prediction output.

A run writes, beside `<out>` (e.g. result/RUN/output.jsonl):
- `<out>.run.json`: the run's fingerprint (test file hash, model and adapter identities, decoding
  options), written before any prediction;
- `<out>.progress`: finished predictions, one JSON line each, appended and fsync'ed per chunk of batches; a
  trailing partial line (a kill in the middle of a write) is cut off on the next start.
When every test line is done, `<out>` is written atomically in id order and the progress file removed.
A rerun with the same fingerprint continues where the last one stopped (or does nothing if `<out>`
is complete); a different fingerprint is refused unless the caller overwrites.
"""

import hashlib
import json
import os

from common.cli import UserError
from common.io import dump_jsonl_line, write_json_atomic, write_jsonl_atomic

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(folder):
    """A cheap identity of a model folder: its real path, config hash, weight file names and sizes.

    Base models are large, so their weights are identified by size and modification time, not hashed.
    """
    entry = {"path": os.path.realpath(folder)}
    config = os.path.join(folder, "config.json")
    if os.path.isfile(config):
        entry["config_sha256"] = file_sha256(config)
    weights = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(WEIGHT_SUFFIXES) and os.path.isfile(path):
            st = os.stat(path)
            weights[name] = [st.st_size, st.st_mtime_ns]
    entry["weights"] = weights
    return entry


def adapter_identity(folder):
    """An adapter's real path plus the hashes of its config and weight files (small: hashed)."""
    entry = {"path": os.path.realpath(folder)}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if (name == "adapter_config.json" or name.startswith("adapter_model")) and os.path.isfile(path):
            entry[name] = file_sha256(path)
    return entry


def describe_difference(old, new):
    """'key: old -> new' for the first few differing top-level keys."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts = []
    for k in keys[:3]:
        a, b = old.get(k), new.get(k)
        short = all(isinstance(v, (int, float, str, type(None))) for v in (a, b))
        parts.append(f"{k}: {a} -> {b}" if short else f"{k} changed")
    return "; ".join(parts)


class ResumableOutput:
    """Predictions for ids 0..n-1 (or the given `ids`: a data-parallel worker's part), kept in
    `<out>.progress` until all are done, then `<out>`."""

    def __init__(self, out, fingerprint, n, ids=None):
        self.out = out
        self.run_path = out + ".run.json"
        self.progress_path = out + ".progress"
        self.fingerprint = fingerprint
        self.n = n
        self.ids = sorted(range(n) if ids is None else ids)
        self.done = {}

    def _read_run(self):
        if not os.path.isfile(self.run_path):
            return None
        try:
            with open(self.run_path, encoding="utf-8") as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def open(self, overwrite=False, replace_stale=False):
        """Prepare the run; returns False when `<out>` is already complete for this fingerprint.
        `overwrite`: start again whatever is there; `replace_stale`: start again only when what is there
        comes from other arguments or inputs (a changed adapter, test file...), else resume."""
        previous = self._read_run()
        same = previous == self.fingerprint
        if same and os.path.isfile(self.out) and not overwrite:
            self._remove(self.progress_path)
            return False
        exists = os.path.isfile(self.out) or os.path.isfile(self.progress_path)
        if exists and not same and not overwrite and not replace_stale:
            why = describe_difference(previous, self.fingerprint) if previous else "no record of its arguments"
            raise UserError(f"{self.out} (or its .progress) comes from a different run ({why}); "
                            "pass --overwrite (or --replace-stale) to replace it")
        if overwrite or not same:
            for path in (self.out, self.progress_path):
                self._remove(path)
            write_json_atomic(self.run_path, self.fingerprint)
        self._load_progress()
        return True

    def _load_progress(self):
        if not os.path.isfile(self.progress_path):
            return
        with open(self.progress_path, "rb") as f:
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a write cut short by a kill: drop the partial line
            with open(self.progress_path, "r+b") as f:
                f.truncate(len(complete))
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{self.progress_path} is damaged; pass --overwrite to start over") from None
            if isinstance(record, dict) and isinstance(record.get("id"), int) and \
                    0 <= record["id"] < self.n:
                self.done.setdefault(record["id"], record)
        wanted = set(self.ids)
        self.done = {i: r for i, r in self.done.items() if i in wanted}

    @staticmethod
    def _remove(path):
        if os.path.exists(path):
            os.unlink(path)

    def add(self, records):
        """Append finished records (each with an "id") durably; ids already done are skipped."""
        new = [r for r in records if r["id"] not in self.done]
        if not new:
            return
        with open(self.progress_path, "a", encoding="utf-8") as f:
            f.write("".join(dump_jsonl_line(r) for r in new))
            f.flush()
            os.fsync(f.fileno())
        for r in new:
            self.done[r["id"]] = r

    def finish(self):
        """Write `<out>` atomically in id order once every id is done; remove the progress file."""
        missing = [i for i in self.ids if i not in self.done]
        if missing:
            raise RuntimeError(f"{len(missing)} predictions missing, first id {missing[0]}")
        records = [self.done[i] for i in self.ids]
        write_jsonl_atomic(self.out, records)
        self._remove(self.progress_path)
        return records
