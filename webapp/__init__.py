"""The loan application's web API: ``create_app()`` builds the Flask app.

Settings: defaults below, then every ``FLOWS_*`` environment variable
(``FLOWS_API_KEYS`` -> ``API_KEYS``; values that parse as JSON are decoded),
then ``test_config``. ``DATABASE_URL`` selects the database (the embedded
server when unset, started on the first request). ``API_KEYS`` left unset
turns authentication off; set to anything but a usable list of keys, the
app refuses to start (``flows.ConfigurationError``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import msgspec
from flask import Flask, Response

from webapp.extension import API_KEYS_UNSET, client

BODY_LIMIT_BYTES = 64 * 1024
POOL_TIMEOUT_SECONDS = 2.0  # a request waits this long for a database connection, then gets its 503


class JsonFlask(Flask):
    """Flask whose automatic answer to OPTIONS is JSON, like every other."""

    def make_default_options_response(self) -> Response:
        allow = sorted(super().make_default_options_response().allow)
        return Response(msgspec.json.encode({"allow": allow}), 200, headers={"Allow": ", ".join(allow)},
                        mimetype="application/json")


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = JsonFlask(__name__, static_folder=None)
    app.config.from_mapping(
        DATABASE_URL=os.environ.get("DATABASE_URL"),
        SHARDS=None,  # None: FLOWS_SHARDS or 3, as the workers use
        POOL_SIZE=None,  # None: FLOWS_POOL_SIZE or 10 connections per process
        POOL_TIMEOUT=POOL_TIMEOUT_SECONDS,
        API_KEYS=API_KEYS_UNSET,  # "key:tenant-uuid,...": unset runs everything as the default tenant
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
    app.register_blueprint(routes.prometheus)
    routes.register_error_handlers(app)
    console.register(app)
    return app
