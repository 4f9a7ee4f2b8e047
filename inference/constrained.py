"""Constrained decoding: the answer is always K distinct titles of the prompt's own candidates.

The allowed token sequences are  u(c1) u(c2) ... u(c_{K-1}) v(c_K) <eos>  with distinct c_i, where
u(c) = tokens of the string c + "||" and v(c) = tokens of c, each tokenised on its own. Two prefix
trees (one over u, one over v) hold them. Because one token sequence may be read in more than one way
(a title that is a token-prefix of another; a title that ends with "|"), each row keeps the set of
all live parses (chosen titles so far, tree node) and advances every parse on each token: an automaton,
not a guess at where titles end. The text written is the chosen titles joined by "||", taken from the
parse, so it is exact even if the tokenizer normalises or merges across title boundaries.
"""

from common.prompt import SEP, TOP_K

DONE = -1  # node id of a finished parse


class Trie:
    """Prefix tree over token sequences; node 0 is the root."""

    def __init__(self, seqs):
        self.children = [{}]
        self.ends = [[]]  # candidate indices whose sequence ends at the node
        self.below = [[]]  # candidate indices whose sequence passes through the node
        for idx, seq in enumerate(seqs):
            node = 0
            for token in seq:
                nxt = self.children[node].get(token)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][token] = nxt
                    self.children.append({})
                    self.ends.append([])
                    self.below.append([])
                node = nxt
                self.below[node].append(idx)
            self.ends[node].append(idx)


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
        self.tries = (Trie(self.mid), Trie(self.last))
        self.eos = eos_id
        longest_mid = sorted((len(m) for m in self.mid), reverse=True)[:self.k - 1]
        self.max_tokens = sum(longest_mid) + max(len(v) for v in self.last) + 1

    def start(self):
        return [((), 0)]

    def _trie(self, chosen):
        return self.tries[0] if len(chosen) < self.k - 1 else self.tries[1]

    def allowed(self, states):
        """Token ids that keep at least one parse alive."""
        out = set()
        for chosen, node in states:
            if node == DONE:
                out.add(self.eos)
                continue
            trie = self._trie(chosen)
            for token, child in trie.children[node].items():
                if token not in out and any(c not in chosen for c in trie.below[child]):
                    out.add(token)
            if trie is self.tries[1] and any(c not in chosen for c in trie.ends[node]):
                out.add(self.eos)
        return sorted(out)

    def advance(self, states, token):
        """The parses alive after `token`; a finished parse stays finished."""
        new = []
        for chosen, node in states:
            if node == DONE:
                new.append((chosen, DONE))
                continue
            trie = self._trie(chosen)
            if token == self.eos and trie is self.tries[1]:
                new.extend((chosen + (c,), DONE) for c in trie.ends[node] if c not in chosen)
            child = trie.children[node].get(token)
            if child is None or all(c in chosen for c in trie.below[child]):
                continue
            new.append((chosen, child))
            if trie is self.tries[0]:  # a whole "title||" read: the next title starts
                new.extend((chosen + (c,), 0) for c in trie.ends[child] if c not in chosen)
        return list(dict.fromkeys(new))

    def result(self, states):
        """The chosen titles of the first finished parse, or None."""
        for chosen, node in states:
            if node == DONE:
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


def mask_to(logits, allowed):
    """A copy of one row of logits with every token outside `allowed` at -inf (ties keep the argmax of
    the allowed tokens, as masking does)."""
    import torch

    out = torch.full_like(logits, float("-inf"))
    index = torch.tensor(allowed, device=logits.device)
    out[index] = logits[index]
    return out
