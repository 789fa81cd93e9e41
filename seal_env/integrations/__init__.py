"""seal-env as a reward source for the trainers people already use: TRL (``trl``) and verifiers (``verifiers``)."""
