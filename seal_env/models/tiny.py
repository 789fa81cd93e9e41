"""The tiny random models: 2-layer, 64-wide transformers with deterministic random weights and the real SmolLM2
tokenizer, for tests and smoke runs (built once in the cache): a llama (``"tiny-random"``) and a Qwen2, whose
q/k/v projections carry biases (``"tiny-random-qwen2"``)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, cast

from seal_env.models.build import build_once
from seal_env.models.gguf import SMOLLM2_CONFIG, read_gguf, write_config, write_tokenizer

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
#: The same shapes as a Qwen2 (mlx-lm's ``qwen2``: biased q/k/v projections, head size = hidden / heads).
TINY_QWEN2_CONFIG: dict[str, Any] = {
    **{k: v for k, v in TINY_CONFIG.items() if k not in ("head_dim", "attention_bias", "mlp_bias")},
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
}
#: Architecture name -> the config of its tiny random model.
TINY_CONFIGS: dict[str, dict[str, Any]] = {"llama": TINY_CONFIG, "qwen2": TINY_QWEN2_CONFIG}


def tiny_random_path(seed: int = 0, arch: str = "llama") -> Path:
    """``cache_dir()/tiny-random`` (``arch="qwen2"``: ``tiny-random-qwen2``; another ``seed`` adds ``-{seed}``): a
    2-layer 64-wide model of architecture ``arch`` (a key of :data:`TINY_CONFIGS`) with deterministic random fp32
    weights (numpy ``seed``: norms 1, every other weight and bias normal with sd 0.02) and the real SmolLM2
    tokenizer (built from the GGUF metadata; no weights are dequantized)."""
    if arch not in TINY_CONFIGS:
        raise ValueError(f"arch must be one of {sorted(TINY_CONFIGS)}, got {arch!r}")
    config = TINY_CONFIGS[arch]

    def build(folder: Path) -> dict:
        import mlx.core as mx
        import numpy as np
        from mlx.utils import tree_flatten

        module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
        _, metadata = read_gguf()
        write_tokenizer(folder, metadata)
        write_config(folder, config)
        model = module.Model(module.ModelArgs.from_dict(config))
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
        return {"seed": seed, "arch": arch}

    name = "tiny-random" if arch == "llama" else f"tiny-random-{arch}"
    return build_once(name if seed == 0 else f"{name}-{seed}", build)
