"""Batched inference that keeps every row in place, so that row ``i`` always goes through the same adapter.

mlx-lm's ``batch_generate`` drops finished rows from the batch as it goes; the quiz of several adapters at once
(:mod:`seal_env.learner.lora`: rows are laid out slot-major) needs the layout fixed. Here prompts are left-padded into
one mlx-lm ``BatchKVCache`` per layer (per-row positions and padding mask) and prefilled once (:func:`prefill`); from
that cache, :func:`score` gives the log-likelihood of candidate continuations (each row's cache repeated once per
candidate) and :func:`greedy_continue` decodes, keeping all rows until every row has stopped (a stopped row's
further tokens are discarded).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, cast

from seal_env.models.kernels import split_head

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import BatchKVCache


def _hidden_and_head(model: nn.Module) -> tuple[Any, Any]:
    """``(backbone(inputs, cache) -> hidden, head(hidden) -> logits)``; the whole model as backbone otherwise."""
    split = split_head(model)
    if split is None:
        return model, lambda h: h
    return split


def prefill(model: nn.Module, prompts: Sequence[Sequence[int]], room: int) -> tuple[list[BatchKVCache], mx.array]:
    """Run the left-padded prompts through ``model``: the caches (with ``room`` free positions) and the fp32 logits
    after each prompt's last token."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prefill needs at least one prompt, each with at least one token")
    width = max(len(p) for p in prompts)
    padding = [width - len(p) for p in prompts]
    tokens = mx.array(
        [[0] * pad + [int(t) for t in p] for p, pad in zip(prompts, padding, strict=True)], dtype=mx.int32
    )
    cache = [BatchKVCache(padding) for _ in model.layers]
    for c in cache:
        c.step = width + room  # one allocation that holds the prompt and everything after it
    backbone, head = _hidden_and_head(model)
    hidden = backbone(tokens, cache=cache)
    return cache, head(hidden[:, -1, :]).astype(mx.float32)


def select_rows(cache: list[BatchKVCache], rows: mx.array) -> list[BatchKVCache]:
    """A copy of ``cache`` with only ``rows`` (int array), for the same prompts without the others."""
    out = []
    for c in cache:
        r: Any = copy.copy(c)  # mlx-lm leaves keys/values unannotated (None until a prefill): mypy types them None
        r.keys, r.values = r.keys[rows], r.values[rows]
        r.offset, r.left_padding = c.offset[rows], c.left_padding[rows]
        out.append(r)
    return out


def _repeat(cache: list[BatchKVCache], n: int) -> list[BatchKVCache]:
    """Each row of ``cache`` repeated ``n`` times, consecutively (row-major: row i -> rows i*n .. i*n+n-1)."""
    out = []
    for c in cache:
        r: Any = copy.copy(c)  # keys/values: see select_rows
        r.keys, r.values = mx.repeat(r.keys, n, axis=0), mx.repeat(r.values, n, axis=0)
        r.offset, r.left_padding = mx.repeat(c.offset, n, axis=0), mx.repeat(c.left_padding, n, axis=0)
        out.append(r)
    return out


def score(
    model: nn.Module, cache: list[BatchKVCache], last_logits: mx.array, candidates: Sequence[Sequence[Sequence[int]]]
) -> list[list[float]]:
    """Mean log-probability per token of each candidate continuation of each prompt row (``candidates[row]``: token
    id lists, every row the same number of candidates), from the prefilled ``cache``, which is left as it was."""
    n_rows, n_cand = len(candidates), len(candidates[0])
    if any(len(c) != n_cand for c in candidates) or any(len(t) == 0 for c in candidates for t in c):
        raise ValueError("score: every row needs the same number of non-empty candidates")
    first = nn.log_softmax(last_logits, axis=-1)  # the first candidate token follows the prompt's last logits
    flat = [list(t) for c in candidates for t in c]
    rows_of = np.repeat(np.arange(n_rows), n_cand)
    total = np.asarray(first[mx.array(rows_of), mx.array([t[0] for t in flat])], dtype=np.float64)
    width = max(len(t) for t in flat) - 1
    if width > 0:
        inputs = np.zeros((len(flat), width), np.int32)
        targets = np.zeros((len(flat), width), np.int32)
        mask = np.zeros((len(flat), width), bool)
        for i, t in enumerate(flat):
            inputs[i, : len(t) - 1], targets[i, : len(t) - 1], mask[i, : len(t) - 1] = t[:-1], t[1:], True
        backbone, head = _hidden_and_head(model)
        hidden = backbone(mx.array(inputs), cache=_repeat(cache, n_cand))
        where = np.nonzero(mask.reshape(-1))[0]
        logits = head(hidden.reshape(-1, hidden.shape[-1])[mx.array(where)]).astype(mx.float32)
        picked = -nn.losses.cross_entropy(logits, mx.array(targets.reshape(-1)[where]))
        total += np.bincount(where // width, weights=np.asarray(picked, dtype=np.float64), minlength=len(flat))
    per = total / np.array([len(t) for t in flat])
    return [[float(x) for x in per[r * n_cand : (r + 1) * n_cand]] for r in range(n_rows)]


def greedy_continue(
    model: nn.Module, cache: list[BatchKVCache], last_logits: mx.array, max_tokens: int, stop_tokens: Sequence[int]
) -> list[list[int]]:
    """Greedy continuations (at most ``max_tokens`` each, without the stop token) from prefilled caches."""
    stop = {int(t) for t in stop_tokens}
    n = last_logits.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    running = [True] * n

    def step(y: mx.array) -> mx.array:
        return mx.argmax(model(y[:, None], cache=cache)[:, -1, :], axis=-1)

    y = mx.argmax(last_logits, axis=-1)
    mx.async_eval(y)
    for i_step in range(max_tokens):
        nxt = step(y) if i_step + 1 < max_tokens else None
        if nxt is not None:
            mx.async_eval(nxt)
        for i, t in enumerate(cast(list[int], y.tolist())):
            if running[i]:
                if t in stop:
                    running[i] = False
                else:
                    out[i].append(t)
        if not any(running) or nxt is None:
            break
        y = nxt
    return out


def greedy_generate(
    model: nn.Module, prompts: Sequence[Sequence[int]], max_tokens: int, stop_tokens: Sequence[int]
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token ids), at most ``max_tokens`` each, without the stop token."""
    if not prompts or max_tokens <= 0:
        return [[] for _ in prompts]
    cache, last = prefill(model, prompts, max_tokens)
    return greedy_continue(model, cache, last, max_tokens, stop_tokens)
