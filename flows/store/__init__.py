"""The SQL layer (moving to one module per job: see the next commit)."""

from flows.store.steps import *  # noqa: F401,F403
