"""The transformers backend: one call turns a batch of test examples into output records.

Greedy decoding (or sampling at --temperature) through `inference.decoding.Decoder`; the model's own
generation defaults (e.g. Qwen2-Instruct's temperature 0.7 and repetition penalty) are not applied.
Decoding stops at the tokenizer's eos and pad tokens.
"""

import torch

from common.prompt import SEP, TOP_K
from inference.constrained import CandidateConstraint, CandidateMask, unique_titles
from inference.decoding import Decoder
from inference.scoring import rank, score_candidates


class HFRunner:
    def __init__(self, model, tokenizer, mode="free", max_new_tokens=128, score_norm="sum",
                 temperature=0.0, seed=0, batch_size=32):
        self.model = model
        self.batch_size = batch_size  # rows decoded at once; a call may bring more examples
        self.tok = tokenizer
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.score_norm = score_norm
        self.temperature = temperature
        self.seed = seed
        self.stop_ids = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
        self.decoder = Decoder(model, self.stop_ids, temperature)
        self.title_tokens = {}  # constrained mode: candidate title -> its tokens, for every prompt

    def prompt_ids(self, system, user):
        """Chat template over [system, user] with the generation prompt."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)

    def __call__(self, batch):
        """batch: dicts with "id", "prompt_ids" and (constrained, score) "candidates"; any number of
        them (generation keeps `batch_size` rows going, a finished row taking the next example)."""
        if self.mode == "score":
            return self._score(batch)
        if self.mode == "constrained":
            return self._constrained(batch)
        return self._free(batch)

    def _generate(self, batch, max_new_tokens, constraint=None):
        """Generated token ids per example (its stop token, if reached, last)."""
        generator = None
        if self.temperature > 0:  # seeded per call, so a resumed run samples what the first run would have
            generator = torch.Generator(self.model.device).manual_seed(self.seed * 1_000_003 + batch[0]["id"])
        return self.decoder([ex["prompt_ids"] for ex in batch], max_new_tokens, constraint, generator,
                            self.batch_size)

    def _free(self, batch):
        gen = self._generate(batch, self.max_new_tokens)
        texts = self.tok.batch_decode(gen, skip_special_tokens=True)
        return [{"id": ex["id"], "output": t.strip()} for ex, t in zip(batch, texts)]

    def _constrained(self, batch):
        eos = self.tok.eos_token_id
        constraints = [CandidateConstraint(ex["candidates"], self.tok, eos, TOP_K, self.title_tokens)
                       for ex in batch]
        constraint = CandidateMask(constraints)
        self._generate(batch, max(c.max_tokens for c in constraints), constraint)
        out = []
        for ex, titles in zip(batch, constraint.results()):
            if titles is None:
                raise RuntimeError(f"constrained decoding did not finish for test line {ex['id']}")
            out.append({"id": ex["id"], "output": SEP.join(titles)})
        return out

    def _score(self, batch):
        titles = [unique_titles(ex["candidates"]) for ex in batch]
        scores = score_candidates(self.model, self.tok, [ex["prompt_ids"] for ex in batch], titles,
                                  self.score_norm)
        out = []
        for ex, t, s in zip(batch, titles, scores):
            ranking, ordered = rank(t, s)
            out.append({"id": ex["id"], "output": SEP.join(ranking[:TOP_K]), "ranking": ranking,
                        "scores": [round(x, 6) for x in ordered]})
        return out
