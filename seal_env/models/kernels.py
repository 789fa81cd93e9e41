"""Speed kernels on CPU: a vectorised ``exp``, llama blocks that use it in training, a decoding step with fewer ops,
and losses that apply the output projection only where they are needed.

mlx evaluates ``exp``/``sigmoid`` one scalar at a time on Linux CPUs; :func:`fast_exp` computes it from vectorised
mlx ops (Cephes' ``expf`` polynomial). In training mode :class:`FastMLP` (SwiGLU), :class:`FastAttention` (the
softmax) and :func:`cross_entropy` use it. :func:`position_logits` applies the output projection (for SmolLM2 the
49152-row tied embedding) only at the given positions.

Decoding (one new token per row, with a batch KV cache) keeps mlx-lm's maths: :func:`use_fast_decoding` makes the
llama attention apply the rotary embedding to queries and keys in one compiled call (``mx.compile`` of the same
``mx.fast.rope``: bit-identical results; a SmolLM2 step has 22% fewer graph nodes).
"""

from __future__ import annotations

from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama

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

    mlx's own ``exp`` on Linux CPUs is scalar code; this one is vectorised (speed in ``benchmarks/RESULTS.md``).
    Its gradient reuses the output (d exp(x) = exp(x) dx).
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
        return self.down_proj(gate / (1.0 + cast(mx.array, fast_exp(-gate))) * self.up_proj(x))


_CAUSAL: dict[int, tuple[mx.array, mx.array]] = {}


def _causal(n: int) -> tuple[mx.array, mx.array]:
    if n not in _CAUSAL:
        if len(_CAUSAL) > 64:
            _CAUSAL.clear()
        add = mx.triu(mx.full((n, n), -1e9, mx.float32), k=1)
        _CAUSAL[n] = (add, (add == 0).astype(mx.float32))
    return _CAUSAL[n]


_ROPE_PAIRS: dict[tuple[int, bool, float, float], Any] = {}


def _rope_pair(rope: nn.RoPE) -> Any:
    """``(q, k, offset) -> (rope(q), rope(k))`` compiled once per rotary setting (one set of angles for both)."""
    key = (rope.dims, rope.traditional, rope.base, rope.scale)
    if key not in _ROPE_PAIRS:
        dims, traditional, base, scale = key

        def pair(q: mx.array, k: mx.array, offset: mx.array) -> tuple[mx.array, mx.array]:
            def one(x: mx.array) -> mx.array:
                return mx.fast.rope(x, dims, traditional=traditional, base=base, scale=scale, offset=offset)

            return one(q), one(k)

        _ROPE_PAIRS[key] = mx.compile(pair)
    return _ROPE_PAIRS[key]


class FastAttention(llama.Attention):
    """mlx-lm's llama attention; in training mode (no cache, causal) the softmax uses :func:`fast_exp`; with
    ``fast_decode`` set, a decoding step (one position, a cache with per-row offsets such as mlx-lm's
    ``BatchKVCache``) applies the rotary embedding with :func:`_rope_pair` (same result, fewer graph nodes).

    Same maths as ``mx.fast.scaled_dot_product_attention`` with grouped-query heads: query head ``h`` reads
    key/value head ``h // (n_heads / n_kv_heads)``.
    """

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        if (
            getattr(self, "fast_decode", False)
            and cache is not None
            and x.shape[1] == 1
            and isinstance(getattr(cache, "offset", None), mx.array)
            and not hasattr(cache, "bits")  # a quantized cache has its own attention in mlx-lm
            and type(self.rope) is nn.RoPE
        ):
            return self._decode_step(x, mask, cache)
        if not (self.training and getattr(self, "fast", True)) or cache is not None or mask not in (None, "causal"):
            return super().__call__(x, mask, cache)
        b, n, _ = x.shape
        kv = self.n_kv_heads
        assert kv is not None  # llama.ModelArgs.__post_init__ defaults it to num_attention_heads
        rep = self.n_heads // kv
        q = self.rope(self.q_proj(x).reshape(b, n, self.n_heads, -1).transpose(0, 2, 1, 3))
        k = self.rope(self.k_proj(x).reshape(b, n, kv, -1).transpose(0, 2, 1, 3))
        v = self.v_proj(x).reshape(b, n, kv, -1).transpose(0, 2, 1, 3)
        scores = ((q * self.scale).reshape(b, kv, rep * n, -1) @ k.transpose(0, 1, 3, 2)).reshape(b, kv, rep, n, n)
        if mask == "causal":
            add, keep = _causal(n)
            scores = scores + add
        e = cast(mx.array, fast_exp(scores - mx.stop_gradient(scores.max(-1, keepdims=True))))
        if mask == "causal":
            e = e * keep
        p = (e / e.sum(-1, keepdims=True)).reshape(b, kv, rep * n, n)
        out = (p @ v).reshape(b, self.n_heads, n, -1).transpose(0, 2, 1, 3).reshape(b, n, -1)
        return self.o_proj(out)

    def _decode_step(self, x: mx.array, mask: Any, cache: Any) -> mx.array:
        """mlx-lm's ``Attention.__call__`` with a cache, the two rotary embeddings in one compiled call."""
        b, n, _ = x.shape
        q = self.q_proj(x).reshape(b, n, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, n, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = _rope_pair(self.rope)(q, k, cache.offset)
        k, v = cache.update_and_fetch(k, v)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


def use_fast_decoding(model: nn.Module, on: bool = True) -> int:
    """Switch the llama attention blocks of ``model`` to :class:`FastAttention` with its decoding path on
    (``on=False``: off); returns how many were switched.

    Only exact mlx-lm llama attention modules are switched; a module switched here keeps the stock training code
    unless :func:`use_fast_kernels` turns that on.
    """
    count = 0
    for layer in getattr(getattr(model, "model", None), "layers", None) or []:
        attn = getattr(layer, "self_attn", None)
        if attn is not None and type(attn) in (llama.Attention, FastAttention):
            if type(attn) is llama.Attention:
                attn.__class__, attn.fast = FastAttention, False
            attn.fast_decode = on
            count += 1
    return count


def use_fast_kernels(model: nn.Module, on: bool = True) -> int:
    """Switch the llama blocks of ``model`` to :class:`FastMLP` / :class:`FastAttention` (parameters untouched).

    Only exact mlx-lm llama modules are switched (other architectures keep their code); returns how many were.
    The fast code runs in training mode only; ``on=False`` makes the switched modules run the stock code.
    """
    count = 0
    for layer in getattr(getattr(model, "model", None), "layers", None) or []:
        for name, plain, fast in (("mlp", llama.MLP, FastMLP), ("self_attn", llama.Attention, FastAttention)):
            module = getattr(layer, name, None)
            if module is not None and type(module) in (plain, fast):
                module.__class__ = fast
                module.fast = on
                count += 1
    return count


def split_head(model: nn.Module) -> tuple[Any, Any] | None:
    """``(backbone, head)`` for mlx-lm models built like llama (``model.model`` + tied embedding or ``lm_head``)."""
    backbone, args = getattr(model, "model", None), getattr(model, "args", None)
    if backbone is None or args is None or not hasattr(backbone, "embed_tokens"):
        return None
    if getattr(args, "tie_word_embeddings", False):
        return backbone, backbone.embed_tokens.as_linear
    head = getattr(model, "lm_head", None)
    return (backbone, head) if head is not None else None


def cross_entropy(logits: mx.array, targets: mx.array, fast: bool) -> mx.array:
    """Per-row cross-entropy of fp32 ``logits`` (rows, vocab)."""
    if not fast:
        return nn.losses.cross_entropy(logits, targets)
    top = mx.stop_gradient(logits.max(-1, keepdims=True))
    lse = mx.log(cast(mx.array, fast_exp(logits - top)).sum(-1)) + top[:, 0]
    return lse - mx.take_along_axis(logits, targets[:, None], -1)[:, 0]


def position_logits(model: nn.Module, inputs: mx.array, positions: mx.array) -> mx.array:
    """fp32 logits (len(positions), vocab) at flat ``positions`` of ``inputs`` (batch * length), computing the
    output projection only there when the model's structure allows it."""
    split = split_head(model)
    if split is None:
        logits = model(inputs)
        return logits.reshape(-1, logits.shape[-1])[positions].astype(mx.float32)
    backbone, head = split
    hidden = backbone(inputs)
    return head(hidden.reshape(-1, hidden.shape[-1])[positions]).astype(mx.float32)
