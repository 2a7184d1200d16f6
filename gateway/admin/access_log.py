"""The admin listener's access line: aiohttp's, with the OpenID callback's code and state cut."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.web_log import AccessLogger
from yarl import URL

from gateway.admin.oidc_handlers import OIDC_CALLBACK

# Paths whose query carries one-time credentials (an authorization code, the flow's state).
SECRET_QUERY_PATHS = frozenset({OIDC_CALLBACK})
REDACTED_QUERY = "redacted"
# Paths the page polls (the change feed, every POLL_MS in app.js): a successful read is
# written at debug, so an open page does not write two info lines a second.
POLLED_PATHS = frozenset({"/api/v1/changes"})


class _AtDebug(logging.LoggerAdapter[logging.Logger]):
    """A logger whose info lines are written at debug."""

    def info(self, msg: object, *args: object, **kwargs: object) -> None:
        """Write at debug what would be written at info."""
        self.debug(msg, *args, **kwargs)  # type: ignore[arg-type]


def is_poll(request: web.BaseRequest, response: web.StreamResponse) -> bool:
    """Whether this exchange is a successful read of a polled path."""
    return request.method == "GET" and request.path in POLLED_PATHS and response.status < 400


class AdminAccessLogger(AccessLogger):
    """aiohttp's default access line, never holding the query of a SECRET_QUERY_PATHS path.

    A successful poll of a POLLED_PATHS path is written at debug; a refused one at info.
    """

    def __init__(self, logger: logging.Logger, log_format: str = AccessLogger.LOG_FORMAT) -> None:
        super().__init__(logger, log_format)
        self._polls = AccessLogger(_AtDebug(logger), log_format)  # type: ignore[arg-type]

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the line; the callback's query is replaced by `?redacted`."""
        if is_poll(request, response):
            if self.logger.isEnabledFor(logging.DEBUG):
                self._polls.log(request, response, time)
            return
        if request.path in SECRET_QUERY_PATHS and request.query_string:
            shown = URL.build(path=request.path, query_string=REDACTED_QUERY, encoded=True)
            request = request.clone(rel_url=shown)
        super().log(request, response, time)
