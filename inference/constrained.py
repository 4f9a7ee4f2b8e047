"""Constrained decoding: the answer is always K distinct titles of the prompt's own candidates.

The allowed token sequences are  u(c1) u(c2) ... u(c_{K-1}) v(c_K) <eos>  with distinct c_i, where
u(c) = tokens of the string c + "||" and v(c) = tokens of c, each tokenised on its own. Two prefix
trees (one over u, one over v) hold them. Because one token sequence may be read in more than one way
(a title that is a token-prefix of another; a title that ends with "|"), each row keeps the set of
all live parses (chosen titles so far, tree node) and advances every parse on each token: an automaton,
not a guess at where titles end. The text written is the chosen titles joined by "||", taken from the
parse, so it is exact even if the tokenizer normalises or merges across title boundaries.
"""

import torch

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
        self.titles = unique_titles(candidates)
        if not self.titles:
            raise ValueError("a prompt has no candidate titles")
        self.k = min(k, len(self.titles))
        cache = {} if cache is None else cache
        new = [t for t in self.titles if t not in cache]
        if new:
            ids = tokenizer([t + SEP for t in new] + new, add_special_tokens=False)["input_ids"]
            cache.update(zip(new, zip(ids[:len(new)], ids[len(new):])))
        mid, last = [cache[t][0] for t in self.titles], [cache[t][1] for t in self.titles]
        self.tries = (Trie(mid), Trie(last))
        self.eos = eos_id
        longest_mid = sorted((len(m) for m in mid), reverse=True)[:self.k - 1]
        self.max_tokens = sum(longest_mid) + max(len(v) for v in last) + 1

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


class CandidateMask:
    """The constraints of a batch, one per row (no beams), for `inference.decoding.Decoder`."""

    def __init__(self, constraints):
        self.constraints = constraints
        self.states = [c.start() for c in constraints]

    def choose(self, rows, hidden, head):
        """The greedy token of each batch row `rows`, among the tokens some live parse allows.

        hidden: the last hidden states (len(rows), hidden size); head: the output embedding layer.
        Only the allowed tokens' logits are computed (a few, against the whole vocabulary).
        """
        allowed = []
        for row in rows:
            tokens = self.constraints[row].allowed(self.states[row])
            if not tokens:
                raise RuntimeError(f"constrained decoding reached a dead end in row {row}")
            allowed.append(tokens)
        width = max(map(len, allowed))
        index = torch.tensor([a + a[-1:] * (width - len(a)) for a in allowed], device=hidden.device)
        logits = torch.bmm(head.weight[index], hidden[:, :, None]).squeeze(2)
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[index]
        best = logits.float().max(dim=-1).indices  # padding repeats a token: either copy gives it
        return index.gather(1, best[:, None]).squeeze(1)

    def advance(self, rows, tokens):
        for row, token in zip(rows, tokens):
            self.states[row] = self.constraints[row].advance(self.states[row], token)

    def results(self):
        """Titles per row (None for a row that did not finish)."""
        return [c.result(s) for c, s in zip(self.constraints, self.states)]
