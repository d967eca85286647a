"""The blocking client."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import httpx

from . import _rules, errors
from ._rules import AUTO, Limits, Policy, StepLike, Transaction

Servers = Union[str, Sequence[str]]

#: Failures before any byte of the request left: nothing can have applied.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _servers(servers: Servers) -> List[str]:
    listed = [servers] if isinstance(servers, str) else list(servers)
    if not listed:
        raise ValueError("give at least one server URL")
    return [s.rstrip("/") for s in listed]


def _headers(token: Optional[str]) -> Dict[str, str]:
    token = token if token is not None else os.environ.get("REDSTAGE_TOKEN")
    headers = {"content-type": "application/json", "user-agent": "redstage-python/0.1"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


def _parse(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _lookup_answer(status: int, body: Any) -> Optional[Transaction]:
    """A lookup's answer: the transaction, ``None`` for 404 (unknown)."""
    if status == 200:
        return Transaction.from_json(body)
    error = errors.error_from(status, body)
    if isinstance(error, errors.UnknownTransaction):
        return None
    raise error


class Client:
    """A client of one redstage deployment.

    ``servers`` is the base URL of a host, or several hosts of the same
    deployment (tried in turn when one cannot be reached). ``token`` is a
    bearer token (default: ``$REDSTAGE_TOKEN``). ``limits`` bounds every
    wait (see :class:`redstage.Limits`).
    """

    def __init__(
        self,
        servers: Servers,
        token: Optional[str] = None,
        limits: Limits = Limits(),
    ) -> None:
        self.servers = _servers(servers)
        self.limits = limits
        self._server = 0
        self._http = httpx.Client(headers=_headers(token), timeout=limits.timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def server(self) -> str:
        return self.servers[self._server]

    def submit(
        self, steps: Sequence[StepLike], idempotency_key: Optional[str] = AUTO
    ) -> Transaction:
        """Runs a transaction and returns its outcome (committed or aborted).

        Each call is one logical request: it gets a new idempotency key
        (or ``idempotency_key``, to carry one across calls or processes;
        ``None`` for none), and every resend the API's rules call for
        carries it. Raises a typed :class:`redstage.ApiError` otherwise.
        """
        policy = Policy(self.limits, _rules.new_key(idempotency_key))
        body = _rules.request_body(steps, policy.key)
        while True:
            policy.sent()
            try:
                response = self._http.post(f"{self.server}/v1/transactions", json=body)
                action = policy.answered(
                    response.status_code, _parse(response), response.headers.get("retry-after")
                )
            except httpx.TransportError as e:
                action = policy.unreachable(e, sent=not isinstance(e, _NOT_SENT))
            if isinstance(action, _rules.Resolve):
                action = policy.resolved(action.id, self._resolve(action.id, policy))
            if isinstance(action, _rules.Done):
                return action.transaction
            if isinstance(action, _rules.Fail):
                raise action.error
            if action.failover:
                self._server = (self._server + 1) % len(self.servers)
            time.sleep(action.after_s)

    def _resolve(self, id: str, policy: Policy) -> Optional[Transaction]:
        """Looks ``id`` up until it is decided (``None``: unknown to the
        server, or still in doubt at the deadline)."""
        while policy.remaining_s() > 0:
            try:
                found = self.get(id)
            except (httpx.TransportError, errors.StoreUnavailable):
                self._server = (self._server + 1) % len(self.servers)
                found = _rules.Transaction(id, "in_doubt")
            if found is None or found.status != "in_doubt":
                return found
            time.sleep(min(self.limits.lookup_interval_s, max(policy.remaining_s(), 0)))
        return None

    def get(self, id: str) -> Optional[Transaction]:
        """What is known of transaction ``id``: committed, aborted or
        in_doubt (no outputs: a lookup carries none); ``None`` if the server
        knows nothing of it."""
        response = self._http.get(f"{self.server}/v1/transactions/{id}")
        return _lookup_answer(response.status_code, _parse(response))

    def participants(self) -> Any:
        """The deployed participants, as ``GET /v1/participants`` lists them."""
        return self._call("GET", "/v1/participants")

    def ready(self) -> Tuple[bool, Any]:
        """Whether the host is ready, and what it says."""
        response = self._http.get(f"{self.server}/v1/ready")
        return response.status_code == 200, _parse(response)

    def _call(self, method: str, path: str) -> Any:
        response = self._http.request(method, f"{self.server}{path}")
        body = _parse(response)
        if response.status_code != 200:
            raise errors.error_from(response.status_code, body)
        return body
