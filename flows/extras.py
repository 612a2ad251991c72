"""The optional extras: a feature whose package is missing says which extra
to install, instead of a bare ``ModuleNotFoundError``.

The core install (the engine, the worker, the fleet's supervisor, the CLI)
needs psycopg, psycopg-pool, msgspec and uuid6 only.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from flows.errors import MissingExtra

DISTRIBUTION = "flows-pg"


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``; MissingExtra naming ``extra`` when
    it is not installed (an ImportError inside it propagates unchanged)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or module.split(".")[0] != exc.name.split(".")[0]:
            raise
        raise MissingExtra(
            f"{feature} needs the {module.split('.')[0]!r} package, part of the {extra!r} extra:"
            f" pip install '{DISTRIBUTION}[{extra}]'",
            name=exc.name,
        ) from None
