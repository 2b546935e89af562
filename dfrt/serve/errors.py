"""HTTP errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``); dfrt's errors mapped.

Nothing here imports a web framework: :class:`ApiError` is raised by request parsing and media resolution,
and the app turns it into a JSON response. An unexpected exception becomes a generic 500 whose details are
logged server-side only.
"""

from __future__ import annotations

from typing import Any

from dfrt.errors import BackendError, ConfigError, DfrtError, InputError

_SHOWN = 80  # characters of a client's reference repeated in an error (never its data)

# status -> OpenAI's error type for it
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """A request that gets an error response: HTTP status, one clear message, the offending parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class Cancelled(Exception):
    """Raised from a generation callback to stop it: the client went away, or the request timed out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def from_dfrt(error: DfrtError, param: str | None = None, names: dict[str, str] | None = None) -> ApiError:
    """A :class:`DfrtError` raised while serving a request, as the client should see it.

    A bad video or question (:class:`InputError`) is 422 when the bytes arrived but cannot be used as a
    video, otherwise 400; a bad option (:class:`ConfigError`) is 400; a backend failure is a 500 whose
    message is dfrt's one line (it names no server path the client did not send)."""
    message = str(error)
    for server_name, client_name in (names or {}).items():  # never show the server's temporary paths
        message = message.replace(server_name, client_name)
    if isinstance(error, InputError):
        unusable = any(s in message for s in ("cannot be opened", "no frame could be decoded", "empty file"))
        code = "invalid_video" if unusable else None
        return ApiError(422 if unusable else 400, message, param or "messages", code)
    if isinstance(error, ConfigError):
        return ApiError(400, message, param)
    if isinstance(error, BackendError):
        return ApiError(500, "the model failed on this request", None, "backend_error")
    return ApiError(400, message, param)


def shown(name: str) -> str:
    """A client's reference as an error repeats it: short, on one line."""
    text = " ".join(name[: _SHOWN + 1].split())
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def reason(error: BaseException) -> str:
    """An exception's reason as an error message repeats it: one line, at most 200 characters."""
    cause = getattr(error, "reason", None) or error
    return " ".join(str(cause).split())[:200]
