"""seal-env: the SEAL inner loop (self-edit -> LoRA fine-tune -> QA reward) as a Gymnasium environment on MLX."""

from seal_env._blas import load_fast_blas

load_fast_blas()  # must run before anything imports mlx

from gymnasium.envs.registration import register  # noqa: E402

__version__ = "0.1.0"

register(
    id="seal/KnowledgeIncorporation-v0",
    entry_point="seal_env.env:KnowledgeIncorporationEnv",
    vector_entry_point="seal_env.vector:KnowledgeIncorporationVectorEnv",
)
register(id="seal/ContinualPretraining-v0", entry_point="seal_env.cpt_env:ContinualPretrainingEnv")
register(id="seal/ContinualSelfEdits-v0", entry_point="seal_env.continual_env:ContinualSelfEditsEnv")
