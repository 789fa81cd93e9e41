"""From a self-edit (the action) to the token sequences the inner loop trains on.

Follows SEAL's ``build_train_sequences``: split the self-edit into pieces (by lines, by ``---``, or keep it
whole), drop a preamble line such as "Certainly! Here are the implications:" when the next line starts a
numbered list, prefix each piece with the article title, and append the passage itself as one more piece.
Unlike SEAL, the loss is by default taken on the piece only, not on the title prefix (``loss_on``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

SPLIT_MODES = ("lines", "segments", "none")
_SURROGATES = re.compile("[\ud800-\udfff]")
_NUMBERED = re.compile(r"^\s*(\d+[.)]|[-*•])\s")
_EMPHASIS = re.compile(r"(\*\*|__)(.+?)\1")
_HEADING = re.compile(r"^#{1,6}\s+")


@dataclass(frozen=True)
class TrainSequence:
    """One training example: ``prefix`` (not trained on by default) followed by ``text``."""

    prefix: str
    text: str


def sanitize_action(action: Any, max_chars: int) -> tuple[str, dict[str, Any]]:
    """Validate and clean a self-edit; returns the text and flags saying what was changed.

    A non-str raises ``TypeError``. Lone surrogates become U+FFFD, control characters other than newline and
    tab are removed, ``\\r\\n`` becomes ``\\n``, and text beyond ``max_chars`` is cut. Each is counted in flags.
    """
    if not isinstance(action, str):
        raise TypeError(f"a self-edit must be a str, got {type(action).__name__}")
    text, n_surrogates = _SURROGATES.subn("\ufffd", action)
    text = text.replace("\r\n", "\n")
    cleaned = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    flags = {
        "action_chars": len(action),
        "replaced_surrogates": n_surrogates,
        "removed_control_chars": len(text) - len(cleaned),
        "action_truncated_chars": max(0, len(cleaned) - max_chars),
    }
    return cleaned[:max_chars], flags


def strip_markup(piece: str) -> str:
    """A piece without Markdown emphasis (``**bold**``, ``__bold__``) and heading marks (``## ``), or ``""`` when
    it only introduces what follows: a line that is not a list item and ends with a colon ("**Implications:**",
    "Sure! Here are the implications:")."""
    text = _HEADING.sub("", _EMPHASIS.sub(r"\2", piece)).strip()
    if text.endswith(":") and not _NUMBERED.match(text):
        return ""
    return text


def split_self_edit(self_edit: str, mode: str = "lines", drop_preamble: bool = True, markup: bool = True) -> list[str]:
    """Split a self-edit into training pieces: ``lines`` (non-empty lines), ``segments`` (``---``), or ``none``.

    In ``lines`` mode a first line that is not a list item is dropped when the second one is (SEAL does this).
    With ``markup=False`` every piece goes through :func:`strip_markup` first (and pieces it empties are dropped).
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}")
    if mode == "none":
        pieces = [self_edit.strip()]
    else:
        pieces = [s.strip() for s in self_edit.split("---")]
        if mode == "lines":
            pieces = [ln.strip() for seg in pieces for ln in seg.splitlines()]
    if not markup:
        pieces = [strip_markup(p) for p in pieces]
    pieces = [p for p in pieces if p]
    if (
        mode == "lines"
        and drop_preamble
        and len(pieces) > 1
        and not _NUMBERED.match(pieces[0])
        and _NUMBERED.match(pieces[1])
    ):
        pieces = pieces[1:]
    return pieces


def build_sequences(
    self_edit: str,
    title: str,
    context: str,
    *,
    split: str = "lines",
    title_prefix: bool = True,
    include_passage: bool = True,
    drop_preamble: bool = True,
    markup: bool = True,
    max_sequences: int = 30,
) -> tuple[list[TrainSequence], dict[str, Any]]:
    """The training sequences for one self-edit, and info on what was cut (SEAL caps pieces at 30)."""
    pieces = split_self_edit(self_edit, split, drop_preamble, markup)
    info = {"self_edit_pieces": len(pieces), "dropped_pieces": max(0, len(pieces) - max_sequences)}
    pieces = pieces[:max_sequences]
    if include_passage:
        pieces.append(context.strip())
    prefix = f"{title}\n" if title_prefix else ""
    return [TrainSequence(prefix, p) for p in pieces], info


def encode_prefix(tokenizer: Any, text: str, max_tokens: int) -> tuple[list[int], int]:
    """Token ids of ``text``, tokenizing only as much of it as ``max_tokens`` tokens need: a prefix of
    ``8 * max_tokens`` characters, doubled until it gives ``max_tokens + 16`` tokens (the margin keeps the cut away
    from the tokens kept) or is the whole text. Returns the ids and the number of characters never tokenized.

    So a huge piece (e.g. a 100,000-character line) costs a few thousand characters of tokenizing, not all of it.
    """
    chars = 8 * max_tokens
    while True:
        ids = tokenizer.encode(text[:chars], add_special_tokens=False)
        if chars >= len(text) or len(ids) >= max_tokens + 16:
            return ids, max(0, len(text) - chars)
        chars *= 2


def tokenize_sequences(
    sequences: list[TrainSequence],
    tokenizer: Any,
    *,
    loss_on: str = "text",
    max_sequence_tokens: int = 512,
    max_total_tokens: int = 8192,
) -> tuple[list[tuple[list[int], int]], dict[str, Any]]:
    """Token ids and the index where the loss starts, per sequence; caps tokens and reports what it cut.

    ``loss_on="text"`` trains on the piece (and the end-of-sequence token) only; ``"all"`` on every token. Pieces are
    tokenized only as far as ``max_sequence_tokens`` needs (:func:`encode_prefix`): ``truncated_tokens`` counts the
    tokens cut from what was tokenized and ``truncated_chars`` the characters never tokenized.
    """
    if loss_on not in ("text", "all"):
        raise ValueError(f"loss_on must be 'text' or 'all', got {loss_on!r}")
    eos = tokenizer.eos_token_id
    out: list[tuple[list[int], int]] = []
    cut_tokens = cut_chars = dropped = total = 0
    for seq in sequences:
        head = tokenizer.encode(seq.prefix) if seq.prefix else []
        if not head and tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
            head = [tokenizer.bos_token_id]
        body, unread = encode_prefix(tokenizer, seq.text, max_sequence_tokens)
        cut_chars += unread
        ids = head + body + ([eos] if eos is not None else [])
        if len(ids) > max_sequence_tokens:
            cut_tokens += len(ids) - max_sequence_tokens
            ids = ids[:max_sequence_tokens]
        if total + len(ids) > max_total_tokens or len(ids) - len(head) < 1:
            dropped += 1
            continue
        total += len(ids)
        out.append((ids, 0 if loss_on == "all" else max(len(head), 1)))
    info = {
        "train_tokens": total,
        "truncated_tokens": cut_tokens,
        "truncated_chars": cut_chars,
        "dropped_sequences": dropped,
    }
    return out, info
