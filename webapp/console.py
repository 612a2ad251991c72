"""The flows console, mounted at /console beside the loan API.

Keys come from the loan API's own configuration (``FLOWS_API_KEYS``, read
by ``webapp.extension``): with keys set, the console asks for one and shows
that tenant's workflows; ``FLOWS_CONSOLE_ADMIN_KEY`` sees every tenant and
the fleet. ``FLOWS_CONSOLE_SECRET`` signs its cookie (default: derived from
the keys and the app's SECRET_KEY, the same in every gunicorn worker).
"""

from __future__ import annotations

import hashlib

from flask import Flask

from flows.console import Access, console_blueprint
from webapp.extension import client

URL_PREFIX = "/console"


def register(app: Flask) -> None:
    cfg = app.config
    admin_key = str(cfg.get("CONSOLE_ADMIN_KEY") or "") or None
    secret = cfg.get("CONSOLE_SECRET") or hashlib.sha256(
        f"flows-console|{cfg.get('API_KEYS')}|{admin_key}|{cfg.get('SECRET_KEY')}|{cfg.get('DATABASE_URL')}".encode()
    ).hexdigest()
    access = Access(tenant_for=client.tenant_for, keys_required=lambda: client.auth_required, admin_key=admin_key)
    app.register_blueprint(console_blueprint(lambda: client.engine, access, secret_key=str(secret)),
                           url_prefix=URL_PREFIX)
