"""The decoding fast path: compiled rotary embeddings (seal_env.models.kernels.use_fast_decoding) and one-row products
through cblas_sgemv (seal_env._blas): same answers and samples as the stock path."""

import ctypes
import os
import subprocess
import sys

from seal_env import _blas
from seal_env.learner.decode import greedy_generate, prefill
from seal_env.models import load_model
from seal_env.models.kernels import FastAttention, _rope_pair, use_fast_decoding, use_fast_kernels

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.generate import BatchGenerator
from mlx_lm.models import llama

from agents.policies import seeded_sampler

GEMV = pytest.mark.skipif(_blas.gemv_library is None, reason="no one-row sgemm here (not Linux, no OpenBLAS or no cc)")
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [4, 4, 4, 4], [11]]  # left padding differs per row


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def gemv_on(on: bool) -> None:
    if _blas.gemv_library is not None:
        ctypes.c_int.in_dll(_blas.gemv_library, "seal_gemv_on").value = int(on)


def gemv_calls() -> int:
    assert _blas.gemv_library is not None
    return ctypes.c_long.in_dll(_blas.gemv_library, "seal_gemv_calls").value


@pytest.fixture
def stock_then_fast(tiny):
    """``run(fn, gemv=True)``: ``fn(model)`` on the stock path, then on the fast one (with or without the one-row
    sgemv); both results."""
    model, _ = tiny

    def run(fn, gemv=True):
        try:
            use_fast_decoding(model, False)
            gemv_on(False)
            stock = fn(model)
            use_fast_decoding(model, True)
            gemv_on(gemv)
            return stock, fn(model)
        finally:
            use_fast_decoding(model, True)
            gemv_on(True)

    return run


def test_compiled_rope_pair_is_bit_identical_to_mx_fast_rope():
    rope = nn.RoPE(16, base=10000.0)
    for batch in (1, 3, 16):
        q = mx.random.normal((batch, 6, 1, 16), key=mx.random.key(batch)) * 3
        k = mx.random.normal((batch, 2, 1, 16), key=mx.random.key(batch + 100)) * 3
        offset = mx.random.randint(0, 3000, (batch,), key=mx.random.key(batch + 200))
        fast_q, fast_k = _rope_pair(rope)(q, k, offset)
        assert mx.array_equal(fast_q, rope(q, offset=offset)) and mx.array_equal(fast_k, rope(k, offset=offset))


def test_load_model_switches_the_llama_modules_and_keeps_the_training_code(tiny):
    model, _ = tiny
    layers = model.model.layers
    assert all(type(layer.self_attn) is FastAttention and layer.self_attn.fast_decode for layer in layers)
    assert not any(layer.self_attn.fast for layer in layers)  # training stays mlx-lm's until the learner asks

    fresh = llama.Model(model.args)
    assert use_fast_decoding(fresh) == len(fresh.model.layers)
    use_fast_kernels(fresh, True)
    assert all(layer.self_attn.fast and layer.self_attn.fast_decode for layer in fresh.model.layers)
    assert use_fast_decoding(fresh, False) == len(fresh.model.layers)
    assert not any(layer.self_attn.fast_decode for layer in fresh.model.layers)
    assert use_fast_decoding(nn.Linear(2, 2)) == 0  # not a llama: nothing to switch


def test_decoding_steps_give_the_same_logits(stock_then_fast):
    def logits(model):
        cache, last = prefill(model, PROMPTS, 8)
        steps = [last]
        for _ in range(4):
            steps.append(model(mx.argmax(steps[-1], axis=-1)[:, None], cache=cache)[:, -1, :])
        mx.eval(steps)
        return [np.array(s) for s in steps]

    stock, fast = stock_then_fast(logits, gemv=False)  # the compiled rotary embedding alone: the same bits
    assert all(np.array_equal(a, b) for a, b in zip(stock, fast, strict=True))
    # sgemv sums in another order than sgemm: here the attention's one-row products (the tiny model has as many
    # key/value heads as query heads) differ in the last bits
    stock, fast = stock_then_fast(logits)
    assert all(np.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(stock, fast, strict=True))


def test_greedy_answers_and_sampled_self_edits_are_unchanged(stock_then_fast):
    def greedy(model):
        return [greedy_generate(model, PROMPTS, 12, ()), greedy_generate(model, PROMPTS[:1], 12, ())]

    def sampled(model):
        gen = BatchGenerator(model, stop_tokens=[], completion_batch_size=4, prefill_batch_size=4)
        try:
            uids = gen.insert(PROMPTS, [10, 3, 7, 10], samplers=[seeded_sampler(s, 1.0, 1.0) for s in range(4)])
            out: dict[int, list[int]] = {u: [] for u in uids}
            while responses := gen.next_generated():
                for r in responses:
                    out[r.uid].append(r.token)
            return [out[u] for u in uids]
        finally:
            gen.close()

    stock, fast = stock_then_fast(greedy)
    assert stock == fast and len(fast[0][0]) == 12
    stock, fast = stock_then_fast(sampled)
    assert stock == fast and [len(t) for t in fast] == [10, 3, 7, 10]  # rows finish one by one: batch 4 down to 1


@GEMV
def test_one_row_products_go_to_sgemv_and_agree_with_numpy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 40), dtype=np.float32)
    w = rng.standard_normal((40, 70), dtype=np.float32)
    c = rng.standard_normal((1, 70), dtype=np.float32)
    cases = {
        "a @ w": (lambda: mx.array(a[:1]) @ mx.array(w), a[:1] @ w),
        "a @ w.T": (lambda: mx.array(a[:1]) @ mx.array(w.T.copy()).T, a[:1] @ w),
        "a.T @ w": (lambda: mx.array(a[:1].T.copy()).T @ mx.array(w), a[:1] @ w),
        "strided rows": (lambda: mx.array(a)[1:2, ::2] @ mx.array(w)[::2, 5:60], a[1:2, ::2] @ w[::2, 5:60]),
        "addmm": (lambda: mx.addmm(mx.array(c), mx.array(a[:1]), mx.array(w), 0.5, 2.0), 0.5 * (a[:1] @ w) + 2.0 * c),
    }
    for name, (product, expected) in cases.items():
        before = gemv_calls()
        got = product()
        mx.eval(got)
        assert gemv_calls() == before + 1, name
        assert np.allclose(np.array(got), expected, rtol=1e-5, atol=1e-4), name
    before = gemv_calls()
    mx.eval(mx.array(a) @ mx.array(w))  # three rows: OpenBLAS's sgemm
    assert gemv_calls() == before


def import_blas(**env: str) -> str:
    """``import seal_env`` in a new process: what its BLAS fast path loaded (library, symbol prefix, one-row sgemm)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("SEAL_ENV_GEMV", "CC")}
    code = (
        "import seal_env\nfrom seal_env import _blas\n"
        "print(_blas.loaded_path, repr(_blas.symbol_prefix), _blas.gemv_library is not None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stderr == ""  # no warning either way
    return out.stdout.strip()


@GEMV
def test_the_one_row_sgemm_can_be_switched_off_and_is_skipped_without_a_compiler(tmp_path):
    assert import_blas() == f"{_blas.loaded_path} {_blas.symbol_prefix!r} True"
    # without it mlx calls a plain OpenBLAS directly: scipy-openblas32's prefixed symbols are reached only through it
    path, prefix, loaded = import_blas(SEAL_ENV_GEMV="off").split()
    assert (prefix, loaded) == ("''", "False") and "scipy" not in path
    # a fresh cache folder, so nothing built earlier is found, and no compiler
    assert import_blas(CC=str(tmp_path / "no-cc"), SEAL_ENV_CACHE=str(tmp_path)) == f"{path} '' False"


@pytest.mark.slow
def test_smollm2_answers_are_unchanged_by_the_fast_path_at_batch_1_and_5():
    from seal_env.articles import load_articles

    model, tokenizer = load_model("smollm2-135m")
    article = load_articles("bundled")[0]
    prompts = [tokenizer.encode(f"{article.title}\n{q.question}\nAnswer:") for q in article.questions[:5]]

    def answers() -> list[list[int]]:
        return [*(greedy_generate(model, [p], 16, ())[0] for p in prompts), *greedy_generate(model, prompts, 16, ())]

    use_fast_decoding(model, False)
    gemv_on(False)
    try:
        stock = answers()
    finally:
        use_fast_decoding(model, True)
        gemv_on(True)
    before = gemv_calls() if _blas.gemv_library is not None else 0
    assert answers() == stock
    if _blas.gemv_library is not None:
        assert gemv_calls() > before  # the batch-1 answers did go through sgemv
