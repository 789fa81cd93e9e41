"""Every ```python block of README.md and docs/*.md runs, as a script in a fresh Python process, on the tiny
random model.

Each block has an :class:`Example` here, keyed by the block's first line (unique across all the pages): a prelude that
defines the block's free names (``policy``, ``article``, ``pairs``, ...), textual replacements that swap what cannot
run offline or fast here (SmolLM2 -> ``"tiny-random"`` with short settings, a Hugging Face policy -> a tiny random
local folder, Ray -> the in-process executor) and a check appended after the block. A block without an Example, an
Example without its block, or a replacement whose text is no longer in its block fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: The short inner loop every example runs (the model spec is replaced separately).
TINY_SETTINGS = "dict(epochs=1, lora_rank=4, lora_alpha=8.0, answer_max_tokens=4, max_sequences=3)"
#: Stands for the model spec ``"smollm2-135m"`` in a call's keyword arguments or in a dict literal.
TINY_SPEC = '"tiny-random", **TINY_SETTINGS'
#: Stands for ``gym.make("seal/KnowledgeIncorporation-v0"`` (the call's further arguments follow).
TINY_GYM_MAKE = 'gym.make("seal/KnowledgeIncorporation-v0", model="tiny-random", **TINY_SETTINGS'
IMPORTS = f"import gymnasium as gym\nimport seal_env\n\nTINY_SETTINGS = {TINY_SETTINGS}\n"


@dataclass
class Example:
    """How to run one block: ``prelude`` + the block with ``replace`` applied + ``check``, as a script named
    ``script``, which must exit 0 and print something matching ``output``."""

    prelude: str = ""
    replace: dict[str, str] = field(default_factory=dict)
    check: str = ""
    output: str = ""
    script: str = "example.py"
    needs: tuple[str, ...] = ()


EXAMPLES: dict[str, Example] = {
    # ## The environment
    "import gymnasium as gym": Example(
        prelude=IMPORTS,
        replace={'gym.make("seal/KnowledgeIncorporation-v0"': TINY_GYM_MAKE},
        check="import math\nassert terminated and not truncated and math.isfinite(reward) and info['train_steps'] > 0",
        output=r"Article: .+ questions\)",
    ),
    # ### Add your own agent: run as the script it says it is, with RunConfig() giving the tiny preset
    "# my_agent.py — python my_agent.py": Example(
        prelude=textwrap.dedent(
            """\
            import agents.config
            from seal_env.config import SealConfig

            _RunConfig = agents.config.RunConfig


            def _tiny_run_config(**settings):
                tiny = {**agents.config.TINY, "env": SealConfig(**agents.config.TINY_ENV)}
                return _RunConfig(**{**tiny, "wandb_mode": "disabled", **settings})


            agents.config.RunConfig = _tiny_run_config
            """
        ),
        output=r"bandit finished: 4 rounds",
        script="my_agent.py",
    ),
    # ### TRL: a tiny random Llama saved as a local folder stands for Qwen2.5-0.5B-Instruct; one GRPO step
    "from transformers import AutoModelForCausalLM, AutoTokenizer": Example(
        prelude=IMPORTS
        + textwrap.dedent(
            """\
            import torch
            from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
            from seal_env.models import resolve_model_path

            torch.manual_seed(0)
            TINY_POLICY = "tiny-policy"
            _tok = AutoTokenizer.from_pretrained(str(resolve_model_path("tiny-random")))
            _config = LlamaConfig(
                vocab_size=len(_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                bos_token_id=_tok.bos_token_id, eos_token_id=_tok.eos_token_id, pad_token_id=_tok.pad_token_id,
            )
            LlamaForCausalLM(_config).save_pretrained(TINY_POLICY)
            _tok.save_pretrained(TINY_POLICY)
            """
        ),
        replace={
            '"Qwen/Qwen2.5-0.5B-Instruct"': "TINY_POLICY",
            '"smollm2-135m"': TINY_SPEC,
            "max_completion_length=256": (
                'max_completion_length=8, max_steps=1, use_cpu=True, report_to=[], save_strategy="no"'
            ),
        },
        check="assert trainer.state.global_step == 1 and len(reward.history) == 8",
        needs=("torch", "trl"),
    ),
    # ### verifiers: runs as written (already the tiny model)
    "import asyncio": Example(
        check="import math\nassert math.isfinite(trace.reward) and 'seal_loglik_gain' in trace.metrics",
        needs=("verifiers",),
    ),
    # ## Continued pretraining
    'env = gym.make("seal/ContinualPretraining-v0", n_articles=5, train_mode="pooled")  # + any setting above': Example(
        prelude=IMPORTS + "\n\ndef policy(obs):\n    return '1. ' + obs['context'].split('.')[0] + '.'\n",
        replace={'train_mode="pooled")': 'train_mode="pooled", model="tiny-random", **TINY_SETTINGS)'},
        check="assert terminated and len(info['articles']) == 5 and info['train_steps'] > 0",
    ),
    # ## Batched rewards
    'env = gym.make("seal/KnowledgeIncorporation-v0").unwrapped': Example(
        prelude=IMPORTS
        + textwrap.dedent(
            """\
            from seal_env.articles import load_articles

            article = load_articles("bundled")[0]
            edit_a, edit_b, edit_c = "1. A fact.\\n2. Another.", "", "The passage, retold."
            """
        ),
        replace={'gym.make("seal/KnowledgeIncorporation-v0"': TINY_GYM_MAKE},
        check="assert len(results) == 3 and all(info['train_steps'] > 0 for _, info in results)",
    ),
    # ## Scaling out: the in-process executor stands for Ray (tests/test_executors.py runs the Ray pool)
    "from seal_env.executors import RewardRequest, make_executor": Example(
        prelude=IMPORTS
        + textwrap.dedent(
            """\
            from mlx.utils import tree_flatten
            from seal_env.articles import load_articles
            from seal_env.models import load_model

            article, other = load_articles("bundled")[:2]
            pairs = [(article, "1. A fact."), (other, "2. Another."), (article, "")]
            fused_policy_weights = {  # plain mlx-lm names, as a fused policy's
                k: v * 1.01 for k, v in tree_flatten(load_model("tiny-random")[0].parameters()) if "q_proj" in k
            }
            """
        ),
        replace={
            'make_executor("ray",': 'make_executor("inprocess",',
            "workers=2)": "workers=1)",
            '"smollm2-135m"': TINY_SPEC,
        },
        check="assert len(results) == 3 and all(info['train_steps'] > 0 for _, info in results)",
    ),
    # ## Scaling out, vectorised environments
    "from gymnasium.vector import AutoresetMode": Example(
        prelude=IMPORTS + "\n\ndef policy(title, context):\n    return '1. ' + context.split('.')[0] + '.'\n",
        replace={'"smollm2-135m"': TINY_SPEC},
        check="assert terminated.all() and len(rewards) == 4",
    ),
    # ## Serving (docs/serving.md): the server on the tiny model
    "from seal_env.serve.client import SealEnvClient, ServerProcess": Example(
        replace={
            '"--model", "smollm2-135m"': '"--model", "tiny-random", "--epochs", "1", "--lora-rank", "4", '
            '"--lora-alpha", "8", "--answer-max-tokens", "4", "--max-sequences", "3"',
        },
        check="assert len(results) == 3 and all(r.done for r in results) and isinstance(result.reward, float)",
        output=r"reward [+-]\d",
        needs=("openenv",),
    ),
}


def python_blocks() -> dict[str, str]:
    """The pages' ```python blocks by their first line; two blocks with the same first line fail here."""
    blocks: dict[str, str] = {}
    for page in PAGES:
        for body in re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M):
            key = body.splitlines()[0]
            assert key not in blocks, f"two python blocks start with {key!r} ({page.name}): give one another first line"
            blocks[key] = body
    return blocks


def test_every_block_has_an_example():
    blocks = python_blocks()
    assert sorted(blocks) == sorted(EXAMPLES), (
        f"python blocks of README.md or docs/ without an Example in this file: {sorted(set(blocks) - set(EXAMPLES))}; "
        f"Examples whose block is gone: {sorted(set(EXAMPLES) - set(blocks))}"
    )


@pytest.mark.parametrize("key", list(EXAMPLES), ids=[re.sub(r"\W+", "-", k).strip("-")[:40] for k in EXAMPLES])
def test_example_runs(key, tmp_path):
    example = EXAMPLES[key]
    for module in example.needs:
        pytest.importorskip(module)
    blocks = python_blocks()
    assert key in blocks, f"no python block of README.md or docs/ starts with {key!r}"
    code = blocks[key]
    for old, new in example.replace.items():
        assert old in code, f"{old!r} is no longer in the block {key!r}: update its Example"
        code = code.replace(old, new)
    path = tmp_path / example.script
    path.write_text(f"{example.prelude}\n{code}\n{example.check}\n")
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]  # agents/ of this checkout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(
        [sys.executable, path.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"block {key!r} failed:\n{path.read_text()}\n{done.stderr[-4000:]}"
    assert re.search(example.output, done.stdout), done.stdout[-2000:]
