"""Fetching a remote video for ``dfrt serve --allow-remote-media``: ``http(s)`` only, within a size and one
deadline for the whole fetch (name lookup, connection, headers, body: a watchdog shuts the socket at the
deadline, so a server trickling a byte a second cannot hold a worker), through at most :data:`MAX_REDIRECTS`
redirects, each target checked again, and, unless private media are allowed, never to a loopback,
link-local, private or otherwise non-global address (the address checked is the one connected to: a name
cannot be rebound in between)."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse

from dfrt.serve.errors import ApiError, reason, shown
from dfrt.serve.schema import MediaRef

MAX_REDIRECTS = 5  # redirects followed for one remote video, each target checked again
_CHUNK = 1 << 20


class _Pinned(http.client.HTTPConnection):
    """An HTTP(S) connection to one checked address, named by its host (the Host header, TLS name check)."""

    def __init__(self, host: str, port: int, address: str, tls: bool, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address, self.tls = address, tls

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        if self.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


def fetch(
    url: str, ref: MediaRef, end: float, max_bytes: int, allow_private: bool, limit: float
) -> tuple[bytes, list[str]]:
    """The body and content type of ``url`` (following at most :data:`MAX_REDIRECTS` redirects, each target
    checked), all by ``end``: a watchdog shuts the connection then, whatever the server trickles."""
    late = ApiError(504, f"fetching the remote video took over {limit:g} s (--remote-timeout)", ref.param)
    for _ in range(MAX_REDIRECTS + 1):
        parts = _remote_target(url, ref)
        host, tls = parts.hostname or "", parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        address = _checked_address(host, port, ref, allow_private, end)
        left = end - time.monotonic()
        if left <= 0:
            raise late
        connection = _Pinned(host, port, address, tls, left)
        expired = threading.Event()

        def expire(connection: _Pinned = connection, expired: threading.Event = expired) -> None:
            expired.set()
            with contextlib.suppress(OSError, AttributeError):
                connection.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

        watchdog = threading.Timer(left, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request(
                "GET", target, headers={"User-Agent": "dfrt-serve", "Accept-Encoding": "identity"}
            )
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location") or ""
                if not location:
                    raise ApiError(
                        400, f"the remote server answered {response.status} without a Location", ref.param
                    )
                url = urllib.parse.urljoin(url, location)
                continue
            if response.status != 200:
                raise ApiError(
                    400, f"the remote video could not be fetched (HTTP {response.status})", ref.param
                )
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise ApiError(
                    413, f"the remote video is {int(length)} bytes, the limit is {max_bytes}", ref.param
                )
            chunks, size = [], 0
            while chunk := response.read1(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(413, f"the remote video is over the limit of {max_bytes} bytes", ref.param)
                if time.monotonic() > end:
                    raise late
                chunks.append(chunk)
            if expired.is_set() or time.monotonic() > end:
                raise late
            kind = (response.headers.get_content_type() or "").split("/")
            return b"".join(chunks), kind
        except ApiError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            if expired.is_set() or time.monotonic() > end:
                raise late from None
            raise ApiError(400, f"the remote video could not be fetched ({reason(e)})", ref.param) from None
        finally:
            watchdog.cancel()
            connection.close()
    raise ApiError(
        400, f"the remote video could not be fetched (more than {MAX_REDIRECTS} redirects)", ref.param
    )


def _remote_target(url: str, ref: MediaRef) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises for a bad port)
    except ValueError:
        raise ApiError(400, f"not a valid URL: {shown(url)}", ref.param) from None
    if parts.scheme.lower() not in ("http", "https"):
        scheme = parts.scheme[:20] or "relative"
        message = f"the remote video led to a {scheme!r} URL: only http(s) URLs are fetched"
        raise ApiError(400, message, ref.param, "remote_media_refused")
    if not parts.hostname:
        raise ApiError(400, f"a remote URL needs a host: {shown(url)}", ref.param)
    return parts._replace(scheme=parts.scheme.lower())


def _checked_address(host: str, port: int, ref: MediaRef, allow_private: bool, end: float) -> str:
    """The address to connect to for ``host``: the first it resolves to, refused (403) unless it is a global
    address or private ones are allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ApiError(400, f"the remote video could not be fetched ({reason(e)})", ref.param) from None
    if time.monotonic() > end:
        raise ApiError(504, "fetching the remote video took over its time (name lookup)", ref.param)
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if allow_private or _public(address):
            return address
        raise ApiError(
            403, f"the remote host {host[:60]!r} is a loopback, link-local or private address ({address}); "
            "start the server with --allow-private-media to allow it", ref.param, "remote_media_refused",
        )  # fmt: skip
    raise ApiError(400, f"the remote host {host[:60]!r} has no address", ref.param)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
