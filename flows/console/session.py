"""The console's own signed cookie: the CSRF token, the key the visitor
logged in with, and a one-shot message for the next page.

The console does not use the host app's Flask session (it may have none,
or keep other things there): its cookie is signed with a secret of its own.
The key is kept (HttpOnly, SameSite=Lax) and checked again on every request,
so a key removed from the configuration stops working at once.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE_NAME = "flows_console"
MAX_AGE_SECONDS = 12 * 3600


@dataclass
class ConsoleSession:
    csrf: str
    key: str | None = None
    flash: tuple[str, str] | None = None  # (level, text), shown once
    changed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def check_csrf(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf.encode(), token.encode())

    def say(self, level: str, text: str) -> None:
        self.flash = (level, text)
        self.changed = True

    def pop_flash(self) -> tuple[str, str] | None:
        flash, self.flash = self.flash, None
        if flash is not None:
            self.changed = True
        return flash


class CookieCodec:
    """Signs and reads the console cookie with ``secret``."""

    def __init__(self, secret: str | bytes) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="flows-console")

    def load(self, value: str | None) -> ConsoleSession:
        if value:
            try:
                data = self._serializer.loads(value, max_age=MAX_AGE_SECONDS)
                flash = data.get("flash")
                return ConsoleSession(str(data["csrf"]), data.get("key"), tuple(flash) if flash else None)
            except (BadSignature, KeyError, TypeError, ValueError):
                pass
        return ConsoleSession(secrets.token_urlsafe(24), changed=True)

    def dump(self, session: ConsoleSession) -> str:
        return self._serializer.dumps({"csrf": session.csrf, "key": session.key, "flash": session.flash})
