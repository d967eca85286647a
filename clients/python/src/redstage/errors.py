"""Errors of the redstage API, one class per error code.

Every error answer of the API is ``{"error": {"code", "message"[, "id"]}}``
with a stable code; :func:`error_from` turns one into the class registered
for its code (an unknown code into :class:`ApiError` itself, with ``code``
set), so callers catch what they can act on::

    try:
        client.submit(steps)
    except redstage.UnknownParticipant as e:   # 400: fix the request
        ...
    except redstage.OutcomeUnknown as e:       # 503: look e.id up later
        ...

The client itself already handles what the API's rules say to retry
(``overloaded``, ``store_unavailable``, ``in_flight``, and ``outcome_unknown``
by lookup); these reach the caller only once its retry limits are spent.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type


class RedstageError(Exception):
    """Anything this client raises."""


class ApiError(RedstageError):
    """An error answer of the API.

    ``status`` is the HTTP status, ``code`` the stable error code,
    ``message`` what the server says to do, ``id`` the transaction an
    ``outcome_unknown`` names, ``retry_after_s`` the ``Retry-After`` header.
    """

    code: str = ""
    #: Whether the API's rules allow sending the same request again.
    retryable: bool = False

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        id: Optional[str] = None,
        retry_after_s: Optional[float] = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.id = id
        self.retry_after_s = retry_after_s


_BY_CODE: Dict[str, Type[ApiError]] = {}


def _code(code: str, retryable: bool = False):
    def register(cls: Type[ApiError]) -> Type[ApiError]:
        cls.code = code
        cls.retryable = retryable
        _BY_CODE[code] = cls
        return cls

    return register


class BadRequest(ApiError):
    """A 400: the request is wrong and sending it again will not help."""


@_code("malformed_json")
class MalformedJson(BadRequest):
    pass


@_code("empty_transaction")
class EmptyTransaction(BadRequest):
    pass


@_code("unknown_participant")
class UnknownParticipant(BadRequest):
    pass


@_code("too_many_steps")
class TooManySteps(BadRequest):
    pass


@_code("bad_idempotency_key")
class BadIdempotencyKey(BadRequest):
    pass


@_code("idempotency_key_reused")
class IdempotencyKeyReused(BadRequest):
    """The key was used before for other steps: a key names one request."""


@_code("bad_request")
class BadPathOrQuery(BadRequest):
    pass


@_code("unauthorized")
class Unauthorized(ApiError):
    """401: no token, or one the server does not know."""


@_code("forbidden")
class Forbidden(ApiError):
    """403: the token lacks the route's scope."""


@_code("not_found")
class NotFound(ApiError):
    pass


@_code("unknown_transaction")
class UnknownTransaction(ApiError):
    """404 on a lookup: never ran, read-only, or past its retention."""


@_code("method_not_allowed")
class MethodNotAllowed(ApiError):
    pass


@_code("body_too_large")
class BodyTooLarge(ApiError):
    pass


@_code("in_flight", retryable=True)
class InFlight(ApiError):
    """409: a request with the same idempotency key is still running."""


@_code("store_unavailable", retryable=True)
class StoreUnavailable(ApiError):
    """503: a store did not answer; provably nothing was applied."""


@_code("store_error")
class StoreError(ApiError):
    """503: a store answered what the protocol does not expect; nothing applied."""


@_code("overloaded", retryable=True)
class Overloaded(ApiError):
    """503: the host runs all it may; nothing was touched. See ``retry_after_s``."""


@_code("outcome_unknown")
class OutcomeUnknown(ApiError):
    """The outcome could not be confirmed: it may have committed.

    ``id`` names the transaction when the server answered one (look it up
    with ``client.get(id)``); it is ``None`` when the connection was lost
    before any answer.
    """


class TransactionAborted(RedstageError):
    """Raised by :meth:`Transaction.raise_for_abort`: the transaction aborted,
    cleanly, with ``abort`` saying which step and why (``abort.code``)."""

    def __init__(self, transaction: Any) -> None:
        abort = transaction.abort
        super().__init__(
            f"transaction {transaction.id} aborted at step {abort.step} "
            f"({abort.participant}): {abort.code}: {abort.message}"
        )
        self.transaction = transaction
        self.abort = abort
        self.code = abort.code


def error_from(
    status: int, body: Any, retry_after_s: Optional[float] = None
) -> ApiError:
    """The typed error for an error answer (``body`` parsed JSON, or text)."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        return ApiError(status, f"http_{status}", str(body)[:500], None, retry_after_s)
    code = str(detail.get("code", f"http_{status}"))
    cls = _BY_CODE.get(code, ApiError)
    return cls(status, code, str(detail.get("message", "")), detail.get("id"), retry_after_s)
