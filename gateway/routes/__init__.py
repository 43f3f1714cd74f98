"""The routes, one module per resource, each an `APIRouter` made by `resource_router`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute


def operation_id(route: APIRoute) -> str:
    """Operation ids are the route functions' names (`get_user`), not path soup."""
    return route.name


def resource_router(**options: Any) -> APIRouter:
    return APIRouter(generate_unique_id_function=operation_id, **options)
