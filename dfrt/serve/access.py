"""One access-log line per request on stderr: client, method, path, status, seconds (never the body, the
query string or a header), written when the response has ended, streams included."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

ACCESS_LOGGER = "dfrt.serve.access"


class AccessLog:
    """ASGI middleware: logs each HTTP request to ``dfrt.serve.access`` at INFO when its response ends."""

    def __init__(self, app: Any, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def sending(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 0))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = (scope.get("client") or ("-",))[0]
            path = "".join(c if c.isprintable() else "?" for c in str(scope.get("path", ""))[:200])
            self.logger.info(
                "%s %s %s %s %.3fs", client, scope.get("method", "-"), path, status[0] or "-",
                time.perf_counter() - start,
            )  # fmt: skip


def stderr_access_log() -> logging.Logger:
    """The access logger writing ``dfrt: serve: ...`` lines to stderr whatever the root level (what
    ``dfrt serve`` prints by default, as llama-server and uvicorn do)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(getattr(h, "dfrt_access", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("dfrt: serve: %(message)s"))
        handler.dfrt_access = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger
