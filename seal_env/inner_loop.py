"""The SEAL inner loop on mlx-lm: one LoRA-wrapped model, reset in place, trained on a self-edit, then quizzed.

:class:`Learner` wraps the model with mlx-lm's LoRA layers once. Each reward calls :meth:`Learner.reset`
(fresh LoRA weights from a seed, base weights untouched), :meth:`Learner.train`, and the two evaluation
methods: greedy answers with mlx-lm's ``batch_generate``, and the gold answers' log-likelihood.
With ``lora_b = 0`` the adapter adds exactly zero, so the reset model *is* the base model: that is how the
baseline is computed.

Speed (benchmarks/inner_loop_speed.py, benchmarks/RESULTS.md): the training step is mostly fp32 matmuls, and on
Linux CPUs mlx evaluates ``exp``/``sigmoid`` one scalar at a time, which made them about a fifth of a step. In
training mode the llama MLP (SwiGLU), the attention softmax and the cross-entropy therefore use :func:`fast_exp`
(Cephes' ``expf`` polynomial written with vectorised mlx ops, max relative error ~1e-7); the output projection
(the 49152-row tied embedding) is applied only where the loss is; and the loss-and-gradient function and the
optimizer update are compiled with ``mx.compile`` (one trace per sequence shape). Generation runs the stock
mlx-lm code; the answer log-likelihoods apply the output projection only at the answer tokens.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
import time
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.generate import batch_generate
from mlx_lm.models import llama
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from seal_env.config import SealConfig
from seal_env.prompts import uses_chat


def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MB in its heap instead of handing them back to the OS at once.

    mlx's CPU buffer cache holds 32 MB by default; a training step frees and reallocates far more (activations of
    every layer), and glibc unmaps large freed blocks, so every SmolLM2 step page-faulted ~40,000 fresh pages and
    spent ~20% of its CPU time in the kernel. With a 32 MB mmap threshold (glibc's maximum) and a 1 GB trim
    threshold, a step takes ~6% less wall time at the same peak RSS (``benchmarks/RESULTS.md``);
    :func:`release_memory` still trims after each fine-tune. Process-wide; ``SEAL_ENV_MALLOC_TUNING=off`` skips it.
    """
    if _LIBC is None or not hasattr(_LIBC, "mallopt") or os.environ.get("SEAL_ENV_MALLOC_TUNING") == "off":
        return
    _LIBC.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    _LIBC.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def release_memory() -> None:
    """Hand freed memory back to the OS (mlx's buffer cache, then glibc's heap via ``malloc_trim``).

    Called after each fine-tune so that the resident set stays flat over many rewards instead of keeping every
    fragment of the largest step's activations (costs a few page faults at the next fine-tune: well under 1%).
    """
    mx.clear_cache()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def resolve_lora_keys(model: nn.Module, modules: list[str]) -> list[str]:
    """Full module paths inside a transformer block for short names (``q_proj`` -> ``self_attn.q_proj``).

    ``["all"]`` selects every linear layer of the block.
    """
    block = model.layers[0]
    linear = [k for k, m in block.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    if modules == ["all"]:
        return linear
    keys = []
    for name in modules:
        hits = [k for k in linear if k == name or k.endswith("." + name)]
        if not hits:
            raise ValueError(f"lora_modules: {name!r} matches no linear layer of the model; choose from {linear}")
        keys += hits
    return sorted(set(keys))


# ------------------------------------------------------------------------------------------------ fast kernels
_MAGIC = 12582912.0  # 1.5 * 2**23: x + MAGIC - MAGIC rounds x to the nearest integer (|x| < 2**22)


def _fast_exp_impl(x: mx.array) -> mx.array:
    x = mx.clip(x, -87.3, 88.3)
    n = (x * 1.4426950408889634 + _MAGIC) - _MAGIC  # round(x / ln 2)
    r = (x - n * 0.693359375) + n * 2.12194440e-4  # Cody-Waite: x - n ln 2 in two parts
    p = r * 1.9875691500e-4 + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    p = p * (r * r) + r + 1.0
    two_n = mx.view((n.astype(mx.int32) + 127) << 23, mx.float32)  # 2**n from its exponent bits
    return p * two_n


_FAST_EXP: dict[str, Any] = {"fn": None, "shapes": set()}


def _fast_exp_compiled(x: mx.array) -> mx.array:
    """:func:`_fast_exp_impl` fused by ``mx.compile`` (one trace per shape: ``view`` is not shapeless; the traces
    are dropped past 32 shapes, so memory stays bounded)."""
    cache = _FAST_EXP
    if cache["fn"] is None or (x.shape not in cache["shapes"] and len(cache["shapes"]) >= 32):
        cache["fn"], cache["shapes"] = mx.compile(_fast_exp_impl), set()
    cache["shapes"].add(x.shape)
    return cache["fn"](x)


@mx.custom_function
def fast_exp(x: mx.array) -> mx.array:
    """``exp(x)`` for float32 from vectorised mlx ops (Cephes ``expf``, relative error < 1e-7; x clipped to
    [-87.3, 88.3]).

    mlx's own ``exp`` on Linux CPUs is scalar code (~10 ns per element); this is several times faster. Its
    gradient reuses the output (d exp(x) = exp(x) dx).
    """
    return _fast_exp_compiled(x)


@fast_exp.vjp
def _fast_exp_vjp(primals: Any, cotangent: mx.array, output: mx.array) -> mx.array:
    return cotangent * output


class FastMLP(llama.MLP):
    """mlx-lm's llama MLP; in training mode SwiGLU's sigmoid is computed with :func:`fast_exp`."""

    def __call__(self, x: mx.array) -> mx.array:
        if not (self.training and getattr(self, "fast", True)):
            return super().__call__(x)
        gate = self.gate_proj(x)
        return self.down_proj(gate / (1.0 + fast_exp(-gate)) * self.up_proj(x))


_CAUSAL: dict[int, tuple[mx.array, mx.array]] = {}


def _causal(n: int) -> tuple[mx.array, mx.array]:
    if n not in _CAUSAL:
        if len(_CAUSAL) > 64:
            _CAUSAL.clear()
        add = mx.triu(mx.full((n, n), -1e9, mx.float32), k=1)
        _CAUSAL[n] = (add, (add == 0).astype(mx.float32))
    return _CAUSAL[n]


class FastAttention(llama.Attention):
    """mlx-lm's llama attention; in training mode (no cache, causal) the softmax uses :func:`fast_exp`.

    Same maths as ``mx.fast.scaled_dot_product_attention`` with grouped-query heads: query head ``h`` reads
    key/value head ``h // (n_heads / n_kv_heads)``.
    """

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        if not (self.training and getattr(self, "fast", True)) or cache is not None or mask not in (None, "causal"):
            return super().__call__(x, mask, cache)
        b, n, _ = x.shape
        kv, rep = self.n_kv_heads, self.n_heads // self.n_kv_heads
        q = self.rope(self.q_proj(x).reshape(b, n, self.n_heads, -1).transpose(0, 2, 1, 3))
        k = self.rope(self.k_proj(x).reshape(b, n, kv, -1).transpose(0, 2, 1, 3))
        v = self.v_proj(x).reshape(b, n, kv, -1).transpose(0, 2, 1, 3)
        scores = ((q * self.scale).reshape(b, kv, rep * n, -1) @ k.transpose(0, 1, 3, 2)).reshape(b, kv, rep, n, n)
        if mask == "causal":
            add, keep = _causal(n)
            scores = scores + add
        e = fast_exp(scores - mx.stop_gradient(scores.max(-1, keepdims=True)))
        if mask == "causal":
            e = e * keep
        p = (e / e.sum(-1, keepdims=True)).reshape(b, kv, rep * n, n)
        out = (p @ v).reshape(b, self.n_heads, n, -1).transpose(0, 2, 1, 3).reshape(b, n, -1)
        return self.o_proj(out)


def use_fast_kernels(model: nn.Module, on: bool = True) -> int:
    """Switch the llama blocks of ``model`` to :class:`FastMLP` / :class:`FastAttention` (parameters untouched).

    Only exact mlx-lm llama modules are switched (other architectures keep their code); returns how many were.
    The fast code runs in training mode only; ``on=False`` makes the switched modules run the stock code.
    """
    count = 0
    for layer in getattr(getattr(model, "model", None), "layers", None) or []:
        for name, plain, fast in (("mlp", llama.MLP, FastMLP), ("self_attn", llama.Attention, FastAttention)):
            module = getattr(layer, name, None)
            if type(module) in (plain, fast):
                module.__class__ = fast
                module.fast = on
                count += 1
    return count


def _split_head(model: nn.Module) -> tuple[Any, Any] | None:
    """``(backbone, head)`` for mlx-lm models built like llama (``model.model`` + tied embedding or ``lm_head``)."""
    backbone, args = getattr(model, "model", None), getattr(model, "args", None)
    if backbone is None or args is None or not hasattr(backbone, "embed_tokens"):
        return None
    if getattr(args, "tie_word_embeddings", False):
        return backbone, backbone.embed_tokens.as_linear
    head = getattr(model, "lm_head", None)
    return (backbone, head) if head is not None else None


def _cross_entropy(logits: mx.array, targets: mx.array, fast: bool) -> mx.array:
    """Per-row cross-entropy of fp32 ``logits`` (rows, vocab)."""
    if not fast:
        return nn.losses.cross_entropy(logits, targets)
    top = mx.stop_gradient(logits.max(-1, keepdims=True))
    lse = mx.log(fast_exp(logits - top).sum(-1)) + top[:, 0]
    return lse - mx.take_along_axis(logits, targets[:, None], -1)[:, 0]


def _position_logits(model: nn.Module, inputs: mx.array, positions: mx.array) -> mx.array:
    """fp32 logits (len(positions), vocab) at flat ``positions`` of ``inputs`` (batch * length), computing the
    output projection only there when the model's structure allows it."""
    split = _split_head(model)
    if split is None:
        logits = model(inputs)
        return logits.reshape(-1, logits.shape[-1])[positions].astype(mx.float32)
    backbone, head = split
    hidden = backbone(inputs)
    return head(hidden.reshape(-1, hidden.shape[-1])[positions]).astype(mx.float32)


def make_loss(head_on_positions: bool = True, fast: bool = True):
    """The training loss ``f(model, inputs, targets, positions, weights) -> (mean loss, loss tokens)``.

    Mean next-token cross-entropy over flat loss ``positions`` (of batch * length) with 0/1 ``weights``.
    ``head_on_positions`` applies the output projection only at those positions; ``fast`` computes the
    log-sum-exp with :func:`fast_exp`. Both off = the plain path (full logits, ``nn.losses.cross_entropy``).
    """

    def loss(model: nn.Module, inputs: mx.array, targets: mx.array, positions: mx.array,
             weights: mx.array) -> tuple[mx.array, mx.array]:
        if head_on_positions:
            logits = _position_logits(model, inputs, positions)
        else:
            logits = model(inputs)
            logits = logits.reshape(-1, logits.shape[-1])[positions].astype(mx.float32)
        ce = _cross_entropy(logits, targets.reshape(-1)[positions], fast) * weights
        ntoks = weights.sum()
        return ce.sum() / mx.maximum(ntoks, 1), ntoks

    return loss


def loss_positions(mask: mx.array, only_loss: bool = True) -> tuple[mx.array, mx.array]:
    """Flat positions and weights for :func:`make_loss`: where ``mask`` is set, or all positions with mask weights."""
    flat = np.asarray(mask).reshape(-1)
    if only_loss:
        idx = np.nonzero(flat > 0)[0].astype(np.int32)
        return mx.array(idx), mx.array(flat[idx])
    return mx.arange(flat.size, dtype=mx.int32), mx.array(flat)


def make_batch(rows: list[tuple[list[int], int]]) -> tuple[mx.array, mx.array, mx.array]:
    """Right-padded ``inputs``, ``targets`` and loss ``mask`` for next-token prediction."""
    width = max(len(ids) for ids, _ in rows) - 1
    inputs = np.zeros((len(rows), width), np.int32)
    targets = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.float32)
    for i, (ids, start) in enumerate(rows):
        n = len(ids) - 1
        inputs[i, :n], targets[i, :n] = ids[:-1], ids[1:]
        mask[i, max(start - 1, 0) : n] = 1.0  # target j predicts token j + 1
    return mx.array(inputs), mx.array(targets), mx.array(mask)


class Learner:
    """A model with LoRA adapters that can be reset, fine-tuned and quizzed, many times over."""

    #: Distinct batch shapes whose compiled traces are kept; past this the compiled function is rebuilt (memory).
    MAX_TRACES = 16

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: SealConfig, *, fast_kernels: bool = True,
                 head_on_positions: bool = True, compile: bool = True):
        """``fast_kernels``, ``head_on_positions`` and ``compile`` are the speed levers (all on by default; off =
        the plain mlx-lm path, kept for tests and benchmarks: results agree to float rounding)."""
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        model.freeze()
        keys = resolve_lora_keys(model, cfg.lora_modules)
        n_layers = len(model.layers) if cfg.lora_layers == -1 else min(cfg.lora_layers, len(model.layers))
        lora = {"rank": cfg.lora_rank, "scale": cfg.lora_alpha / cfg.lora_rank, "dropout": cfg.lora_dropout,
                "keys": keys}
        linear_to_lora_layers(model, n_layers, lora)
        self.adapters = [m for _, m in model.named_modules() if isinstance(m, LoRALinear)]
        self.n_trainable = sum(m.lora_a.size + m.lora_b.size for m in self.adapters)
        self.set_levers(fast_kernels=fast_kernels, head_on_positions=head_on_positions, compile=compile)
        #: ``(model, inputs, targets, positions, weights) -> ((loss, loss tokens), grads)``; one training step's
        #: forward and backward (a seam for tests, e.g. to inject a non-finite loss).
        self._loss_and_grad = self._step_loss_and_grad
        keep_freed_memory()
        self.reset(0)

    def set_levers(self, *, fast_kernels: bool, head_on_positions: bool, compile: bool) -> None:
        """Switch the speed levers (see :meth:`__init__`); results stay equal up to float rounding."""
        self.fast_kernels, self.head_on_positions, self.compile = fast_kernels, head_on_positions, compile
        use_fast_kernels(self.model, fast_kernels)
        self._value_and_grad = nn.value_and_grad(self.model, make_loss(head_on_positions, fast_kernels))
        self._compiled = None
        self._shapes: set[tuple[int, ...]] = set()

    def _step_loss_and_grad(self, model: nn.Module, *batch: mx.array) -> tuple[tuple[mx.array, mx.array], Any]:
        if not self.compile:
            return self._value_and_grad(model, *batch)
        shape = tuple(x.shape[0] for x in batch[2:]) + batch[0].shape
        if self._compiled is None or (shape not in self._shapes and len(self._shapes) >= self.MAX_TRACES):
            state = [model.state, mx.random.state]
            self._compiled = mx.compile(lambda *b: self._value_and_grad(model, *b), inputs=state, outputs=state)
            self._shapes.clear()
        self._shapes.add(shape)
        return self._compiled(*batch)

    def reset(self, seed: int) -> None:
        """Fresh adapter weights (PEFT/mlx-lm init: A uniform(+-1/sqrt(in)), B = 0) drawn from ``seed``."""
        keys = mx.random.split(mx.random.key(seed), len(self.adapters))
        for m, key in zip(self.adapters, keys):
            bound = 1.0 / math.sqrt(m.lora_a.shape[0])
            m.lora_a = mx.random.uniform(-bound, bound, m.lora_a.shape, key=key)
            m.lora_b = mx.zeros(m.lora_b.shape)
        mx.eval([(m.lora_a, m.lora_b) for m in self.adapters])

    def _optimizer(self, total_steps: int) -> optim.Optimizer:
        cfg = self.cfg
        if cfg.lr_schedule == "linear":
            decay = optim.linear_schedule(cfg.learning_rate, 0.0, max(total_steps - cfg.warmup_steps, 1))
        else:
            decay = lambda step: cfg.learning_rate  # noqa: E731
        lr = decay
        if cfg.warmup_steps:
            warm = optim.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
            lr = optim.join_schedules([warm, decay], [cfg.warmup_steps])
        if cfg.optimizer == "adamw":
            return optim.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return optim.Adam(learning_rate=lr)
        return optim.SGD(learning_rate=lr, weight_decay=cfg.weight_decay)

    def train(self, data: list[tuple[list[int], int]], seed: int,
              on_step: Callable[[float], None] | None = None) -> dict[str, Any]:
        """Fine-tune the adapters on ``data`` (token ids, loss start) for ``cfg.epochs``; returns a train report.

        ``on_step(loss)`` is called after every optimiser step (e.g. for a progress bar). Stops early, with ``diverged=True``, if a loss is not finite or exceeds ``cfg.max_loss``, or if the
        adapter weights end up non-finite.
        """
        cfg, model = self.cfg, self.model
        per_epoch = math.ceil(len(data) / cfg.batch_size) if data else 0
        opt = self._optimizer(per_epoch * cfg.epochs)
        rng = np.random.default_rng(seed)
        mx.random.seed(seed)  # LoRA dropout
        losses: list[float] = []
        diverged, tokens, t0 = False, 0, time.perf_counter()
        apply = self._update_fn(opt)
        model.train()
        try:
            for _ in range(cfg.epochs if data else 0):
                order = rng.permutation(len(data))
                for i in range(0, len(data), cfg.batch_size):
                    inputs, targets, mask = make_batch([data[j] for j in order[i : i + cfg.batch_size]])
                    positions, weights = loss_positions(mask, self.head_on_positions)
                    (loss, ntoks), grads = self._loss_and_grad(model, inputs, targets, positions, weights)
                    value = loss.item()
                    if not math.isfinite(value) or value > cfg.max_loss:
                        diverged = True
                        break
                    apply(grads)
                    mx.eval(model.trainable_parameters(), opt.state)
                    losses.append(value)
                    tokens += int(ntoks.item())
                    if on_step is not None:
                        on_step(value)
                if diverged:
                    break
            if not diverged and losses:
                diverged = not all(bool(mx.isfinite(p).all()) for m in self.adapters for p in (m.lora_a, m.lora_b))
        finally:
            model.eval()
            release_memory()
        return {"train_losses": losses, "train_steps": len(losses), "trained_tokens": tokens,
                "diverged": diverged, "train_seconds": time.perf_counter() - t0}

    def _update_fn(self, opt: optim.Optimizer) -> Any:
        """``apply(grads)``: one optimizer update of the adapters, compiled when ``self.compile`` (one trace per
        :meth:`train`: the learning-rate schedule's constants are baked into it)."""
        model = self.model

        def apply(grads: Any) -> None:
            opt.update(model, grads)

        if not self.compile:
            return apply
        opt.init(model.trainable_parameters())
        state = [model.state, opt.state]
        return mx.compile(apply, inputs=state, outputs=state)

    def _encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=not uses_chat(self.tokenizer))

    def answers(self, prompts: list[str], max_tokens: int) -> list[str]:
        """Greedy answers to the prompts, generated as one batch."""
        if not prompts:
            return []
        ids = [self._encode_prompt(p) for p in prompts]
        texts = batch_generate(self.model, self.tokenizer, ids, max_tokens=max_tokens, verbose=False).texts
        return [t.split("\nQuestion:")[0].strip() for t in texts]

    def answer_logliks(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Mean log-probability per token of each gold ``answer`` after its ``prompt`` (one batched forward)."""
        if not prompts:
            return []
        rows = []
        for p, a in zip(prompts, answers):
            head = self._encode_prompt(p)
            rows.append((head + self.tokenizer.encode(a.strip(), add_special_tokens=False), len(head)))
        inputs, targets, mask = make_batch(rows)
        if self.head_on_positions:  # the output projection only where the answers are
            positions, _ = loss_positions(mask)
            logits = _position_logits(self.model, inputs, positions)
            picked = -_cross_entropy(logits, targets.reshape(-1)[positions], fast=False)
            rows_of = np.asarray(positions) // inputs.shape[1]
            sums = np.bincount(rows_of, weights=np.asarray(picked, dtype=np.float64), minlength=len(rows))
            counts = np.maximum(np.asarray(mask).sum(axis=1), 1)
            return [float(x) for x in (sums / counts)]
        logprobs = nn.log_softmax(self.model(inputs).astype(mx.float32), axis=-1)
        picked = mx.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0] * mask
        per_row = picked.sum(axis=1) / mx.maximum(mask.sum(axis=1), 1)
        return [float(x) for x in per_row.tolist()]

    def set_base_weights(self, weights: dict[str, mx.array]) -> None:
        """Replace frozen base weights (plain mlx-lm names, e.g. from a fused policy) under the LoRA wrappers.

        Lets the inner-loop learner be an updated policy (SEAL's "the model adapts itself"). Names that the LoRA
        wrapping moved (``...q_proj.weight`` -> ``...q_proj.linear.weight``) are mapped; unknown names raise.
        """
        current = dict(tree_flatten(self.model.parameters()))
        mapped = []
        for name, value in weights.items():
            head, _, leaf = name.rpartition(".")
            target = name if name in current else f"{head}.linear.{leaf}"
            if target not in current or "lora_" in target:
                raise KeyError(f"{name!r} is not a base weight of this model")
            if current[target].shape != value.shape:
                raise ValueError(f"{name!r}: shape {value.shape} != {current[target].shape}")
            mapped.append((target, value.astype(current[target].dtype)))
        self.model.update(tree_unflatten(mapped))
        mx.eval(self.model.parameters())
        self._fingerprint = None

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the base weights (names, shapes, dtypes, bytes) and the vocabulary: the model's identity
        for the reward cache. Computed once (~0.6 s for SmolLM2-135M) and again after :meth:`set_base_weights`."""
        if getattr(self, "_fingerprint", None) is None:
            import hashlib

            h = hashlib.sha256()
            for name, value in sorted(tree_flatten(self.model.parameters())):
                if "lora_" in name:
                    continue
                array = np.ascontiguousarray(np.array(value, copy=False))
                h.update(f"{name}:{array.dtype}:{array.shape};".encode())
                h.update(memoryview(array).cast("B"))
            vocab = getattr(self.tokenizer, "vocab", None) or {}
            h.update(json.dumps(sorted(vocab.items()) if isinstance(vocab, dict) else [], ensure_ascii=True).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint
