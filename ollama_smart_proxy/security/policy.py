"""``RoutePolicy``: who may change what the server holds (pull, push, create, copy, delete,
blobs)."""

from __future__ import annotations

from typing import Literal

from ..errors import PermissionDenied
from ..routing import ADMIN_KINDS, route_of
from ..types import ASGIApp, Receive, Scope, Send
from .keys import request_key

AdminRoutes = Literal["open", "closed"]


class RoutePolicy:
    """``RoutePolicy(app, *, admin_routes="open", keys_required=False)``.

    The routes that change the server need an admin key when keys are in use
    (``keys_required``); ``admin_routes="closed"`` shuts them for everyone, keys or not. It
    runs after ``ApiKeys``: a request with no key is a 401 before it is a 403.
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
            route = route_of(scope)
            if route.kind in ADMIN_KINDS and scope["method"] not in ("GET", "HEAD"):
                self.check(scope["method"], route.path, scope)
        await self.app(scope, receive, send)

    def check(self, method: str, path: str, scope: Scope) -> None:
        what = f"{method} {path} changes the models on the server"
        if self.admin_routes == "closed":
            raise PermissionDenied(
                f"{what}, and such routes are closed on this proxy "
                "(OSP_ADMIN_ROUTES=closed; set it to 'open' to allow them)"
            )
        key = request_key(scope)
        if self.keys_required and (key is None or not key.admin):
            raise PermissionDenied(f"{what}: it needs an admin key (OSP_ADMIN_KEYS)")


__all__ = ["AdminRoutes", "RoutePolicy"]
