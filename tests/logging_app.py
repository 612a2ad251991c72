"""An app module that sets up logging its own way: ``flows worker`` and the
supervisor's workers must keep it (tests/acceptance/test_log_format.py)."""

import logging

logging.basicConfig(level=logging.INFO, format="APP %(levelname)s %(name)s | %(message)s")

from tests.fleet_app import *  # noqa: E402,F401,F403 - the workflows and activities
