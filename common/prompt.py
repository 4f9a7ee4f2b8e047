"""The WeaveRec prompt, exactly as the published checkpoints were trained on it.

A sample is LLaMA-Factory sharegpt: {"messages": [system, user, assistant]}.
Titles are joined by SEP; a clean title never contains SEP (see data_process).
"""

from common.cli import UserError

SEP = "||"
SYSTEM = "You are a helpful recommendation assistant."
HISTORY_OPEN = "Given the following purchase history of a user:["
CANDIDATES_OPEN = (
    "]. Please select the top 5 most likely products to be purchased by the user based on the "
    "user's purchase history. And sort them from highest to lowest likelihood of purchasing."
    "Candidates: ["
)
CANDIDATES_CLOSE = "]. The top 5 most likely products to be purchased by the user are:"
TOP_K = 5


def user_prompt(history, candidates):
    return HISTORY_OPEN + SEP.join(history) + CANDIDATES_OPEN + SEP.join(candidates) + CANDIDATES_CLOSE


def make_sample(history, candidates, answer):
    """Sharegpt sample: history and candidates in the user turn, `answer` titles in the reply."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user_prompt(history, candidates)},
            {"role": "assistant", "content": SEP.join(answer)},
        ]
    }


def parse_user_prompt(text):
    """Inverse of user_prompt: (history titles, candidate titles)."""
    if not (text.startswith(HISTORY_OPEN) and text.endswith(CANDIDATES_CLOSE)):
        raise UserError("user message is not a WeaveRec prompt")
    body = text[len(HISTORY_OPEN):-len(CANDIDATES_CLOSE)]
    head, sep, tail = body.rpartition(CANDIDATES_OPEN)
    if not sep:
        raise UserError("user message has no candidate list")
    return head.split(SEP) if head else [], tail.split(SEP) if tail else []


def split_titles(text):
    """Split a generated or reference answer into titles, whitespace trimmed, empties dropped."""
    return [t.strip() for t in text.split(SEP) if t.strip()]


def sample_parts(sample, lineno=None):
    """(system, user, assistant-or-None) of a sample line; UserError if the messages are missing."""
    where = f"line {lineno}: " if lineno is not None else ""
    msgs = sample.get("messages") if isinstance(sample, dict) else None
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise UserError(f"{where}test line has no 'messages' list with system and user turns")
    by_role = {}
    for m in msgs:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{where}a message lacks 'role' or 'content'")
        by_role.setdefault(m["role"], m["content"])
    if "user" not in by_role:
        raise UserError(f"{where}test line has no user message")
    return by_role.get("system", SYSTEM), by_role["user"], by_role.get("assistant")
