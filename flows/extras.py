"""The optional extras: a feature whose package is missing says which extra
to install, instead of a bare ``ModuleNotFoundError``.

The core install (the engine, the worker, the fleet's supervisor, the CLI)
needs psycopg, psycopg-pool, msgspec and uuid6 only.
"""

from __future__ import annotations

import importlib
import importlib.util
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
        raise _missing(module, extra, feature, exc.name) from None


def check(module: str, extra: str, feature: str) -> None:
    """``require`` without importing ``module``: for a package that must not
    be imported yet (prometheus_client reads its multiprocess directory
    once, when first imported)."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise _missing(module, extra, feature, module.split(".")[0])


def _missing(module: str, extra: str, feature: str, name: str) -> MissingExtra:
    return MissingExtra(
        f"{feature} needs the {module.split('.')[0]!r} package, part of the {extra!r} extra:"
        f" pip install '{DISTRIBUTION}[{extra}]'",
        name=name,
    )
