"""Which ``Host`` header names the server answers: the guard against DNS rebinding.

A web page in the user's browser can reach a loopback server through a name it controls (rebound to
127.0.0.1 after the page loaded); the browser then sends that name as ``Host``. The server answers only
the names of the address it is bound to, as llama-server, Jupyter and Vite do: ``localhost`` and
``*.localhost``, any IP address (a page cannot rebind an IP literal), the bound name (``--host NAME``), this
machine's host name when bound beyond loopback, and what ``--allowed-hosts`` adds (``NAME``, ``.domain``
for it and its subdomains, ``*`` for any). A request without a ``Host`` header (HTTP/1.0) is answered.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from dfrt.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)
MAX_NAME = 253  # a DNS name's length


def host_name(header: str) -> str | None:
    """The name in a ``Host`` header (lower-case; no port, brackets or trailing dot); None if malformed."""
    text = header.strip().lower()
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else "x"
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return text[1:end]
    if text.count(":") > 1:  # a bare IPv6 address (no port possible)
        return text
    name, sep, port = text.partition(":")
    if sep and not port.isdigit():
        return None
    name = name.rstrip(".")
    return name if name and len(name) <= MAX_NAME else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_allowed_hosts(names: Sequence[str]) -> tuple[str, ...]:
    """``--allowed-hosts`` entries, normalised (one :class:`ConfigError` naming a bad one)."""
    out = []
    for raw in names:
        name = raw.strip().lower().rstrip(".") if isinstance(raw, str) else ""
        body = name.removeprefix(".")
        if name != "*" and (
            not body or len(body) > MAX_NAME or not all(c.isalnum() or c in "-._:[]" for c in body)
        ):
            raise ConfigError(
                f"--allowed-hosts {str(raw)[:60]!r}: give host names (NAME, .domain for it and its "
                "subdomains, * for any)"
            )
        out.append(name)
    return tuple(out)


class HostCheck:
    """Decides whether a request's ``Host`` header names this server."""

    def __init__(self, bind: str, allowed: Sequence[str] = ()) -> None:
        allowed = check_allowed_hosts(allowed)
        self.any = "*" in allowed
        bound = bind.strip("[]").lower().rstrip(".")
        names = set(LOOPBACK_NAMES) | {a for a in allowed if not a.startswith(".")}
        if bound and not _is_ip(bound):
            names.add(bound)
        if bound not in ("localhost", "127.0.0.1", "::1"):  # reachable from other machines: by its name too
            names.add(socket.gethostname().lower().rstrip("."))
        self.names = frozenset(names)
        self.suffixes = (".localhost", *(a for a in allowed if a.startswith(".")))
        self.domains = frozenset(a[1:] for a in allowed if a.startswith("."))

    def allows(self, header: str | None) -> bool:
        if self.any or header is None:
            return True
        name = host_name(header)
        if name is None:
            return False
        return _is_ip(name) or name in self.names or name in self.domains or name.endswith(self.suffixes)

    @staticmethod
    def refusal(header: str) -> str:
        shown = " ".join(header[:80].split())
        return (
            f"Host {shown!r} is not a name of this server (a guard against DNS rebinding): use "
            "localhost or its IP address, or start it with --allowed-hosts NAME"
        )
