"""Tests for seal_env.models: specs, cache folder, tiny-random, tokenizer, and (slow) the SmolLM2 GGUF conversion."""

from __future__ import annotations

import json
from pathlib import Path

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env import env_vars, models
from seal_env.models import build, gguf
from seal_env.models import tiny as tiny_model

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import pytest
from mlx.utils import tree_flatten  # noqa: E402

HELLO_WORLD_IDS = [19556, 905]  # "Hello", "Ġworld" in SmolLM2's vocabulary
TEXTS = [
    "Hello world",
    " leading space and trailing ",
    "naïve café — 東京 🚀 ∑ x² Ünïcödé",
    "line1\n\nline2\t tab",
    "Pi is 3.14159 and a million is 1,000,000.",
    "don't I'll we've",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-random folder in a private cache (created once for this module)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEAL_ENV_CACHE", str(cache))
        return tiny_model.tiny_random_path()


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    return models.load_model(str(tiny_dir))


def test_cache_dir_honors_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.setenv("SEAL_ENV_CACHE", str(tmp_path / "c"))
    assert env_vars.cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()
    monkeypatch.delenv("SEAL_ENV_CACHE")
    assert env_vars.cache_dir() == Path(platformdirs.user_cache_dir("seal-env"))


def test_tiny_random_loads_by_spec(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEAL_ENV_CACHE", str(tiny_dir.parent))
    assert models.resolve_model_path("tiny-random") == tiny_dir

    def identity():  # a rebuild replaces the folder (a new inode) and writes its files anew
        return tiny_dir.stat().st_ino, (tiny_dir / "model.safetensors").stat().st_mtime_ns

    built = identity()
    model, tokenizer = models.load_model("tiny-random")
    assert identity() == built  # a current folder is loaded as it is, not rebuilt
    assert len(model.layers) == 2
    params = tree_flatten(model.parameters())
    assert params and all(v.dtype == mx.float32 for _, v in params)
    assert json.loads((tiny_dir / build.MARKER).read_text())["recipe"] == build.RECIPE
    assert tokenizer.vocab_size == 49152


def test_tiny_random_is_deterministic(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEAL_ENV_CACHE", str(tmp_path))
    again = tiny_model.tiny_random_path()
    other = tiny_model.tiny_random_path(seed=1)
    assert again != other
    a, b, c = (mx.load(str(p / "model.safetensors")) for p in (tiny_dir, again, other))
    assert a.keys() == b.keys() == c.keys()
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    assert not mx.array_equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"]).item()


def test_tiny_generates_deterministically(tiny) -> None:
    from mlx_lm import generate

    model, tokenizer = tiny
    outs = [generate(model, tokenizer, "The capital of France is", max_tokens=4) for _ in range(2)]
    assert outs[0] == outs[1] and outs[0]


def test_tokenizer_round_trips(tiny) -> None:
    _, tokenizer = tiny
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("Hello world") == HELLO_WORLD_IDS
    assert len(tokenizer.encode("12345")) == 5  # digits are split one by one, as in SmolLM2
    assert tokenizer.encode("<|im_start|>user<|im_end|>")[0] == 1  # special tokens stay whole
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.bos_token_id == 1 and tokenizer.pad_token_id == 2


def test_tokenizer_chat_template(tiny) -> None:
    _, tokenizer = tiny
    assert tokenizer.has_chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_perplexity_of_random_model(tiny) -> None:
    model, tokenizer = tiny
    ppl = build.perplexity(model, tokenizer, "The quick brown fox jumps over the lazy dog.")
    assert 1000 < ppl < 200_000  # near-uniform over a 49k vocabulary
    with pytest.raises(ValueError):
        build.perplexity(model, tokenizer, "a")


def test_quantize(tiny_dir: Path) -> None:
    model, tokenizer = models.load_model(str(tiny_dir), quantize=4)
    assert any(isinstance(m, nn.QuantizedLinear) for m in model.modules())
    logits = model(mx.array(tokenizer.encode("Hello world"))[None])
    assert logits.shape == (1, 2, 49152)
    with pytest.raises(ValueError):
        models.load_model(str(tiny_dir), quantize=3)


def test_half_precision_folder_is_cast_to_fp32(tiny_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "half"
    shutil.copytree(tiny_dir, folder)
    weights = {k: v.astype(mx.bfloat16) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    model, _ = models.load_model(str(folder))
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(model.parameters()))


def test_unknown_spec_raises_value_error() -> None:
    for spec in ("no-such-model", "/no/such/folder", "a/b/c"):
        with pytest.raises(ValueError, match="tiny-random"):
            models.resolve_model_path(spec)


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config.json"):
        models.load_model(str(tmp_path))


def test_offline_hf_repo_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="offline") as info:
        models.resolve_model_path("seal-env-tests/does-not-exist")
    assert "smollm2-135m" in str(info.value) and "tiny-random" in str(info.value)


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEAL_ENV_CACHE", str(tmp_path))

    def failing_build(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build.build_once("broken", failing_build)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_smollm2_converts_and_reads_english() -> None:
    """Uses the real cache (converts once, ~5 s and 540 MB; later runs reuse it)."""
    from mlx_lm import generate

    folder = gguf.smollm2_path()
    assert json.loads((folder / build.MARKER).read_text())["recipe"] == build.RECIPE
    model, tokenizer = models.load_model("smollm2-135m")
    assert len(model.layers) == 30
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(model.parameters()))
    ppl = build.perplexity(model, tokenizer, gguf.CHECK_TEXT)
    assert 10 < ppl < 25, ppl  # ~18.7; llama.cpp's q/k rope permutation left in place gives ~76
    assert tokenizer.encode("Hello world") == HELLO_WORLD_IDS
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    assert "Paris" in generate(model, tokenizer, prompt, max_tokens=12)
