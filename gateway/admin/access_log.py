"""The admin listener's access line: aiohttp's, with the OpenID callback's code and state cut."""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_log import AccessLogger
from yarl import URL

from gateway.admin.oidc_handlers import OIDC_CALLBACK

# Paths whose query carries one-time credentials (an authorization code, the flow's state).
SECRET_QUERY_PATHS = frozenset({OIDC_CALLBACK})
REDACTED_QUERY = "redacted"


class AdminAccessLogger(AccessLogger):
    """aiohttp's default access line, never holding the query of a SECRET_QUERY_PATHS path."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the line; the callback's query is replaced by `?redacted`."""
        if request.path in SECRET_QUERY_PATHS and request.query_string:
            shown = URL.build(path=request.path, query_string=REDACTED_QUERY, encoded=True)
            request = request.clone(rel_url=shown)
        super().log(request, response, time)
