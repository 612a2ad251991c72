"""Names and ids as the API takes them: a workflow's base name, a
workflow's or a tenant's UUID (or its text), the default tenant, and
``ANY_TENANT``, an operator's view of every tenant."""

from __future__ import annotations

from typing import Any, Final
from uuid import UUID

from flows import sharding
from flows.errors import InvalidInput

DEFAULT_TENANT_ID = UUID(int=0)


class _AnyTenant:
    def __repr__(self) -> str:
        return "ANY_TENANT"


ANY_TENANT: Final[Any] = _AnyTenant()
"""Pass as ``tenant_id`` to see every tenant's workflows (an operator's view)."""


def parse_uuid(value: object, what: str = "workflow_id") -> UUID:
    """``value`` as a UUID (a UUID, or its text); InvalidInput naming ``what`` if it is none."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} is not a UUID: {value!r}") from None


def tenant(tenant_id: object) -> UUID:
    """A caller's tenant: None -> the default tenant; else its UUID."""
    return DEFAULT_TENANT_ID if tenant_id is None else parse_uuid(tenant_id, "tenant_id")


def tenant_filter(tenant_id: object) -> UUID | None:
    """An operator's read: ``ANY_TENANT`` -> None (no filter); None -> the default tenant; else the UUID."""
    return None if tenant_id is ANY_TENANT else tenant(tenant_id)


def base_name(name: object) -> str:
    """A workflow's base name, also from its sharded name (``x-shard-2``)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"workflow name must be a non-empty string, got {name!r}")
    return sharding.base_name(name)
