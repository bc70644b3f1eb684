"""``RoutePolicy``: who may use which of Ollama's routes, from one table of them.

Every route has a class in :data:`~ollama_smart_proxy.kinds.ROUTE_TABLE` (read from
Ollama's ``server/routes.go``): ``admin`` routes change what the server holds (pull, push,
create, copy, delete, blobs), ``account`` routes act with the server's ollama.com account
(sign out, its keys, web search and fetch, who am I); both need an admin key when keys are
in use, and ``admin_routes="closed"`` shuts them for everyone. A route the table does not
know is admin-only when keys are in use: the classification is an allow-list.
"""

from __future__ import annotations

from typing import Literal

from .._keys import request_key
from ..errors import PermissionDenied
from ..kinds import UNPARSED_GENERATION_KINDS, route_class
from ..routing import route_of
from ..types import ASGIApp, Receive, Scope, Send

AdminRoutes = Literal["open", "closed"]

_WHAT = {
    "admin": "changes the models on the server",
    "account": "acts with the Ollama server's ollama.com account",
}


class RoutePolicy:
    """``RoutePolicy(app, *, admin_routes="open", keys_required=False)``.

    It runs after ``ApiKeys``: a request with no key is a 401 before it is a 403.
    """

    def __init__(
        self, app: ASGIApp, *, admin_routes: AdminRoutes = "open", keys_required: bool = False
    ) -> None:
        if admin_routes not in ("open", "closed"):
            raise ValueError("admin_routes must be 'open' or 'closed'")
        self.app = app
        self.admin_routes = admin_routes
        self.keys_required = keys_required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.check(scope)
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        """Raise ``PermissionDenied`` if this request may not use its route."""
        route = route_of(scope)
        if route.family in ("invalid", "none"):
            return  # answered as such further in
        method = scope["method"]
        what = route_class(method, route.kind)
        key = request_key(scope)
        if route.kind == "usage" and (key is None or not key.admin):
            raise PermissionDenied("/usage reports every key's use: it needs an admin key")
        if route.kind == "metrics" and self.keys_required and (key is None or not key.admin):
            raise PermissionDenied(
                "/metrics names every key and model: it needs an admin key (OSP_ADMIN_KEYS)"
            )
        if what in _WHAT:
            described = f"{method} {route.path} {_WHAT[what]}"
            if self.admin_routes == "closed":
                raise PermissionDenied(
                    f"{described}, and such routes are closed on this proxy "
                    "(OSP_ADMIN_ROUTES=closed; set it to 'open' to allow them)"
                )
            if self.keys_required and (key is None or not key.admin):
                raise PermissionDenied(f"{described}: it needs an admin key (OSP_ADMIN_KEYS)")
        elif what is None and self.keys_required and (key is None or not key.admin):
            raise PermissionDenied(
                f"{method} {route.path} is not a route this proxy knows; with keys in use, "
                "unknown routes need an admin key (OSP_ADMIN_KEYS)"
            )
        elif route.kind in UNPARSED_GENERATION_KINDS and key is not None and key.models is not None:
            raise PermissionDenied(
                f"{route.path} names its model in a body the proxy does not read, so a key "
                f"limited to some models (the key '{key.name}') may not use it"
            )


__all__ = ["AdminRoutes", "RoutePolicy"]
