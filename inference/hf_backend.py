"""The transformers backend: one call turns a batch of test examples into output records.

Greedy decoding with an explicit GenerationConfig (the model's own sampling defaults, e.g.
Qwen2-Instruct's temperature 0.7 and repetition penalty, are not applied), left padding, stop at the
tokenizer's eos and pad tokens.
"""

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList

from common.prompt import SEP, TOP_K
from inference.constrained import (
    CandidateConstraint,
    CandidateLogitsProcessor,
    unique_titles,
)
from inference.scoring import pad_left, rank, score_candidates


class HFRunner:
    def __init__(self, model, tokenizer, mode="free", max_new_tokens=128, score_norm="sum",
                 temperature=0.0, seed=0):
        self.model = model
        self.tok = tokenizer
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.score_norm = score_norm
        self.temperature = temperature
        self.seed = seed
        self.stop_ids = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})

    def prompt_ids(self, system, user):
        """Chat template over [system, user] with the generation prompt."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)

    def __call__(self, batch):
        """batch: dicts with "id", "prompt_ids" and (constrained, score) "candidates"."""
        if self.mode == "score":
            return self._score(batch)
        if self.mode == "constrained":
            return self._constrained(batch)
        return self._free(batch)

    def _prefill(self, prompts, width):
        """Each prompt but its last token run alone, the caches left-padded to `width` - 1 and joined.

        An unpadded prompt takes the fast causal attention path (on CPU a padded batch's prefill
        measured 2.4x slower), and a row's cache does not depend on the other rows of its batch.
        """
        layers = []
        for prompt in prompts:
            out = self.model(input_ids=torch.tensor([prompt[:-1]], device=self.model.device),
                             use_cache=True, logits_to_keep=1)
            layers.append(out.past_key_values.to_legacy_cache())

        def pad(t):
            return torch.nn.functional.pad(t, (0, 0, width - 1 - t.shape[2], 0))

        return DynamicCache.from_legacy_cache(tuple(
            (torch.cat([pad(layer[i][0]) for layer in layers]), torch.cat([pad(layer[i][1]) for layer in layers]))
            for i in range(len(layers[0]))))

    def _generate(self, batch, max_new_tokens, processor=None):
        prompts = [ex["prompt_ids"] for ex in batch]
        ids, mask = pad_left(prompts, self.tok.pad_token_id)
        cache = self._prefill(prompts, ids.shape[1]) if min(map(len, prompts)) > 1 else None
        sample = self.temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sample, num_beams=1,
            temperature=self.temperature if sample else None, top_p=None, top_k=None,
            eos_token_id=self.stop_ids, pad_token_id=self.tok.pad_token_id)
        if sample:  # seeded per batch, so a resumed run samples what the first run would have
            torch.manual_seed(self.seed * 1_000_003 + batch[0]["id"])
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                past_key_values=cache, generation_config=config, use_model_defaults=False,
                logits_processor=LogitsProcessorList([processor] if processor else []))
        return out[:, ids.shape[1]:].cpu()

    def _free(self, batch):
        gen = self._generate(batch, self.max_new_tokens)
        texts = self.tok.batch_decode(gen, skip_special_tokens=True)
        return [{"id": ex["id"], "output": t.strip()} for ex, t in zip(batch, texts)]

    def _constrained(self, batch):
        eos = self.tok.eos_token_id
        constraints = [CandidateConstraint(ex["candidates"], self.tok, eos, TOP_K) for ex in batch]
        prompt_len = max(len(ex["prompt_ids"]) for ex in batch)
        processor = CandidateLogitsProcessor(constraints, prompt_len)
        gen = self._generate(batch, max(c.max_tokens for c in constraints), processor)
        out = []
        for ex, titles in zip(batch, processor.results(gen)):
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
