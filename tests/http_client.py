"""The client's side of the http end-to-end tests: raw sockets, responses read
to EOF and split by their Content-Length, lb's built-in error pages."""

from __future__ import annotations

import socket
from typing import NamedTuple

# the reason phrases of lb's built-in pages (lb/fastpath/http_route.pxi)
REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout",
           413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed", 429: "Too Many Requests",
           431: "Request Header Fields Too Large",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported"}


class Response(NamedTuple):
    status: int
    headers: dict  # lower-case name -> value (str); the last one of a name
    body: bytes


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything until lb closes; the socket's timeout is a guard (a hang fails).
    A reset is not a close: it raises."""
    out = bytearray()
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except socket.timeout:
        raise AssertionError(f"lb did not close the connection; got {bytes(out)[:200]!r}") from None
    return bytes(out)


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send data (the write side stays open: lb must close on its own), read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_to_eof(s)


def parse_responses(raw: bytes) -> list[Response]:
    """Responses framed by Content-Length, back to back; no byte may be left over."""
    out = []
    while raw:
        end = raw.find(b"\r\n\r\n")
        assert end >= 0, f"an incomplete response head: {raw[:200]!r}"
        lines = raw[:end].decode("latin-1").split("\r\n")
        version, code, _reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        body = raw[end + 4:end + 4 + length]
        assert len(body) == length, f"a body cut short: {raw[:200]!r}"
        out.append(Response(int(code), headers, body))
        raw = raw[end + 4 + length:]
    return out


def assert_error_page(response: Response, status: int):
    """lb's built-in page for status, announcing the close."""
    assert response.status == status
    assert response.headers.get("connection") == "close"
    assert response.body == f"{status} {REASONS[status]}\n".encode()
