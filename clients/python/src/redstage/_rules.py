"""The API's retry rules, written once for the sync and the asyncio client.

A request is sent, and its answer (or the failure to get one) is turned by
:meth:`Policy.next` into one of: the outcome, an error to raise, a wait and
a resend, or a lookup of an ``outcome_unknown`` transaction first. The
loops of :mod:`redstage.client` and :mod:`redstage.aio` only carry these
out, with blocking or asyncio I/O.

The rules (see the HTTP API's docs):

- every logical request carries one idempotency key, generated here unless
  the caller gives one, and every resend of it carries the same key, so the
  server applies it at most once and answers a resend with the first outcome;
- ``503 overloaded`` touched nothing: resend after ``Retry-After``;
- ``503 store_unavailable`` applied nothing: resend after a backoff;
- ``409 in_flight``: the first request with this key still runs: resend
  after ``Retry-After`` (or a backoff) and get its outcome;
- ``503 outcome_unknown`` with an id: look the id up until it is decided
  (``committed`` or ``aborted``) before anything is resent; then resend
  with the same key, which answers the stored outcome (with the steps'
  outputs) or, if the first was rolled back, runs it again;
- a lost connection after the request was sent is an unknown outcome with
  no id: resend with the same key (to the next server, if several);
- without a key (``idempotency_key=None``), nothing that may have applied
  is ever resent: an ``outcome_unknown`` is answered by the lookup's
  outcome, or raised when the lookup cannot decide it.

Every wait is bounded: ``attempts_max`` sends and ``deadline_s`` in all.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

from . import errors

#: Generate an idempotency key per logical request (the default).
AUTO = "auto"


@dataclass(frozen=True)
class Step:
    """One step: a participant's name and its input (any JSON value)."""

    participant: str
    input: Any = None

    def to_json(self) -> Dict[str, Any]:
        return {"participant": self.participant, "input": self.input}


@dataclass(frozen=True)
class Abort:
    """Why a transaction aborted: the step, its participant, the code (the
    participant's own, or the host's: ``conflict``, ``limit_exceeded``, ...)."""

    step: int
    participant: str
    code: str
    message: str
    limit: Optional[str] = None

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Abort":
        return cls(
            step=int(body.get("step", 0)),
            participant=str(body.get("participant", "")),
            code=str(body.get("code", "")),
            message=str(body.get("message", "")),
            limit=body.get("limit"),
        )


@dataclass(frozen=True)
class Resend:
    """One resend the client made, and why."""

    reason: str
    after_s: float


@dataclass
class Transaction:
    """A transaction's outcome: ``status`` is ``committed`` or ``aborted``
    (or, from a lookup, ``in_doubt``); ``outputs`` the steps' outputs in
    order (``None`` when only a lookup answered, which carries none)."""

    id: str
    status: str
    attempts: Optional[int] = None
    outputs: Optional[List[Any]] = None
    abort: Optional[Abort] = None
    idempotency_key: Optional[str] = None
    #: What the client resent before this answer, in order.
    resends: List[Resend] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        return self.status == "committed"

    @property
    def aborted(self) -> bool:
        return self.status == "aborted"

    def raise_for_abort(self) -> "Transaction":
        """Raises :class:`~redstage.TransactionAborted` if aborted; else self."""
        if self.aborted:
            raise errors.TransactionAborted(self)
        return self

    @classmethod
    def from_json(cls, body: Dict[str, Any], key: Optional[str] = None) -> "Transaction":
        steps = body.get("steps")
        abort = body.get("abort")
        return cls(
            id=str(body["id"]),
            status=str(body["status"]),
            attempts=body.get("attempts"),
            outputs=[s.get("output") for s in steps] if isinstance(steps, list) else None,
            abort=Abort.from_json(abort) if isinstance(abort, dict) else None,
            idempotency_key=key,
        )


StepLike = Union[Step, Dict[str, Any]]


def request_body(steps: Sequence[StepLike], key: Optional[str]) -> Dict[str, Any]:
    if isinstance(steps, (str, bytes)) or not steps:
        raise ValueError("a transaction needs a non-empty sequence of steps")
    body: Dict[str, Any] = {
        "steps": [s.to_json() if isinstance(s, Step) else dict(s) for s in steps]
    }
    if key is not None:
        body["idempotency_key"] = key
    return body


def new_key(idempotency_key: Optional[str]) -> Optional[str]:
    return str(uuid.uuid4()) if idempotency_key == AUTO else idempotency_key


def retry_after(header: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds (only the delta-seconds form is sent)."""
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Limits:
    """The client's bounds, each named with its unit."""

    #: One HTTP exchange: connecting, sending and reading the answer.
    timeout_s: float = 30.0
    #: All the sends, waits and lookups of one logical request together.
    deadline_s: float = 120.0
    #: Sends of one logical request, the first included.
    attempts_max: int = 20
    #: First backoff after a failure that names no wait (doubles, jittered).
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0
    #: Between lookups of an ``outcome_unknown`` transaction still in doubt.
    lookup_interval_s: float = 0.25


# What the loop does next.
@dataclass(frozen=True)
class Done:
    transaction: Transaction


@dataclass(frozen=True)
class Fail:
    error: Exception


@dataclass(frozen=True)
class Wait:
    reason: str
    after_s: float
    #: Try the next server (the last one could not be reached).
    failover: bool = False


@dataclass(frozen=True)
class Resolve:
    """Look transaction ``id`` up until it is decided, then :meth:`Policy.resolved`."""

    id: str


Action = Union[Done, Fail, Wait, Resolve]


class Policy:
    """The state of one logical request: its key, sends and deadline."""

    def __init__(self, limits: Limits, key: Optional[str]) -> None:
        self.limits = limits
        self.key = key
        self.sends = 0
        self.started = time.monotonic()
        self.resends: List[Resend] = []
        self._backoff_s = limits.backoff_base_s

    def remaining_s(self) -> float:
        return self.limits.deadline_s - (time.monotonic() - self.started)

    def sent(self) -> None:
        self.sends += 1

    def _wait(self, reason: str, after_s: Optional[float], last: Exception, failover: bool = False) -> Action:
        if after_s is None:
            after_s = random.uniform(0, self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, self.limits.backoff_max_s)
        if self.sends >= self.limits.attempts_max or after_s >= self.remaining_s():
            return Fail(last)
        self.resends.append(Resend(reason, after_s))
        return Wait(reason, after_s, failover)

    def answered(self, status: int, body: Any, retry_after_header: Optional[str]) -> Action:
        if status == 200 and isinstance(body, dict) and "status" in body:
            transaction = Transaction.from_json(body, self.key)
            transaction.resends = list(self.resends)
            return Done(transaction)
        error = errors.error_from(status, body, retry_after(retry_after_header))
        if isinstance(error, errors.Overloaded):
            after = error.retry_after_s if error.retry_after_s is not None else 1.0
            return self._wait("overloaded", after, error)
        if isinstance(error, errors.StoreUnavailable):
            return self._wait("store_unavailable", None, error)
        if isinstance(error, errors.InFlight) and self.key is not None:
            return self._wait("in_flight", error.retry_after_s, error)
        if isinstance(error, errors.OutcomeUnknown) and error.id:
            return Resolve(error.id)
        return Fail(error)

    def unreachable(self, exc: Exception, sent: bool) -> Action:
        """The server could not be reached (``sent`` False: nothing was sent,
        so nothing can have applied) or the answer was lost after sending."""
        if not sent:
            return self._wait("unreachable", None, errors.RedstageError(f"unreachable: {exc}"), failover=True)
        unknown = errors.OutcomeUnknown(0, "outcome_unknown", f"the answer was lost: {exc}")
        if self.key is None:
            return Fail(unknown)
        return self._wait("answer_lost", None, unknown, failover=True)

    def resolved(self, id: str, looked_up: Optional[Transaction]) -> Action:
        """After the lookups of ``outcome_unknown`` transaction ``id``:
        ``looked_up`` is it decided, or ``None`` if the lookups could not tell."""
        last = errors.OutcomeUnknown(503, "outcome_unknown", f"transaction {id} could not be decided", id)
        status = looked_up.status if looked_up else "unknown"
        if self.key is not None:
            # The same key: the stored outcome, or a new run if the first
            # was rolled back. Never a second application.
            return self._wait(f"outcome_unknown:{status}", 0.0, last)
        if looked_up is not None and looked_up.status in ("committed", "aborted"):
            looked_up.resends = list(self.resends)
            return Done(looked_up)
        return Fail(last)
