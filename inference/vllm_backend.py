"""The vLLM backend: the same examples in, the same records out as inference.hf_backend.

- free: greedy (or sampled) generation; the text is decoded from the token ids as the HF backend does;
- constrained: `CandidateProcessor`, a batch-level vLLM logits processor (vllm/v1/sample/logits_processor),
  masks each request's logits to what its candidate automaton allows; the automaton's token lists travel with
  the request in SamplingParams.extra_args, so the engine process needs no tokenizer;
- score: one request per candidate, forced to produce its tokens, their log-probs summed
  (inference/vllm_score.py).

Adapters (inference/vllm_engine.py) are LoRA requests, or merged into the weights the engine serves.
Every chunk starts from an empty prefix cache, so a chunk is computed the same way whatever ran before
it (a resumed run, or one data-parallel worker, writes the bytes an uninterrupted run writes).
"""

from vllm import SamplingParams
from vllm.v1.sample.logits_processor import LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from common.prompt import TOP_K
from inference.constrained import CandidateConstraint, Tracker, mask_rows
from inference.records import (
    constrained_record,
    decode_until_stop,
    free_record,
    stop_ids,
)
from inference.vllm_score import FORCED_KEY, score_chunk

CONSTRAINT_KEY = "weaverec_candidates"  # SamplingParams.extra_args: a candidate automaton (constrained)


class CandidateProcessor(LogitsProcessor):
    """Logits masks inside vLLM's engine, one for the whole batch per step: a request whose extra_args
    hold a candidate automaton may only continue with a token the automaton allows; one with forced
    tokens produces them; other requests are left alone. vLLM tells it which request sits in which row
    of the batch (update_state) and hands it the batch's logits (apply)."""

    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows = {}  # batch row -> (Tracker or forced token list, the request's output ids so far)

    def is_argmax_invariant(self):
        return False  # it changes the greedy choice

    @staticmethod
    def _rule(params, _prompt_ids, output_ids):
        extra = params.extra_args or {}
        if FORCED_KEY in extra:
            return extra[FORCED_KEY], output_ids
        spec = extra.get(CONSTRAINT_KEY)
        if spec is None:
            return None
        return Tracker(CandidateConstraint.from_spec(spec)), output_ids

    def update_state(self, batch_update):
        process_dict_updates(self.rows, batch_update, self._rule)

    def apply(self, logits):
        allowed = {}
        for row, (rule, output_ids) in self.rows.items():
            if isinstance(rule, list):
                allowed[row] = rule[len(output_ids):len(output_ids) + 1]
            else:
                allowed[row] = rule.allowed(output_ids)
        return mask_rows(logits, allowed)


class VLLMRunner:
    """runner(chunk) -> records, on an engine (inference.vllm_engine.Engine) serving one model."""

    def __init__(self, engine, tokenizer, mode="free", max_new_tokens=128, score_norm="sum",
                 temperature=0.0, seed=0, lora=None):
        self.engine = engine
        self.tok = tokenizer
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.score_norm = score_norm
        self.temperature = temperature
        self.seed = seed
        self.lora = lora  # a LoRARequest, or None for the model as loaded
        self.stop_ids = stop_ids(tokenizer)
        self.title_tokens = {}

    def __call__(self, chunk):
        self.engine.llm.reset_prefix_cache()
        if self.mode == "score":
            return score_chunk(self.engine.llm, self.tok, chunk, self.lora, self.score_norm)
        if self.mode == "constrained":
            return self._constrained(chunk)
        return self._free(chunk)

    def _generate(self, chunk, params):
        requests = [{"prompt_token_ids": ex["prompt_ids"]} for ex in chunk]
        outs = self.engine.llm.generate(requests, params, lora_request=self.lora, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    def _free(self, chunk):
        params = SamplingParams(temperature=self.temperature, max_tokens=self.max_new_tokens,
                                stop_token_ids=self.stop_ids, seed=self.seed, detokenize=False)
        gens = self._generate(chunk, [params.clone() for _ in chunk])
        return [free_record(ex, decode_until_stop(self.tok, g, self.stop_ids)) for ex, g in zip(chunk, gens)]

    def _constrained(self, chunk):
        eos = self.tok.eos_token_id
        constraints = [CandidateConstraint(ex["candidates"], self.tok, eos, TOP_K, self.title_tokens)
                       for ex in chunk]
        params = [SamplingParams(temperature=0.0, max_tokens=c.max_tokens, stop_token_ids=self.stop_ids,
                                 detokenize=False, extra_args={CONSTRAINT_KEY: c.spec()})
                  for c in constraints]
        gens = self._generate(chunk, params)
        return [constrained_record(ex, c.parse(g)) for ex, c, g in zip(chunk, constraints, gens)]
