"""Model folders built once into the cache (the SmolLM2 conversion, the tiny random models) and the perplexity check
that a conversion is right."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from seal_env.env_vars import cache_dir

if TYPE_CHECKING:
    import mlx.nn as nn
    from mlx_lm.tokenizer_utils import TokenizerWrapper

# Bump when the conversion (weights, config or tokenizer files) changes: cached folders with another recipe are rebuilt.
RECIPE = 1
MARKER = "seal_env_recipe.json"


def perplexity(model: nn.Module, tokenizer: TokenizerWrapper, text: str) -> float:
    """Perplexity of ``text`` under ``model`` (no BOS added; every token after the first is predicted)."""
    import mlx.core as mx
    import mlx.nn as nn

    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least 2 tokens")
    tokens = mx.array(ids)[None]
    logits = model(tokens[:, :-1]).astype(mx.float32)
    loss = nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="mean")
    return float(math.exp(cast(float, loss.item())))


def is_current(folder: Path) -> bool:
    try:
        return json.loads((folder / MARKER).read_text())["recipe"] == RECIPE
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_once(name: str, build: Any) -> Path:
    """Return ``cache_dir()/name``, building it with ``build(tmp_folder)`` under a file lock if missing or stale.

    The folder is built in a temp dir inside the cache and renamed into place, so readers never see a partial one.
    """
    from filelock import FileLock

    root = cache_dir()
    final = root / name
    if is_current(final):
        return final
    with FileLock(str(root / f".{name}.lock")):
        if is_current(final):  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it owner-only
            info = build(tmp) or {}
            (tmp / MARKER).write_text(json.dumps({"recipe": RECIPE, **info}, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
