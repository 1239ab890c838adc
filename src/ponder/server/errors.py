"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Everything the server rejects goes through ApiError, so a client library that knows
OpenAI's errors (the `openai` package raises BadRequestError, AuthenticationError,
RateLimitError...) reads ours the same way.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request the server answers with an error status and OpenAI's error JSON."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class LimitError(ApiError):
    """Over one of the server's limits; the message names the limit and its flag."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 code: str = "limit_exceeded"):
        super().__init__(status, message, param=param, code=code,
                         type="rate_limit_error" if status == 429 else "invalid_request_error")


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def deadline_error(seconds: float) -> ApiError:
    return ApiError(408, f"the request was not done within this server's deadline of "
                    f"{seconds:g} s per request (max_request_seconds, --max-request-seconds)",
                    code="request_timeout")


class Stopped(Exception):
    """A request's work ended early: its client went away or its deadline passed."""
