"""``python -m seal_env.serve``: ``seal/KnowledgeIncorporation-v0`` as an OpenEnv server (HTTP + WebSocket).

The server is OpenEnv's (``openenv.core.env_server.create_fastapi_app``): every WebSocket connection (``/ws``) is a
session with its own episode (:class:`SealServedEnv`); ``/reset``, ``/step``, ``/state``, ``/schema``, ``/health``
and ``/metadata`` are its HTTP endpoints. The action is a :class:`~seal_env.serve.models.SealAction` (the
self-edit), the observation a :class:`~seal_env.serve.models.SealObservation` (title and passage; after the step
the reward and the info), the state a :class:`~seal_env.serve.models.SealState`.

One model serves every session: steps of different sessions on the same article that arrive within
``--batch-window-ms`` of each other (a GRPO group: K rollouts of one prompt) are trained and quizzed in one
``evaluate_many`` pass (:class:`seal_env.serve.batcher.RequestBatcher`; at most ``--batch-cap`` of them), through
the reward executor of ``--executor`` (this process by default when one worker fits; ``pool`` or ``ray`` for more
workers), with the reward cache as everywhere. Each session gets its own reward: the one ``evaluate`` gives for the
same (article, self-edit, inner-loop seed), up to float rounding.

Episodes follow the local environment: ``reset(seed=s)`` draws the same article and the same inner-loop seed as
``gym.make("seal/KnowledgeIncorporation-v0").reset(seed=s)`` with the same settings, so the step gives the same
reward. Reset options: ``article_index``, ``article`` (``{title, context, questions}``) and ``inner_loop_seed`` (the
step's seed instead of a drawn one). A ``POST /step`` over HTTP has no session: it takes these options (and
``seed``) in its body and is a whole episode in one request.

It binds to 127.0.0.1 by default; binding to another address needs an access token (``--token-env NAME``: the
environment variable holding it, or ``--token-file PATH``), which every request must then carry as
``Authorization: Bearer <token>`` (missing: 401, wrong: 403; the WebSocket handshake is refused the same way).
Request bodies and WebSocket messages over ``--max-request-bytes`` are refused (413; a WebSocket is closed).
Bad requests get a 4xx answer naming the problem (over a WebSocket: an error message) and the server goes on.

Modules: :mod:`seal_env.serve.cli` (the command line and the process: HTTP in a thread, rewards in the main thread),
:mod:`seal_env.serve.app` (the sessions and OpenEnv's app), :mod:`seal_env.serve.models` (the typed action,
observation and state), :mod:`seal_env.serve.client` (OpenEnv's client class, an executor over the server, a server
child process) and :mod:`seal_env.serve.batcher` (concurrent reward requests gathered into batches; also used by
the verifiers integration). Only ``app``, ``models`` and ``client`` import OpenEnv (``pip install "seal-env[serve]"``).
"""

ENV_ID = "seal/KnowledgeIncorporation-v0"
DEFAULT_PORT = 8000
#: How long a step waits for steps of other sessions on its article (milliseconds).
DEFAULT_WINDOW_MS = 50.0
DEFAULT_MAX_SESSIONS = 256
DEFAULT_MAX_REQUEST_BYTES = 8 * 2**20
