"""Constrained decoding: the answer is always K distinct titles of the prompt's own candidates.

The allowed token sequences are  u1(c1) u(c2) ... u(c_{K-1}) v(c_K) <eos>  with distinct c_i: u(c) are the
tokens of c + "||" and v(c) those of c as they read after a "||" (the tokens of "||" + c + "||" less the
leading tokens of "||"; the title's own tokens where the tokenizer merges the separator into it), u1(c) the
tokens of c + "||" at the start of the answer (for K = 1, v1(c): of c alone). Training encodes the answer
"c1||c2||...||c5" as one string, so this is its token path: with Qwen2's and Llama-3's tokenizers a title
reads the same at the start and after "||", while a SentencePiece tokenizer (Mistral) writes the first title
"▁Title" and the later ones "Title". Because one token sequence may be read in more than one way (a title
that is a token-prefix of another; a title that ends with "|"), each row keeps the set of all live parses
and advances every parse on each token: an automaton, not a guess at where titles end. A parse is (titles
chosen so far, tokens read of the current title, the candidates not chosen yet whose sequence for this
position starts with those tokens): a walk down the prefix tree of the candidates' sequences, the tree never
built (the engine receives one automaton per request, and building two trees for 30 candidates cost more
than all the steps taken in them). The text written is the chosen titles joined by "||", taken from the
parse, so it is exact even if the tokenizer normalises or merges across title boundaries.
"""

from common.prompt import SEP, TOP_K

DONE = -1  # depth of a finished parse


def unique_titles(candidates):
    """Candidates without empties and repeats, first occurrence kept."""
    seen, out = set(), []
    for title in candidates:
        if title.strip() and title not in seen:
            seen.add(title)
            out.append(title)
    return out


def title_tokens(tokenizer, titles):
    """title -> (u1, v1, u, v): its tokens at the start of the answer (with "||", alone) and after a "||"."""
    sep = tokenizer(SEP, add_special_tokens=False)["input_ids"]
    texts = [t + SEP for t in titles] + titles + [SEP + t + SEP for t in titles] + [SEP + t for t in titles]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n = len(titles)

    def after_sep(in_context, alone):
        rest = in_context[len(sep):]
        return rest if in_context[:len(sep)] == sep and rest else alone

    return {t: (ids[i], ids[n + i], after_sep(ids[2 * n + i], ids[i]), after_sep(ids[3 * n + i], ids[n + i]))
            for i, t in enumerate(titles)}


class CandidateConstraint:
    """The automaton for one prompt: which tokens may come next, given what was generated."""

    def __init__(self, candidates, tokenizer, eos_id, k=TOP_K, cache=None):
        """cache: optional dict title -> title_tokens' tuple, shared between prompts (test users' candidates
        come from one item pool), filled here."""
        titles = unique_titles(candidates)
        if not titles:
            raise ValueError("a prompt has no candidate titles")
        cache = {} if cache is None else cache
        new = [t for t in titles if t not in cache]
        if new:
            cache.update(title_tokens(tokenizer, new))
        u1, v1, u, v = zip(*(cache[t] for t in titles))
        self._build(titles, u, v, eos_id, k, u1, v1)

    @classmethod
    def from_tokens(cls, mid, last, eos_id, k=TOP_K, first_mid=None, first_last=None):
        """The automaton from token lists alone (per candidate u(c), v(c) and, where the first title reads
        otherwise, u1(c), v1(c)): what vLLM's engine process receives, without a tokenizer. Titles are
        reported by index."""
        self = cls.__new__(cls)
        self._build(list(range(len(mid))), mid, last, eos_id, k, first_mid, first_last)
        return self

    @classmethod
    def from_spec(cls, spec):
        return cls.from_tokens(spec["mid"], spec["last"], spec["eos"], spec["k"], spec.get("first_mid"),
                               spec.get("first_last"))

    def spec(self):
        """from_spec's argument, as plain lists (they travel to vLLM's engine process)."""
        return {"mid": self.mid, "last": self.last, "eos": self.eos, "k": self.k,  # first: None where the same
                "first_mid": None if self.first_mid == self.mid else self.first_mid,
                "first_last": None if self.first_last == self.last else self.first_last}

    def _build(self, titles, mid, last, eos_id, k, first_mid=None, first_last=None):
        self.titles, self.mid, self.last = titles, [list(m) for m in mid], [list(v) for v in last]
        self.first_mid = [list(m) for m in first_mid] if first_mid is not None else self.mid
        self.first_last = [list(v) for v in first_last] if first_last is not None else self.last
        self.k = min(k, len(titles))
        self.eos = eos_id
        self.everyone = tuple(range(len(titles)))
        if self.k == 1:
            self.max_tokens = max(map(len, self.first_last)) + 1
        else:  # an upper bound: the longest first title, the k - 2 longest middle ones, the longest last one
            middle = sorted(map(len, self.mid), reverse=True)[:self.k - 2]
            self.max_tokens = max(map(len, self.first_mid)) + sum(middle) + max(map(len, self.last)) + 1

    def start(self):
        return [((), 0, self.everyone)]

    def _phase(self, chosen):
        """(the candidates' sequences for the next title, whether it is the last one)."""
        first, final = not chosen, len(chosen) >= self.k - 1
        if final:
            return (self.first_last if first else self.last), True
        return (self.first_mid if first else self.mid), False

    def allowed(self, states):
        """Token ids that keep at least one parse alive."""
        out = set()
        for chosen, depth, live in states:
            if depth == DONE:
                out.add(self.eos)
                continue
            seqs, final = self._phase(chosen)
            for c in live:
                seq = seqs[c]
                if len(seq) > depth:
                    out.add(seq[depth])
                elif final:  # the K-th title read whole: the answer may end
                    out.add(self.eos)
        return sorted(out)

    def advance(self, states, token):
        """The parses alive after `token`; a finished parse stays finished."""
        new = []
        for chosen, depth, live in states:
            if depth == DONE:
                new.append((chosen, DONE, ()))
                continue
            seqs, final = self._phase(chosen)
            if token == self.eos and final:
                new.extend((chosen + (c,), DONE, ()) for c in live if len(seqs[c]) == depth)
            going = tuple(c for c in live if len(seqs[c]) > depth and seqs[c][depth] == token)
            if not going:
                continue
            new.append((chosen, depth + 1, going))
            if not final:  # a whole "title||" read: the next title starts
                for c in going:
                    if len(seqs[c]) == depth + 1:
                        taken = chosen + (c,)
                        new.append((taken, 0, tuple(x for x in self.everyone if x not in taken)))
        return list(dict.fromkeys(new))

    def result(self, states):
        """The chosen titles of the first finished parse, or None."""
        for chosen, depth, _ in states:
            if depth == DONE:
                return [self.titles[c] for c in chosen]
        return None

    def parse(self, tokens):
        """The chosen titles after `tokens` (generated ids, stop token included), or None."""
        states = self.start()
        for token in tokens:
            states = self.advance(states, token)
            if not states:
                return None
        return self.result(states)


class Tracker:
    """One row's automaton as decoding goes: told the generated tokens so far, it returns the allowed
    next tokens. Used by both backends' logits processors."""

    def __init__(self, constraint):
        self.constraint = constraint
        self.states = constraint.start()
        self.seen = 0

    def allowed(self, generated):
        """Allowed next token ids, given every token generated so far (a list, read from `seen` on)."""
        for token in generated[self.seen:]:
            self.states = self.constraint.advance(self.states, token)
        self.seen = len(generated)
        tokens = self.constraint.allowed(self.states)
        if not tokens:
            raise RuntimeError("constrained decoding reached a dead end")
        return tokens


def mask_rows(logits, allowed):
    """In place: in each row i of `allowed` (a dict row -> token ids), every token not listed is set to
    -inf; other rows are left alone. One gather and two index writes for the whole batch (ties keep the
    argmax of the allowed tokens, as masking does). Returns `logits`."""
    import torch

    if not allowed:
        return logits
    rows = list(allowed)
    index = (torch.tensor([r for r in rows for _ in allowed[r]], device=logits.device),
             torch.tensor([t for r in rows for t in allowed[r]], device=logits.device))
    keep = logits[index]
    logits[torch.tensor(rows, device=logits.device)] = float("-inf")
    logits[index] = keep
    return logits
