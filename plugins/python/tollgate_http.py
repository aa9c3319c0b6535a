"""A bounded, blocking HTTP GET over `wasi:http/outgoing-handler@0.2`, for Python policies built
against the `policy-http` world (`componentize-py -d wit -w policy-http ...`).

    from tollgate_http import HttpError, http_get

    try:
        status, body = http_get("https://idp.example.com/keys", [("accept", "application/json")])
    except HttpError as e:
        return Decision_Unavailable(f"the issuer cannot be reached: {e}")

The host decides what a request may reach: the manifest's `allowed_outbound_hosts` (and, for a
loopback or private address, the operator's tenants file). A request it refuses, one that times
out (the plugin's deadline bounds every step) or a body over the host's `[outbound]
max_response_kib` comes back as HttpError, never as a trap. No asyncio and no `poll_loop`: the
generated bindings are enough for one request at a time.
"""

from typing import Sequence, Tuple
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world.imports import outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.wasi_http_types import (
    Fields,
    Method_Get,
    OutgoingRequest,
    Scheme_Http,
    Scheme_Https,
)

# The guest's own bound on a body (the host caps it too: manifest [outbound] max_response_kib).
MAX_BODY = 1 << 20
_CHUNK = 64 * 1024


class HttpError(Exception):
    """The request was refused, failed, or its answer was too large. Says what, never a body."""


def _error_text(value) -> str:
    # An error-code case, e.g. ErrorCode_HttpRequestDenied() -> "HttpRequestDenied".
    name = type(value).__name__
    return name.split("_", 1)[1] if "_" in name else repr(value)


def http_get(url: str, headers: Sequence[Tuple[str, str]] = (), max_body: int = MAX_BODY) -> Tuple[int, bytes]:
    """GETs `url`; returns (status, body), whatever the status (check it). Raises HttpError."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise HttpError(f"not an http(s) URL: {url!r}")
    request = OutgoingRequest(Fields.from_list([(k, v.encode("utf-8")) for k, v in headers]))
    request.set_method(Method_Get())
    request.set_scheme(Scheme_Https() if u.scheme == "https" else Scheme_Http())
    request.set_authority(u.netloc)
    request.set_path_with_query((u.path or "/") + (f"?{u.query}" if u.query else ""))
    try:
        future = outgoing_handler.handle(request, None)  # takes the request
    except Err as e:
        raise HttpError(f"request refused: {_error_text(e.value)}") from None
    with future:
        result = future.get()
        if result is None:
            with future.subscribe() as ready:
                ready.block()
            result = future.get()
    # option<result<result<incoming-response, error-code>>>
    if result is None or isinstance(result, Err):
        raise HttpError("no response")
    if isinstance(result.value, Err):
        raise HttpError(f"request failed: {_error_text(result.value.value)}")
    with result.value.value as response:
        status = response.status()
        with response.consume() as body:
            chunks, size = [], 0
            with body.stream() as stream:  # the stream (a child) goes before the body
                while True:
                    try:
                        chunk = stream.blocking_read(_CHUNK)
                    except Err as e:
                        if isinstance(e.value, StreamError_Closed):
                            break
                        raise HttpError("reading the body failed") from None
                    size += len(chunk)
                    if size > max_body:
                        raise HttpError(f"body larger than {max_body} bytes")
                    chunks.append(chunk)
    return status, b"".join(chunks)
