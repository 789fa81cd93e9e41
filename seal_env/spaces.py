"""A Gymnasium text space that accepts any Unicode string.

``gymnasium.spaces.Text`` only contains strings drawn from its charset (alphanumeric by default), which no real
article or self-edit is. :class:`UnicodeText` keeps ``Text``'s length bounds and ``sample()`` (drawn from a
printable charset that includes spaces, punctuation, newlines and some non-ASCII letters) but its ``contains``
accepts any ``str`` of valid length.
"""

from __future__ import annotations

import string
from typing import Any

from seal_env.articles import MAX_CONTEXT_CHARS, MAX_TITLE_CHARS, Article

from gymnasium import spaces

SAMPLE_CHARSET = string.ascii_letters + string.digits + " .,;:!?'\"()-\n" + "éüñßøçàΩλжд中文"


class UnicodeText(spaces.Text):
    """Any ``str`` with ``min_length <= len <= max_length``; samples from :data:`SAMPLE_CHARSET`."""

    def __init__(self, max_length: int, *, min_length: int = 0, seed: Any = None):
        super().__init__(max_length, min_length=min_length, charset=SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"


def article_space() -> spaces.Dict:
    """The observation space of every environment: an article's ``title`` and ``context`` (never its questions)."""
    return spaces.Dict(
        {"title": UnicodeText(max_length=MAX_TITLE_CHARS), "context": UnicodeText(max_length=MAX_CONTEXT_CHARS)}
    )


def observation(article: Article) -> dict[str, str]:
    """An article as the environments show it: its title and passage, never the questions."""
    return {"title": article.title, "context": article.context}
