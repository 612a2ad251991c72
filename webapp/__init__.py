"""The loan application's web API: ``create_app()`` builds the Flask app.

Settings: defaults below, then every ``FLOWS_*`` environment variable
(``FLOWS_API_KEYS`` -> ``API_KEYS``; values that parse as JSON are decoded),
then ``test_config``. ``DATABASE_URL`` selects the database (the embedded
server when unset, started on the first request).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from flask import Flask

from webapp.extension import client

BODY_LIMIT_BYTES = 64 * 1024


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        DATABASE_URL=os.environ.get("DATABASE_URL"),
        SHARDS=None,  # None: FLOWS_SHARDS or 3, as the workers use
        POOL_SIZE=None,  # None: FLOWS_POOL_SIZE or 10 connections per process
        API_KEYS="",  # "key:tenant-uuid,...": empty runs everything as the default tenant
        MAX_BODY_BYTES=BODY_LIMIT_BYTES,  # larger request bodies get a 413
        HEALTH_TIMEOUT=2.0,  # seconds /healthz waits for the database
        CONSOLE_ADMIN_KEY="",  # the console key that sees every tenant and the fleet
        CONSOLE_SECRET=None,  # signs the console's cookie (default: derived from the keys)
    )
    app.config.from_prefixed_env("FLOWS")
    if test_config is not None:
        app.config.from_mapping(test_config)
    # One byte of slack lets a chunked body of exactly the limit through while
    # one byte more is seen (werkzeug silently truncates a chunked body at
    # MAX_CONTENT_LENGTH); routes.decode_body enforces MAX_BODY_BYTES itself.
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_BODY_BYTES"]) + 1

    client.init_app(app)

    from webapp import console, routes

    app.register_blueprint(routes.api)
    app.register_blueprint(routes.meta)
    routes.register_error_handlers(app)
    console.register(app)
    return app
