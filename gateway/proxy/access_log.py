"""The proxy listener's access log: one line per request, naming the key, never its secret."""

from __future__ import annotations

import functools
import json
import logging
import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.keys.keyformat import cut_keys
from gateway.proxy import access_writer
from gateway.proxy.notes import RequestNotes
from gateway.runtime.appkeys import NOTES
from gateway.runtime.logs import json_access_line

access_logger = logging.getLogger("keygate.access")
# For requests the proxy never saw (refused by the HTTP parser): nothing noted.
_NOTHING_NOTED = RequestNotes("-")
# A request target with every key in it (raw or percent-encoded) cut to its display prefix.
redact_keys = cut_keys


# Key names written bare in text lines; any other (a space, `"`, `=`...) is quoted, so a name
# like `a rid=x key=admin` cannot pass for fields of its own.
_BARE_NAME = re.compile(r"[0-9A-Za-z._:@/+?~-]+")
# Key names made into text fields and remembered (least recently used out): one per key.
TEXT_NAMES_LIMIT = 4096


@functools.lru_cache(maxsize=TEXT_NAMES_LIMIT)
def text_field(value: str) -> str:
    """Return a value as one text-line field: bare when plain, else JSON-quoted and escaped."""
    return value if _BARE_NAME.fullmatch(value) else json.dumps(value)


def _text_target(target: str) -> str:
    """Return a target for the quoted request field: `"` and `\\` percent-encoded (rare)."""
    if '"' in target or "\\" in target:
        return target.replace("\\", "%5C").replace('"', "%22")
    return target


def decided(request: web.BaseRequest, notes: RequestNotes) -> tuple[str, str]:
    """The method and target a forward-auth line shows: the original request it decided,
    once read; until then (the front proxy's request was refused) its own request line."""
    if notes.method is None or notes.target is None:
        return request.method, request.raw_path
    return notes.method, notes.target


class ProxyAccessLogger(AbstractAccessLogger):
    """One line per proxied request: peer, request line, status, size, time, request id, key.

    Every field is one space-free token but the quoted request line; a key name that is not
    plain is quoted and escaped as a JSON string, so a line's fields are always its own.

    The size is the bytes written; an answer cut short (the upstream or the client failed
    mid-body) ends its line with ` incomplete`, never passing for a whole one. A request that
    ended early (the client closed its connection: status 499; shutdown cut it: 503) says so
    with ` ended=client_abandoned` (or `shutdown`) and ` received=N`, the request body bytes
    read from the client by then; the size is then the bytes relayed to it so far. A
    forward-auth answer shows the original request it decided and ends with ` decision=`
    and its endpoint (`nginx`, `forward`, `envoy`, `unknown`).
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access line (never a credential: only the key's name)."""
        try:  # not request.get: Mapping.get costs twice a lookup, on every request
            notes = request[NOTES]
        except KeyError:
            notes = _NOTHING_NOTED
        ended = notes.ended
        if ended is None:
            status, size = response.status, response.body_length
        else:  # the client left (or shutdown cut it): say so, with what was relayed so far
            status, size = ended.status, request.writer.output_size
        write_text(
            self.logger, request.remote, request.method, request.raw_path, status, size, time, notes
        )


def write_text(
    logger: logging.Logger,
    remote: str | None,
    own_method: str,
    own_target: str,
    status: int,
    size: int,
    time: float,
    notes: RequestNotes,
) -> None:
    """Write one text access line (ProxyAccessLogger's; the decision listener's too)."""
    incomplete = " incomplete" if notes.incomplete else ""
    key_name = notes.key_name
    ended = notes.ended
    if ended is not None:
        incomplete += f" ended={ended.name} received={notes.received}"
    method, target = own_method, own_target
    if notes.decision is not None:  # a forward-auth answer: the request it decided
        if notes.method is not None and notes.target is not None:
            method, target = notes.method, notes.target
        incomplete = f" decision={notes.decision}{incomplete}"
    message = (
        f'{remote} "{method} {_text_target(redact_keys(target))}" '
        f"{status} {size} {time * 1000:.1f}ms "
        f"rid={notes.request_id} key={'-' if key_name is None else text_field(key_name)}"
        f"{incomplete}"
    )
    writer = access_writer.active
    if writer is not None:
        writer.text(message)
    else:
        logger.info("%s", message)


class JsonProxyAccessLogger(AbstractAccessLogger):
    """The access record with every field apart, for `log.format: json` (gateway.runtime.logs)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access record (never a credential: only the key's name)."""
        notes = request.get(NOTES)
        status, size = response.status, response.body_length
        ended = None if notes is None else notes.ended
        if ended is not None:  # the client left (or shutdown cut it): what was relayed so far
            status, size = ended.status, request.writer.output_size
        write_json(
            self.logger, request.remote, request.method, request.raw_path, status, size, time, notes
        )


def write_json(
    logger: logging.Logger,
    remote: str | None,
    own_method: str,
    own_target: str,
    status: int,
    size: int,
    time: float,
    notes: RequestNotes | None,
) -> None:
    """Write one JSON access record (JsonProxyAccessLogger's; the decision listener's too)."""
    method, target = own_method, own_target
    if (
        notes is not None
        and notes.decision is not None
        and notes.method is not None
        and notes.target is not None
    ):
        method, target = notes.method, notes.target
    path = redact_keys(target)
    ended = None if notes is None else notes.ended
    message = f"{method} {path} {status}"
    request_id = None if notes is None else notes.request_id
    duration_ms = round(time * 1000, 2)
    writer = access_writer.active
    if writer is not None:
        fields = (request_id, method, path, status, size, duration_ms)
        writer.raw(json_access_line(writer.json_head(), message, fields, notes, remote))
        return
    extra = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "bytes": size,
        "duration_ms": duration_ms,
        "remote": remote,
    }
    if notes is not None:
        extra["key"] = notes.key_name
        extra["upstream_status"] = notes.upstream_status
        extra["upstream_ms"] = notes.upstream_ms
        extra["incomplete"] = True if notes.incomplete else None
        if ended is not None:
            extra["ended"] = ended.name
            extra["received"] = notes.received
        extra["decision"] = notes.decision
    logger.info("%s", message, extra=extra)
