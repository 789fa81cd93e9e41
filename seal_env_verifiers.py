"""verifiers' module for the taskset id ``seal-env-verifiers``: :mod:`seal_env.integrations.verifiers` itself.

verifiers resolves a taskset id by importing the top-level module named after it (``seal-env-verifiers`` ->
``seal_env_verifiers``), so ``vf-eval seal-env-verifiers`` and ``vf.load_environment`` of a config with that
taskset id find seal-env's taskset in a fresh process. Importing this module gives the integration module.
"""

import sys

from seal_env.integrations import verifiers as _integration

sys.modules[__name__] = _integration
