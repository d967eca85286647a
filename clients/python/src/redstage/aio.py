"""The asyncio client: the same rules as :class:`redstage.Client`."""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Sequence, Tuple

import httpx

from . import _rules, errors
from ._rules import AUTO, Limits, Policy, StepLike, Transaction
from .client import _NOT_SENT, Servers, _headers, _lookup_answer, _parse, _servers


class AsyncClient:
    """:class:`redstage.Client`, with ``async`` methods."""

    def __init__(
        self,
        servers: Servers,
        token: Optional[str] = None,
        limits: Limits = Limits(),
    ) -> None:
        self.servers = _servers(servers)
        self.limits = limits
        self._server = 0
        self._http = httpx.AsyncClient(headers=_headers(token), timeout=limits.timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    @property
    def server(self) -> str:
        return self.servers[self._server]

    async def submit(
        self, steps: Sequence[StepLike], idempotency_key: Optional[str] = AUTO
    ) -> Transaction:
        """See :meth:`redstage.Client.submit`."""
        policy = Policy(self.limits, _rules.new_key(idempotency_key))
        body = _rules.request_body(steps, policy.key)
        while True:
            policy.sent()
            try:
                response = await self._http.post(f"{self.server}/v1/transactions", json=body)
                action = policy.answered(
                    response.status_code, _parse(response), response.headers.get("retry-after")
                )
            except httpx.TransportError as e:
                action = policy.unreachable(e, sent=not isinstance(e, _NOT_SENT))
            if isinstance(action, _rules.Resolve):
                action = policy.resolved(action.id, await self._resolve(action.id, policy))
            if isinstance(action, _rules.Done):
                return action.transaction
            if isinstance(action, _rules.Fail):
                raise action.error
            if action.failover:
                self._server = (self._server + 1) % len(self.servers)
            await asyncio.sleep(action.after_s)

    async def _resolve(self, id: str, policy: Policy) -> Optional[Transaction]:
        while policy.remaining_s() > 0:
            try:
                found = await self.get(id)
            except (httpx.TransportError, errors.StoreUnavailable):
                self._server = (self._server + 1) % len(self.servers)
                found = Transaction(id, "in_doubt")
            if found is None or found.status != "in_doubt":
                return found
            await asyncio.sleep(min(self.limits.lookup_interval_s, max(policy.remaining_s(), 0)))
        return None

    async def get(self, id: str) -> Optional[Transaction]:
        """See :meth:`redstage.Client.get`."""
        response = await self._http.get(f"{self.server}/v1/transactions/{id}")
        return _lookup_answer(response.status_code, _parse(response))

    async def participants(self) -> Any:
        response = await self._http.get(f"{self.server}/v1/participants")
        body = _parse(response)
        if response.status_code != 200:
            raise errors.error_from(response.status_code, body)
        return body

    async def ready(self) -> Tuple[bool, Any]:
        response = await self._http.get(f"{self.server}/v1/ready")
        return response.status_code == 200, _parse(response)
