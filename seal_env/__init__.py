"""seal-env: the SEAL inner loop (self-edit -> LoRA fine-tune -> QA reward) as a Gymnasium environment on MLX.

Importing it loads OpenBLAS (before mlx), registers the environments' ids and gives the names most users need:
:class:`SealConfig` (every inner-loop setting), :class:`Article` and :func:`load_articles`, :func:`load_model`, and
:func:`make_executor` with :class:`RewardRequest` (rewards in batches, in this process or in workers).
"""

from seal_env._blas import load_fast_blas

load_fast_blas()  # must run before anything imports mlx

from seal_env._version import __version__  # noqa: E402
from seal_env.articles import Article, load_articles  # noqa: E402
from seal_env.config import SealConfig  # noqa: E402
from seal_env.executors import RewardRequest, make_executor  # noqa: E402
from seal_env.models import load_model  # noqa: E402

from gymnasium.envs.registration import register  # noqa: E402

__all__ = ["Article", "RewardRequest", "SealConfig", "__version__", "load_articles", "load_model", "make_executor"]

register(
    id="seal/KnowledgeIncorporation-v0",
    entry_point="seal_env.envs.knowledge:KnowledgeIncorporationEnv",
    vector_entry_point="seal_env.vector:KnowledgeIncorporationVectorEnv",
)
register(id="seal/ContinualPretraining-v0", entry_point="seal_env.envs.continued_pretraining:ContinualPretrainingEnv")
register(id="seal/ContinualSelfEdits-v0", entry_point="seal_env.envs.continual:ContinualSelfEditsEnv")
