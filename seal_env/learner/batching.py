"""Training rows to batches: each slot's shuffled batches (:func:`batch_plan`), padded next-token ``inputs`` /
``targets`` / loss ``mask`` (:func:`make_batch`), a custom loss's per-row extras (:func:`stack_extras`), the SFT loss
at loss positions only (:func:`make_loss`), the grouping of one step's adapter slots into padded passes by length
(:func:`length_buckets`), the sizes that fixed shapes round a pass up to (:func:`round_up`, :func:`ladder_up`), and
one pass's arrays (:func:`pass_arrays`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from seal_env.models.kernels import cross_entropy, position_logits

import mlx.core as mx
import mlx.nn as nn
import numpy as np

#: A training sequence: token ids and the index of the first token the loss is on.
TrainRow = tuple[list[int], int]
#: A training sequence with its extra inputs to a custom loss (see :func:`stack_extras`).
ExtrasRow = tuple[list[int], int, tuple[Any, ...]]
#: A custom training loss (:meth:`Learner.train`'s ``loss``), ``loss(model, inputs, targets, mask, groups, *extras)
#: -> (losses, tokens, metrics)``. It gets a padded batch of rows (:func:`make_batch`; with fixed shapes wider and
#: with more padding rows), ``groups`` (slots x rows, one-hot: the stepping slots' rows; padding rows are in none)
#: and the rows' extras (:func:`stack_extras`); it returns, like mlx-lm's ``(loss, ntoks)``, one loss per slot (each
#: slot's gradient must be its own loss's), its tokens (for ``trained_tokens``) and a dict of per-slot metrics.
#: Compute each value once: mlx 0.32's compile fails (``IndexError: _Map_base::at``) when a returned value
#: recomputes an expression of the loss.
Loss = Callable[..., tuple[mx.array, mx.array, dict[str, mx.array]]]


def round_up(n: int, step: int) -> int:
    """``n`` rounded up to a multiple of ``step``."""
    return -(-n // step) * step


def ladder_up(n: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and three times them) that is at least
    ``n``: less than half as much again as ``n``, with few sizes."""
    power = 1 << max(n - 1, 0).bit_length()
    return 3 * power // 4 if 3 * power // 4 >= n else power


def make_batch(rows: Sequence[TrainRow | ExtrasRow | None], width_step: int = 1) -> tuple[mx.array, mx.array, mx.array]:
    """Right-padded ``inputs``, ``targets`` and loss ``mask`` for next-token prediction (``None``: an empty row),
    their width (the longest row's minus one) rounded up to a multiple of ``width_step``."""
    width = round_up(max([len(r[0]) for r in rows if r is not None] + [2]) - 1, width_step)
    inputs = np.zeros((len(rows), width), np.int32)
    targets = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.float32)
    for i, row in enumerate(rows):
        if row is None:
            continue
        ids, start = row[0], row[1]
        n = len(ids) - 1
        inputs[i, :n], targets[i, :n] = ids[:-1], ids[1:]
        mask[i, max(start - 1, 0) : n] = 1.0  # target j predicts token j + 1
    return mx.array(inputs), mx.array(targets), mx.array(mask)


def stack_extras(rows: Sequence[TrainRow | ExtrasRow | None], width: int) -> list[mx.array]:
    """The rows' extra inputs (a row's third item), one float32 array per extra: a number per row gives ``(rows,)``,
    an array per row (a value per target token: ``len(ids) - 1``) gives ``(rows, width)``, zero-padded. Rows without
    extras (``None`` rows) are zeros."""
    extras = [row[2] if row is not None and len(row) == 3 else None for row in rows]
    first = next((e for e in extras if e is not None), ())
    out = []
    for i in range(len(first)):
        per_token = np.ndim(first[i]) > 0
        stacked = np.zeros((len(rows), width) if per_token else (len(rows),), np.float32)
        for j, e in enumerate(extras):
            if e is not None:
                value = np.asarray(e[i], np.float32)
                if per_token:
                    stacked[j, : value.size] = value
                else:
                    stacked[j] = value
        out.append(mx.array(stacked))
    return out


def loss_positions(mask: mx.array, only_loss: bool = True) -> tuple[mx.array, mx.array]:
    """Flat positions and weights: where ``mask`` is set, or all positions with the mask as weights."""
    flat = np.asarray(mask).reshape(-1)
    if only_loss:
        idx = np.nonzero(flat > 0)[0].astype(np.int32)
        return mx.array(idx), mx.array(flat[idx])
    return mx.arange(flat.size, dtype=mx.int32), mx.array(flat)


def make_loss(head_on_positions: bool = True, fast: bool = True) -> Callable[..., tuple[mx.array, ...]]:
    """``loss(model, inputs, targets, positions, weights, groups) -> (total, per-group mean losses, tokens)``.

    Next-token cross-entropy at flat ``positions`` (of rows * width) with 0/1 ``weights``; ``groups`` (one-hot,
    groups x positions) says which adapter slot each position belongs to. ``total`` is the sum of the groups' mean
    losses. ``head_on_positions`` applies the output projection only at the positions; ``fast`` computes the
    log-sum-exp with :func:`seal_env.models.kernels.fast_exp`. Both off = the plain mlx-lm path.
    """

    def loss(
        model: nn.Module, inputs: mx.array, targets: mx.array, positions: mx.array, weights: mx.array, groups: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        if head_on_positions:
            logits = position_logits(model, inputs, positions)
        else:
            logits = model(inputs)
            logits = logits.reshape(-1, logits.shape[-1])[positions].astype(mx.float32)
        ce = cross_entropy(logits, targets.reshape(-1)[positions], fast) * weights
        ntoks = groups @ weights
        # a where, not a product with the one-hot: a non-finite loss of one slot must not reach the others
        per_group = mx.where(groups > 0, ce[None, :], 0.0).sum(axis=1) / mx.maximum(ntoks, 1)
        return per_group.sum(), per_group, ntoks

    return loss


def slot_loss(loss: Loss) -> Callable[..., tuple[Any, ...]]:
    """A custom :data:`Loss` in the form the training step takes: ``(total, per-slot losses, per-slot tokens,
    metrics)``, with ``total`` the sum of the slots' losses."""

    def wrapped(*batch: Any) -> tuple[Any, ...]:
        losses, tokens, metrics = loss(*batch)
        return losses.sum(), losses, tokens, metrics

    return wrapped


def batch_plan(rows: int, seed: int, epochs: int, batch_size: int) -> list[np.ndarray]:
    """One slot's batches (row indices), epoch after epoch, each epoch in its own order drawn from ``seed``; none
    without rows."""
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(epochs if rows else 0):
        order = rng.permutation(rows)
        plan += [order[i : i + batch_size] for i in range(0, rows, batch_size)]
    return plan


def length_buckets(
    batches: Mapping[int, Sequence[TrainRow | ExtrasRow]],
    overhead_tokens: int,
    max_tokens: int = 2**31,
    width_step: int = 1,
    ladder_rows: bool = False,
) -> list[list[int]]:
    """Group the slots of one step into padded passes: slots sorted by their batch's longest row, cut into
    contiguous groups that minimise the total of ``overhead_tokens + rows x width`` (an exact dynamic programme),
    each group at most ``max_tokens`` padded tokens (unless it is a single slot).

    Long rows (e.g. the passage) then do not pad every short self-edit piece to their length, and the memory of one
    pass stays bounded whatever the number of slots. The padded sizes are those the pass will have: the width
    rounded up to a multiple of ``width_step``, and with ``ladder_rows`` the rows per slot up to :func:`ladder_up`.
    """
    order = sorted(batches, key=lambda k: (max(len(r[0]) for r in batches[k]), k))
    width = [round_up(max(len(r[0]) for r in batches[k]) - 1, width_step) for k in order]
    count = [ladder_up(len(batches[k])) if ladder_rows else len(batches[k]) for k in order]
    best = [0.0] + [math.inf] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            tokens = (end - start) * max(count[start:end]) * width[end - 1]
            if tokens > max_tokens and end - start > 1:
                continue
            cost = best[start] + overhead_tokens + tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def pass_arrays(
    bucket: Sequence[int],
    batches: Mapping[int, Sequence[TrainRow | ExtrasRow]],
    *,
    custom_loss: bool,
    head_on_positions: bool,
    width_step: int = 1,
    positions_step: int = 1,
    ladder_rows: bool = False,
) -> tuple[mx.array, ...]:
    """One padded pass over the slots in ``bucket`` (each with its step's batch), as the arguments of the training
    step: ``(index, inputs, targets, mask, groups, *extras)`` for a custom loss (groups: slots x rows), else
    ``(index, inputs, targets, positions, weights, groups)`` for :func:`make_loss` (groups: slots x positions).
    Rows are slot-major; the width is rounded up to ``width_step``, the rows per slot up :func:`ladder_up` with
    ``ladder_rows``, and (with ``head_on_positions``) the loss positions to ``positions_step``: padding rows are
    masked, padding positions have weight 0, and neither is in a group."""
    rows_each = max(len(batches[k]) for k in bucket)
    if ladder_rows:
        rows_each = ladder_up(rows_each)
    rows: list[TrainRow | ExtrasRow | None] = []
    for k in bucket:  # slot-major: the rows of bucket[j] form group j
        rows += list(batches[k]) + [None] * (rows_each - len(batches[k]))
    inputs, targets, mask = make_batch(rows, width_step)
    index = mx.array(list(bucket), dtype=mx.int32)
    slot_ids = np.arange(len(bucket))[:, None]
    if custom_loss:
        row_slot = np.array([-1 if row is None else r // rows_each for r, row in enumerate(rows)])
        groups = mx.array((row_slot[None, :] == slot_ids).astype(np.float32))
        return (index, inputs, targets, mask, groups, *stack_extras(rows, inputs.shape[1]))
    positions, weights = loss_positions(mask, head_on_positions)
    group_of = np.asarray(positions) // (rows_each * inputs.shape[1])
    if head_on_positions:  # else the positions are all of rows x width, already padded
        pad = round_up(len(group_of), positions_step) - len(group_of)
        if pad:  # a padding position repeats a real loss position (a non-finite value there is already that slot's)
            flat = np.asarray(positions)
            flat = np.concatenate([flat, np.full(pad, flat[0] if len(flat) else 0, np.int32)])
            positions = mx.array(flat)
            weights = mx.concatenate([weights, mx.zeros((pad,), dtype=weights.dtype)])
            group_of = np.concatenate([group_of, np.full(pad, -1)])
    groups = mx.array((group_of[None, :] == slot_ids).astype(np.float32))
    return (index, inputs, targets, positions, weights, groups)
