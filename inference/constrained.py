"""Constrained decoding: the answer is always K distinct titles of the prompt's own candidates.

The allowed token sequences are  u(c1) u(c2) ... u(c_{K-1}) v(c_K) <eos>  with distinct c_i, where
u(c) = tokens of the string c + "||" and v(c) = tokens of c, each tokenised on its own. Because one
token sequence may be read in more than one way (a title that is a token-prefix of another; a title that
ends with "|"), each row keeps the set of all live parses and advances every parse on each token: an
automaton, not a guess at where titles end. A parse is (titles chosen so far, tokens read of the current
title, the candidates not chosen yet whose u (or, for the K-th title, v) starts with those tokens): a
walk down the prefix tree of the candidates' sequences, the tree never built (the engine receives one
automaton per request, and building two trees for 30 candidates cost more than all the steps taken in
them). The text written is the chosen titles joined by "||", taken from the parse, so it is exact even
if the tokenizer normalises or merges across title boundaries.
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


class CandidateConstraint:
    """The automaton for one prompt: which tokens may come next, given what was generated."""

    def __init__(self, candidates, tokenizer, eos_id, k=TOP_K, cache=None):
        """cache: optional dict title -> (tokens of title + "||", tokens of title), shared between
        prompts (test users' candidates come from one item pool), filled here."""
        titles = unique_titles(candidates)
        if not titles:
            raise ValueError("a prompt has no candidate titles")
        cache = {} if cache is None else cache
        new = [t for t in titles if t not in cache]
        if new:
            ids = tokenizer([t + SEP for t in new] + new, add_special_tokens=False)["input_ids"]
            cache.update(zip(new, zip(ids[:len(new)], ids[len(new):])))
        self._build(titles, [cache[t][0] for t in titles], [cache[t][1] for t in titles], eos_id, k)

    @classmethod
    def from_tokens(cls, mid, last, eos_id, k=TOP_K):
        """The automaton from token lists alone (u(c) and v(c) per candidate): what vLLM's engine
        process receives, without a tokenizer. Titles are reported by index."""
        self = cls.__new__(cls)
        self._build(list(range(len(mid))), mid, last, eos_id, k)
        return self

    def spec(self):
        """The arguments of from_tokens, as plain lists (they travel to vLLM's engine process)."""
        return {"mid": self.mid, "last": self.last, "eos": self.eos, "k": self.k}

    def _build(self, titles, mid, last, eos_id, k):
        self.titles, self.mid, self.last = titles, [list(m) for m in mid], [list(v) for v in last]
        self.k = min(k, len(titles))
        self.eos = eos_id
        self.everyone = tuple(range(len(titles)))
        longest_mid = sorted((len(m) for m in self.mid), reverse=True)[:self.k - 1]
        self.max_tokens = sum(longest_mid) + max(len(v) for v in self.last) + 1

    def start(self):
        return [((), 0, self.everyone)]

    def _seqs(self, chosen):
        return self.mid if len(chosen) < self.k - 1 else self.last

    def allowed(self, states):
        """Token ids that keep at least one parse alive."""
        out = set()
        for chosen, depth, live in states:
            if depth == DONE:
                out.add(self.eos)
                continue
            seqs = self._seqs(chosen)
            for c in live:
                seq = seqs[c]
                if len(seq) > depth:
                    out.add(seq[depth])
                elif seqs is self.last:  # the K-th title read whole: the answer may end
                    out.add(self.eos)
        return sorted(out)

    def advance(self, states, token):
        """The parses alive after `token`; a finished parse stays finished."""
        new = []
        for chosen, depth, live in states:
            if depth == DONE:
                new.append((chosen, DONE, ()))
                continue
            seqs = self._seqs(chosen)
            if token == self.eos and seqs is self.last:
                new.extend((chosen + (c,), DONE, ()) for c in live if len(seqs[c]) == depth)
            going = tuple(c for c in live if len(seqs[c]) > depth and seqs[c][depth] == token)
            if not going:
                continue
            new.append((chosen, depth + 1, going))
            if seqs is self.mid:  # a whole "title||" read: the next title starts
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
