"""The tiny random model: a 2-layer, 64-wide llama with deterministic random weights and the real SmolLM2
tokenizer, for tests and smoke runs (built once in the cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from seal_env.gguf import SMOLLM2_CONFIG, read_gguf, write_config, write_tokenizer
from seal_env.models import build_once

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


def tiny_random_path(seed: int = 0) -> Path:
    """``cache_dir()/tiny-random``: a 2-layer 64-wide llama with deterministic random fp32 weights (numpy ``seed``)
    and the real SmolLM2 tokenizer (built from the GGUF metadata; no weights are dequantized)."""

    def build(folder: Path) -> dict:
        import mlx.core as mx
        import numpy as np
        from mlx.utils import tree_flatten
        from mlx_lm.models import llama

        _, metadata = read_gguf()
        write_tokenizer(folder, metadata)
        write_config(folder, TINY_CONFIG)
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

    return build_once("tiny-random" if seed == 0 else f"tiny-random-{seed}", build)
