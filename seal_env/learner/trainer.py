"""The SEAL inner loop's learner: one frozen model with ``n`` LoRA adapters, trained and quizzed together.

:class:`Learner` wraps the model once with :class:`seal_env.learner.lora.MultiLoRALinear`. Each pass calls
:meth:`Learner.reset` with one seed per adapter slot (fresh LoRA weights, base weights untouched), then
:meth:`Learner.train` (every slot on its own data, in one batched step loop) and the two quiz methods (greedy
answers, gold answers' log-likelihood), which return one result per slot. With no slots (``reset([])``) the model
is the frozen base model: that is the baseline.

Training: every step takes the next batch of every slot that still has steps (each slot with its own data order,
epochs, learning-rate schedule and AdamW state), grouped by length into padded passes; the loss is the sum of the
slots' mean losses, so each slot's gradient is its own. A slot whose loss is not finite or exceeds ``max_loss``
stops (diverged); the others go on. The loss is SFT's next-token cross-entropy unless :meth:`Learner.train` is
given another (as mlx-lm's ``train(loss=...)``), e.g. the GRPO objective of ``agents/grpo.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from seal_env.config import SealConfig
from seal_env.learner.adapter_optim import AdapterOptimizer, clip_slot_grads, slot_grad_norms
from seal_env.learner.batching import (
    ExtrasRow,
    Loss,
    TrainRow,
    batch_plan,
    length_buckets,
    make_loss,
    pass_arrays,
    slot_loss,
)
from seal_env.learner.decode import greedy_continue, prefill, score, select_rows
from seal_env.learner.lora import (
    add_multi_lora,
    base_weights,
    finite_slots,
    fused_weights,
    init_adapters,
    load_base_weights,
    resolve_lora_keys,
)
from seal_env.learner.memory import keep_freed_memory, release_memory
from seal_env.models import model_fingerprint
from seal_env.models.kernels import use_fast_kernels
from seal_env.prompts import uses_chat

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map


class Learner:
    """A model with ``n`` LoRA adapter slots that can be reset, fine-tuned and quizzed, many times over."""

    #: Distinct batch shapes whose compiled traces are kept; past this the compiled function is rebuilt (memory).
    MAX_TRACES = 16
    #: With ``fixed_shapes``: the traces kept (its shapes recur across rewards but can be more than 16; a trace holds
    #: a graph, not activations), and the multiples a pass's width and loss positions are rounded up to (rows per
    #: slot go up :func:`~seal_env.learner.batching.ladder_up`; the slots of a pass are not padded).
    MAX_TRACES_FIXED = 64
    SHAPE_WIDTH_STEP = 16
    SHAPE_POSITIONS_STEP = 32
    #: The fixed cost of one forward and backward pass, in padded tokens, and the most padded tokens of one pass
    #: (memory): they decide how a step's batches are grouped (see :func:`length_buckets`).
    BUCKET_OVERHEAD_TOKENS = 32
    PASS_MAX_TOKENS = 256

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        cfg: SealConfig,
        *,
        fast_kernels: bool = True,
        head_on_positions: bool = True,
        compile: bool = True,
        fixed_shapes: bool = True,
    ):
        """``fast_kernels``, ``head_on_positions``, ``compile`` and ``fixed_shapes`` are the speed levers (all on by
        default; all off = the plain mlx-lm path; results agree to float rounding). The fast kernels are float32
        code for CPUs (off with half-precision weights). ``fixed_shapes`` pads every pass to a few shapes so compiled
        traces are reused (only with ``compile``; with LoRA dropout, its masks are drawn over the padded shape). The
        adapters and their optimizer state are float32 whatever the weights' dtype."""
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        model.freeze()
        keys = resolve_lora_keys(model, cfg.lora_modules)
        n_layers = len(model.layers) if cfg.lora_layers == -1 else min(cfg.lora_layers, len(model.layers))
        self.slots, self.adapters = add_multi_lora(
            model, keys, n_layers, cfg.lora_rank, cfg.lora_alpha / cfg.lora_rank, cfg.lora_dropout
        )
        #: Trainable parameters of one adapter slot.
        self.n_trainable = sum(m.in_dims * m.rank + m.rank * m.out_dims for m in self.adapters)
        self.n_slots = 0
        #: The dtype the frozen weights compute in (seal_env.models.compute_dtype).
        self.dtype = self.adapters[0].linear.weight.dtype if self.adapters else mx.float32
        fast_kernels = fast_kernels and self.dtype == mx.float32
        self.set_levers(
            fast_kernels=fast_kernels, head_on_positions=head_on_positions, compile=compile, fixed_shapes=fixed_shapes
        )
        keep_freed_memory()
        self.reset([])

    def set_levers(
        self, *, fast_kernels: bool, head_on_positions: bool, compile: bool, fixed_shapes: bool | None = None
    ) -> None:
        """Switch the speed levers (see :meth:`__init__`; ``fixed_shapes=None`` keeps it as it is); results stay
        equal up to float rounding."""
        self.fast_kernels, self.head_on_positions, self.compile = fast_kernels, head_on_positions, compile
        if fixed_shapes is not None:
            self.fixed_shapes = fixed_shapes
        use_fast_kernels(self.model, fast_kernels)
        self._use_loss(None)

    @property
    def padded(self) -> bool:
        """Whether passes are padded to fixed shapes (``fixed_shapes`` with ``compile``: without compiled traces to
        reuse, padding would only cost time)."""
        return self.fixed_shapes and self.compile

    def _use_loss(self, loss: Loss | None) -> None:
        """Train with ``loss`` (``None``: SFT's cross-entropy, :func:`make_loss`); drops the compiled traces."""
        self._loss = loss
        step_loss = make_loss(self.head_on_positions, self.fast_kernels) if loss is None else slot_loss(loss)
        slots = self.slots

        def routed(model: nn.Module, index: mx.array, *batch: mx.array) -> tuple[Any, ...]:
            slots.index = index  # read by every MultiLoRALinear during this forward (and its trace)
            return step_loss(model, *batch)

        self._value_and_grad = nn.value_and_grad(self.model, routed)
        self._compiled: Any = None
        self._shapes: set[tuple[tuple[int, ...], ...]] = set()

    def loss_and_grad(self, index: mx.array, *batch: mx.array) -> tuple[tuple[Any, ...], Any]:
        """One training step's forward and backward for the slots ``index`` (compiled per batch shape when
        ``compile``): ``((total, per-slot losses, per-slot tokens), grads)``, and the per-slot metrics after the
        tokens for a custom loss."""
        with self._routed(index):
            if not self.compile:
                return self._value_and_grad(self.model, index, *batch)
            shape = (index.shape, *(x.shape for x in batch))
            limit = self.MAX_TRACES_FIXED if self.padded else self.MAX_TRACES
            if self._compiled is None or (shape not in self._shapes and len(self._shapes) >= limit):
                model = self.model
                state = [model.state, mx.random.state]
                self._compiled = mx.compile(lambda *b: self._value_and_grad(model, *b), inputs=state, outputs=state)
                self._shapes.clear()
            self._shapes.add(shape)
            return self._compiled(index, *batch)

    @contextmanager
    def _routed(self, index: mx.array | None) -> Iterator[None]:
        previous, self.slots.index = self.slots.index, index
        try:
            yield
        finally:
            self.slots.index = previous

    def reset(self, seeds: Sequence[int]) -> None:
        """``len(seeds)`` fresh adapter slots; slot ``j`` is initialised from ``seeds[j]`` exactly as a single
        adapter would be (A uniform(+-1/sqrt(in)), B = 0). ``reset([])``: no adapters, the base model."""
        init_adapters(self.adapters, list(seeds))
        self.n_slots = len(seeds)
        self.slots.index = mx.arange(self.n_slots, dtype=mx.int32) if self.n_slots else None

    # ----------------------------------------------------------------------------------------------- training
    def _update_fn(self, opt: AdapterOptimizer) -> Callable[..., None]:
        """``apply(grads, mask, lr, c1, c2)``: one optimizer update of every adapter slot (compiled when
        ``self.compile``; the shapes are fixed for a whole :meth:`train`)."""
        model = self.model
        opt.init(model.trainable_parameters())

        def apply(grads: Any, *step: mx.array) -> None:
            model.update(opt.apply(grads, model.trainable_parameters(), *step))

        if not self.compile:
            return apply
        state = [model.state, opt.state]
        compiled = mx.compile(apply, inputs=state, outputs=state)

        def run(grads: Any, *step: mx.array) -> None:
            compiled(grads, *step)

        return run

    def train(
        self,
        datas: Sequence[Sequence[TrainRow | ExtrasRow]],
        seeds: Sequence[int],
        on_step: Callable[[list[float]], None] | None = None,
        loss: Loss | None = None,
        grad_norms: bool = False,
        max_grad_norm: float | None = None,
    ) -> list[dict[str, Any]]:
        """Fine-tune slot ``j`` on ``datas[j]`` (token ids, loss start) for ``cfg.epochs``, shuffled with
        ``seeds[j]``; returns one train report per slot.

        ``on_step(losses)`` is called after every batched step with the losses of the slots that stepped. A slot
        stops early, with ``diverged=True``, if its loss is not finite or exceeds ``cfg.max_loss``, or if its
        adapter weights end up non-finite. ``train_seconds`` is the pass's wall time shared by optimizer steps.
        With ``grad_norms=True`` (an extra pass over the gradients at every step, so the inner loop leaves it off)
        the reports hold ``grad_norms``: per optimizer step the slot took, the global L2 norm of its adapter's
        gradient (all of its LoRA parameters together, before clipping). With ``max_grad_norm`` each slot's gradient
        is scaled down to that global L2 norm where it is larger (gradient clipping, before the optimizer update);
        ``None``: no clipping.

        ``loss`` replaces SFT's cross-entropy (:data:`~seal_env.learner.batching.Loss`, as mlx-lm's
        ``train(loss=...)``); its per-slot metrics are then in the reports as ``train_metrics`` (a list per name,
        one value per step).
        """
        cfg, model, n = self.cfg, self.model, self.n_slots
        if len(datas) != n or len(seeds) != n:
            raise ValueError(f"train: {len(datas)} data sets and {len(seeds)} seeds for {n} adapter slots")
        if loss is not self._loss:
            self._use_loss(loss)
        plans = [
            batch_plan(len(data), seed, cfg.epochs, cfg.batch_size) for data, seed in zip(datas, seeds, strict=True)
        ]
        if seeds:
            mx.random.seed(int(seeds[0]))  # LoRA dropout (one stream for the whole pass)
        losses: list[list[float]] = [[] for _ in range(n)]
        norms: list[list[float]] = [[] for _ in range(n)]
        metrics: list[dict[str, list[float]]] = [{} for _ in range(n)]
        tokens, diverged = [0] * n, [False] * n
        t0 = time.perf_counter()
        opt = AdapterOptimizer.from_config(self.cfg, [len(p) for p in plans])
        apply = self._update_fn(opt) if any(plans) else None
        model.train()
        try:
            for step in range(max((len(p) for p in plans), default=0)):
                active = [k for k in range(n) if not diverged[k] and step < len(plans[k])]
                if not active:
                    break
                batches = {k: [datas[k][j] for j in plans[k][step]] for k in active}
                values: dict[int, float] = {}
                counts: dict[int, int] = {}
                found: dict[int, dict[str, float]] = {k: {} for k in active}
                grads = None
                for bucket in length_buckets(
                    batches,
                    self.BUCKET_OVERHEAD_TOKENS,
                    self.PASS_MAX_TOKENS,
                    self.SHAPE_WIDTH_STEP if self.padded else 1,
                    self.padded,
                ):
                    (_, per_slot, ntoks, *rest), g = self._bucket_loss_and_grad(bucket, batches)
                    grads = g if grads is None else tree_map(mx.add, grads, g)
                    mx.eval(grads, per_slot, ntoks, rest)  # one pass's activations at a time in memory
                    values.update(zip(bucket, cast(list[float], per_slot.tolist()), strict=True))
                    counts.update(zip(bucket, (int(c) for c in cast(list[float], ntoks.tolist())), strict=True))
                    for name, value in cast(dict[str, mx.array], rest[0] if rest else {}).items():
                        for k, x in zip(bucket, cast(list[float], value.tolist()), strict=True):
                            found[k][name] = x
                stepping = []
                for k in active:
                    if math.isfinite(values[k]) and values[k] <= cfg.max_loss:
                        stepping.append(k)
                    else:
                        diverged[k] = True
                if stepping:
                    assert apply is not None  # a slot steps only if it has a plan
                    if grad_norms or max_grad_norm is not None:
                        slot_norms = slot_grad_norms(grads, n)
                        if grad_norms:
                            step_norms = cast(list[float], slot_norms.tolist())
                            for k in stepping:
                                norms[k].append(step_norms[k])
                        if max_grad_norm is not None:
                            grads = clip_slot_grads(grads, slot_norms, max_grad_norm)
                    mask_slots = [k in stepping for k in range(n)]
                    apply(grads, *opt.step_inputs(mask_slots))
                    mx.eval(model.trainable_parameters(), opt.state)
                for k in stepping:
                    losses[k].append(values[k])
                    tokens[k] += counts[k]
                    for name, x in found[k].items():
                        metrics[k].setdefault(name, []).append(x)
                if on_step is not None and stepping:
                    on_step([values[k] for k in stepping])
            finite = finite_slots(self.adapters, self.n_slots)
            for k in range(n):
                if losses[k] and not finite[k]:
                    diverged[k] = True
        finally:
            model.eval()
            release_memory()
        seconds = time.perf_counter() - t0
        total_steps = max(sum(len(x) for x in losses), 1)
        return [
            {
                "train_losses": losses[k],
                "train_steps": len(losses[k]),
                "trained_tokens": tokens[k],
                "diverged": diverged[k],
                "train_seconds": seconds * (len(losses[k]) / total_steps if n > 1 else 1),
                **({"train_metrics": metrics[k]} if loss is not None else {}),
                **({"grad_norms": norms[k]} if grad_norms else {}),
            }
            for k in range(n)
        ]

    def _bucket_loss_and_grad(
        self, bucket: list[int], batches: dict[int, list[TrainRow | ExtrasRow]]
    ) -> tuple[tuple[mx.array, ...], Any]:
        """Loss and gradients of the slots in ``bucket`` (each with its step's batch), as one padded pass
        (:func:`~seal_env.learner.batching.pass_arrays`, with ``fixed_shapes`` at this class's sizes)."""
        fixed = self.padded
        arrays = pass_arrays(
            bucket,
            batches,
            custom_loss=self._loss is not None,
            head_on_positions=self.head_on_positions,
            width_step=self.SHAPE_WIDTH_STEP if fixed else 1,
            positions_step=self.SHAPE_POSITIONS_STEP if fixed else 1,
            ladder_rows=fixed,
        )
        return self.loss_and_grad(*arrays)

    # ----------------------------------------------------------------------------------------------- the quiz
    def _encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=not uses_chat(self.tokenizer))

    @property
    def _groups(self) -> int:
        """Row groups of a quiz: one per slot, or one for the base model."""
        return max(self.n_slots, 1)

    def ask(
        self,
        prompts: Sequence[str],
        candidates: Sequence[Sequence[str]],
        max_tokens: int,
        answer: Sequence[bool] | None = None,
    ) -> tuple[list[list[str]], list[list[list[float]]]]:
        """Quiz every slot: greedy answers (up to ``max_tokens``; none if 0) to the prompts marked in ``answer``
        (default: all) and the mean log-probability per token of each candidate continuation of every prompt.

        Returns ``answers[slot][prompt]`` ("" where not asked) and ``scores[slot][prompt][candidate]``. All prompts
        of all slots are prefilled once (slot-major rows); the candidates are scored from copies of that cache, one
        slot at a time (memory), and the answers decoded from it. Every prompt needs the same number of candidates.
        """
        groups, q = self._groups, len(prompts)
        if not prompts:
            return [[] for _ in range(groups)], [[] for _ in range(groups)]
        answer = [True] * q if answer is None else list(answer)
        ids = [self._encode_prompt(p) for p in prompts] * groups  # slot-major rows
        cand = [
            [self.tokenizer.encode(c.strip(), add_special_tokens=False) or [self.tokenizer.eos_token_id] for c in row]
            for row in candidates
        ]
        room = max(max_tokens, max(len(t) for row in cand for t in row))
        cache, last = prefill(self.model, ids, room)
        scores = []
        for g in range(groups):
            rows = mx.arange(g * q, (g + 1) * q)
            with self._routed(None if self.n_slots == 0 else mx.array([g], dtype=mx.int32)):
                scores.append(score(self.model, select_rows(cache, rows), last[rows], cand))
        answers = [[""] * q for _ in range(groups)]
        asked = [g * q + i for g in range(groups) for i in range(q) if answer[i]]
        if max_tokens > 0 and asked:
            keep = mx.array(asked)
            tokens = greedy_continue(
                self.model, select_rows(cache, keep), last[keep], max_tokens, self.tokenizer.eos_token_ids
            )
            for row, t in zip(asked, tokens, strict=True):
                answers[row // q][row % q] = self.tokenizer.decode(t).split("\nQuestion:")[0].strip()
        return answers, scores

    def answer_logliks(self, prompts: Sequence[str], answers: Sequence[str]) -> list[list[float]]:
        """Mean log-probability per token of each gold ``answer`` after its ``prompt``, for every slot
        (``[slot][prompt]``)."""
        scores = self.ask(prompts, [[a] for a in answers], 0)[1]
        return [[row[0] for row in slot] for slot in scores]

    # ----------------------------------------------------------------------------------------------- weights
    def fused_weights(self, slot: int = 0) -> dict[str, mx.array]:
        """Base weights with slot ``slot``'s adapter folded in (:func:`seal_env.learner.lora.fused_weights`)."""
        return fused_weights(self.model, slot)

    def base_weights(self) -> dict[str, mx.array]:
        """The frozen weights under the adapters (plain mlx-lm names)."""
        return base_weights(self.model)

    def set_base_weights(self, weights: dict[str, mx.array]) -> None:
        """Replace frozen base weights (plain mlx-lm names, e.g. from a fused policy) under the LoRA wrappers: the
        inner-loop learner becomes an updated policy (SEAL's "the model adapts itself");
        :func:`seal_env.learner.lora.load_base_weights`."""
        load_base_weights(self.model, weights)
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the base weights (names, shapes, dtypes, bytes) and the vocabulary: the model's identity
        for the reward cache. Computed once, and again after :meth:`set_base_weights`."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = model_fingerprint(self.model, self.tokenizer)
        return cast(str, self._fingerprint)
