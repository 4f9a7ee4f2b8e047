"""The candidate automata of a whole batch as tensors: each step's allowed tokens computed on the logits' device,
with no per-row Python and no copy of the generated ids to the host (inference/constrained.py's automaton is
the reference; tests/test_constraint_masks.py checks the masks are the same, step by step).

A row goes here when its candidates' "title||" token sequences are prefix-free (none starts another, no two
are equal), at the start of the answer and after a "||" (inference/constrained.py: u1 and u). Then the row has one live parse until its answer ends, and a parse is a few numbers: the titles
chosen (a mask over the candidates), the tokens read of the current title (depth), the candidates whose
sequence starts with those tokens (a mask). The last title needs no such condition: several candidates may
stay live while it is read (a title that is a token-prefix of another is common), and <eos> is allowed once
one of them is read whole; which title ended is read afterwards by the reference parse, as before. A row whose
candidates are not prefix-free (e.g. "X" and "X|" where "X|||" is tokenised as "X||" then "|") keeps the
reference automaton (a Tracker, on the host); both kinds mix in one batch.
"""

import torch

from inference.constrained import Tracker, mask_rows


SEQS = ("first_mid", "mid", "first_last", "last")  # CandidateConstraint's sequences: u1, u, v1, v


def prefix_free(seqs):
    """True when no sequence is a prefix of another, equal ones included. Sorted, a sequence comes right
    before the ones it starts, so neighbours suffice."""
    ordered = sorted(map(tuple, seqs))
    return all(b[:len(a)] != a for a, b in zip(ordered, ordered[1:]))


def _padded(rows, width, device):
    """[len(rows), width, longest] token ids from rows of `width` or fewer token lists, -1 where none."""
    flat = [torch.tensor(seq, dtype=torch.long) for row in rows
            for seq in list(row) + [[]] * (width - len(row))]
    ids = torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=-1)
    return ids.view(len(rows), width, -1).to(device)


def _lengths(rows, width, device):
    return torch.tensor([[len(s) for s in row] + [0] * (width - len(row)) for row in rows], device=device)


class BatchConstraints:
    """The automata of a batch's rows (inference.constrained.CandidateConstraint each), told the generated ids
    step by step. Args: prompt_width, the left-padded prompts' width (generated ids start there)."""

    def __init__(self, constraints, prompt_width, device):
        self.width = prompt_width
        self.seen = prompt_width
        self.fallback = {row: Tracker(c) for row, c in enumerate(constraints)
                         if c.k > 1 and not (prefix_free(c.mid) and prefix_free(c.first_mid))}
        width = max(len(c.mid) for c in constraints)
        rows = len(constraints)
        # per phase (SEQS), the candidates' token ids [rows, width, longest] (-1 past the end) and lengths
        self.ids = {s: _padded([getattr(c, s) for c in constraints], width, device) for s in SEQS}
        self.lengths = {s: _lengths([getattr(c, s) for c in constraints], width, device) for s in SEQS}
        self.valid = self.lengths["mid"] > 0
        self.k = torch.tensor([c.k for c in constraints], device=device)
        self.eos = torch.tensor([c.eos for c in constraints], device=device)
        self.rows = torch.arange(rows, device=device)
        self.chosen = torch.zeros(rows, width, dtype=torch.bool, device=device)
        self.live = self.valid.clone()
        self.depth = torch.zeros(rows, dtype=torch.long, device=device)
        self.count = torch.zeros(rows, dtype=torch.long, device=device)  # titles chosen
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)
        self.dead = torch.zeros(rows, dtype=torch.bool, device=device)
        self.exact = torch.tensor([row not in self.fallback for row in range(rows)], device=device)

    def _next(self):
        """(each candidate's token at the current depth, -1 past its end; its sequence's length; whether the
        row reads its last title), for the phase each row is in (CandidateConstraint._phase)."""
        first, last = (self.count == 0)[:, None], (self.count >= self.k - 1)[:, None]
        token, length = {}, {}
        for name, ids in self.ids.items():
            at = self.depth.clamp(max=ids.shape[2] - 1).view(-1, 1, 1).expand(-1, ids.shape[1], 1)
            token[name], length[name] = ids.gather(2, at).squeeze(2), self.lengths[name]

        def pick(values):
            return torch.where(last, torch.where(first, values["first_last"], values["last"]),
                               torch.where(first, values["first_mid"], values["mid"]))

        token, length = pick(token), pick(length)
        token = torch.where(self.depth[:, None] < length, token, -1)
        return token, length, last.squeeze(1)

    def _advance(self, tokens):
        """Every row reads one generated token (a finished row stays finished)."""
        token, length, last = self._next()
        read_whole = (self.live & (length == self.depth[:, None])).any(1)
        self.done |= last & (tokens == self.eos) & read_whole
        going = self.live & (token == tokens[:, None])
        complete = going & ~last[:, None] & (length == self.depth[:, None] + 1)  # one at most: prefix-free
        title_read = complete.any(1)
        self.chosen |= complete
        self.count += title_read.long()
        self.live = torch.where(title_read[:, None], self.valid & ~self.chosen, going)
        self.depth = torch.where(title_read, 0, self.depth + 1)
        self.dead |= self.exact & ~self.done & ~self.live.any(1)

    def mask(self, input_ids, scores):
        """In place: every token a row may not generate next gets -inf in `scores` ([rows, vocab]), given
        `input_ids` (prompts and every token generated so far, as transformers' logits processors receive
        them). Returns `scores`.

        The allowed tokens of a row are its live candidates' next tokens and, where one has been read whole
        in the last title (or the row is done), <eos>: at most candidates + 1 per row, gathered, the row set
        to -inf, and scattered back. A slot with nothing to allow points at <eos> and carries <eos>'s value
        (its score or -inf), so repeated indices always write the same value."""
        for column in range(self.seen, input_ids.shape[1]):
            self._advance(input_ids[:, column])
        self.seen = input_ids.shape[1]
        saved = scores[list(self.fallback)].clone() if self.fallback else None
        token, length, last = self._next()
        allow = self.live & (token >= 0)
        eos = self.eos[:, None]
        may_end = self.done | (last & (self.live & (length == self.depth[:, None])).any(1))
        may_end |= (allow & (token == eos)).any(1)
        index = torch.cat([torch.where(allow, token, eos), eos], 1)
        values = scores.gather(1, index)
        eos_value = torch.where(may_end[:, None], scores.gather(1, eos), float("-inf"))
        values = torch.where(index == eos, eos_value, values)
        scores.fill_(float("-inf"))
        scores.scatter_(1, index, values)
        if self.fallback:  # the reference automaton for these rows, on the host
            rows = list(self.fallback)
            scores[rows] = saved
            generated = input_ids[rows, self.width:].tolist()
            mask_rows(scores, {row: self.fallback[row].allowed(ids) for row, ids in zip(rows, generated)})
        return scores

    def check(self):
        """After generation: a row that reached a dead end (a token its automaton did not allow) is an error,
        as the reference's Tracker raises one (one copy to the host per batch, not per step)."""
        if bool(self.dead.any()):
            raise RuntimeError("constrained decoding reached a dead end")
