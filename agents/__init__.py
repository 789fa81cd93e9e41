"""Agents for seal-env: the agent interface (:mod:`agents.base`), ready policies (:mod:`agents.policies`), the shared
run machinery (:mod:`agents.run`), and the algorithms :mod:`agents.restem` and :mod:`agents.grpo`."""

import seal_env  # noqa: F401  (loads OpenBLAS before anything imports mlx)
