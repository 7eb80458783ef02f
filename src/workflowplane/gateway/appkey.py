"""The aiohttp application key under which handlers find their gateway."""

from __future__ import annotations

from typing import Any

from aiohttp import web

GATEWAY: web.AppKey[Any] = web.AppKey("gateway", object)
