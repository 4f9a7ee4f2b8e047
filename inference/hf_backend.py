"""The transformers backend, the reference: one call turns a chunk of test examples into output records.

free and constrained decode with transformers' `generate` (greedy, or sampling at --temperature), in
batches of `batch_size` prompts of similar length, left-padded; constrained masks the logits to the
tokens the candidate automaton allows (`CandidateLogits`, a transformers LogitsProcessor). The model's
own generation defaults (e.g. Qwen2-Instruct's temperature 0.7 and repetition penalty) are not applied.
score ranks the candidates by likelihood (inference/scoring.py).
"""

import re
import sys
import time

import torch
from tqdm import tqdm
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from common.cli import UserError
from common.prompt import TOP_K
from inference.constrained import CandidateConstraint, Tracker, mask_rows
from inference.constraint_masks import BatchConstraints
from inference.loading import attention_backends
from inference.records import (
    candidate_tokens,
    constrained_record,
    decode_until_stop,
    free_record,
    NEEDS_NEUTRAL,
    neutral_prompt_ids,
    score_record,
    score_titles,
    stop_ids,
)
from inference.scoring import pad_left, score_candidates


CONSTRAINT_MASKS = ("tensor", "python")


class CandidateLogits(LogitsProcessor):
    """Row i of the batch may only continue with a token its automaton allows. masks="tensor": the batch's
    automata as tensors on the logits' device (inference/constraint_masks.py); "python": the reference, one
    Tracker per row on the host, the generated ids copied there each step."""

    def __init__(self, constraints, prompt_width, masks="tensor", device="cpu"):
        self.masks = masks
        self.prompt_width = prompt_width  # left-padded prompts: generated tokens start here
        if masks == "tensor":
            self.batch = BatchConstraints(constraints, prompt_width, device)
        else:
            self.trackers = [Tracker(c) for c in constraints]

    def __call__(self, input_ids, scores):
        if self.masks == "tensor":
            return self.batch.mask(input_ids, scores)
        generated = input_ids[:, self.prompt_width:].tolist()
        return mask_rows(scores, {row: t.allowed(generated[row]) for row, t in enumerate(self.trackers)})

    def check(self):
        """After generation: dead ends the tensor masks noted (the reference raises at once)."""
        if self.masks == "tensor":
            self.batch.check()


def oom_detail(err):
    """What torch's out-of-memory message says was asked for and was free, in a few words."""
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", str(err))
    free = re.search(r"([\d.]+ [KMGT]?i?B) (?:is )?free", str(err))
    parts = ([f"{asked[1]} more asked for"] if asked else []) + ([f"{free[1]} free"] if free else [])
    return ", ".join(parts) or "out of memory"


class HFRunner:
    """Args beyond the obvious: batch_size, prompts generated at once (a call may bring more examples);
    score_batch, prompts per forward pass in score mode (1: inference/scoring.py's one-prompt path);
    sdpa, the attention kernels allowed (inference.loading.attention_backends); compile, generation with a
    static KV cache, whose decoding step transformers compiles with torch.compile on a GPU; constraint_masks,
    how constrained mode masks the logits (CandidateLogits)."""

    def __init__(self, model, tokenizer, mode="free", max_new_tokens=128, score_norm="sum",
                 temperature=0.0, seed=0, batch_size=32, score_batch=1, sdpa="auto", compile=False,
                 constraint_masks="tensor"):
        self.model = model
        self.tok = tokenizer
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.score_norm = score_norm
        self.temperature = temperature
        self.seed = seed
        self.batch_size = batch_size if mode != "score" else score_batch
        self.sdpa, self.compile = sdpa, compile
        self.constraint_masks = constraint_masks
        self.stop_ids = stop_ids(tokenizer)
        self.title_tokens = {}  # constrained mode: candidate title -> its tokens, for every prompt
        self.first_batch = None

    def __call__(self, chunk):
        """chunk: dicts with "id", "prompt_ids" and (constrained, score) "candidates", sorted by length.
        Out of memory, the batch is halved and the same prompts run again: their outputs do not depend
        on the batch they run in (tests/test_inference.py)."""
        run = {"score": self._score, "constrained": self._constrained, "free": self._free}[self.mode]
        out, i = [], 0
        with attention_backends(self.sdpa):
            while i < len(chunk):
                batch = chunk[i:i + self.batch_size]
                start = time.perf_counter()
                try:
                    out += run(batch)
                except torch.OutOfMemoryError as err:
                    self._halve(err)
                    continue
                if self.first_batch is None:  # (prompts, seconds): what the first kernels cost shows here
                    self.first_batch = (len(batch), time.perf_counter() - start)
                i += len(batch)
        return out

    def _halve(self, err):
        """After an out-of-memory error: a batch half as large, said in one line; none below one prompt."""
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size == 1:
            raise UserError(f"one prompt does not fit in memory ({oom_detail(err)}): --batch-size 1 is the "
                            "least; use a device with more free memory, or --dtype bfloat16") from None
        size, self.batch_size = self.batch_size, self.batch_size // 2
        tqdm.write(f"out of memory at batch {size}: continuing at batch {self.batch_size}", file=sys.stderr)

    def _generate(self, batch, max_new_tokens, processor_of=None):
        """Generated token ids per example (after the prompt, stop token included, padding removed).
        processor_of(prompt width): a logits processor, checked after generation where it has a check()."""
        ids, mask = pad_left([ex["prompt_ids"] for ex in batch], self.tok.pad_token_id)
        sample = self.temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sample, num_beams=1,
            temperature=self.temperature if sample else None, top_p=None, top_k=None,
            eos_token_id=self.stop_ids, pad_token_id=self.tok.pad_token_id,
            cache_implementation="static" if self.compile else None)
        processors = LogitsProcessorList([processor_of(ids.shape[1])] if processor_of else [])
        if sample:  # seeded per batch, so a resumed run samples what the first run would have
            torch.manual_seed(self.seed * 1_000_003 + batch[0]["id"])
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(self.model.device),
                                      attention_mask=mask.to(self.model.device),
                                      generation_config=config, logits_processor=processors)
        for processor in processors:
            if hasattr(processor, "check"):
                processor.check()
        stops = set(self.stop_ids)
        gens = []
        for row in out[:, ids.shape[1]:].tolist():
            end = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
            gens.append(row[:end])
        return gens

    def _free(self, batch):
        gens = self._generate(batch, self.max_new_tokens)
        return [free_record(ex, decode_until_stop(self.tok, g, self.stop_ids)) for ex, g in zip(batch, gens)]

    def constraints(self, batch):
        return [CandidateConstraint(ex["candidates"], self.tok, self.tok.eos_token_id, TOP_K,
                                    self.title_tokens) for ex in batch]

    def _constrained(self, batch):
        constraints = self.constraints(batch)
        gens = self._generate(batch, max(c.max_tokens for c in constraints),
                              lambda width: CandidateLogits(constraints, width, self.constraint_masks,
                                                            self.model.device))
        return [constrained_record(ex, c.parse(g)) for ex, c, g in zip(batch, constraints, gens)]

    def _score(self, chunk):
        titles = [score_titles(ex) for ex in chunk]
        conts = [[candidate_tokens(self.tok, t) for t in ts] for ts in titles]
        sums = score_candidates(self.model, [ex["prompt_ids"] for ex in chunk], conts, len(chunk))
        neutral = [None] * len(chunk)
        if self.score_norm in NEEDS_NEUTRAL:
            neutral = score_candidates(self.model, [neutral_prompt_ids(self.tok, ex["prompt_ids"]) for ex in chunk],
                                       conts, len(chunk))
        return [score_record(ex, t, s, self.score_norm, [len(c) for c in cs], s0)
                for ex, t, s, cs, s0 in zip(chunk, titles, sums, conts, neutral)]
