"""A client for redstage's HTTP API that carries the API's rules.

::

    import redstage

    with redstage.Client("http://127.0.0.1:7878") as client:
        order = client.submit([
            redstage.Step("inventory", {"op": "deduct", "sku": "A1", "qty": 2}),
            redstage.Step("payments", {"op": "transfer", "from": "alice", "to": "shop", "amount": 30}),
        ])
        print(order.status, order.outputs)

``redstage.AsyncClient`` is the same with ``await``.
"""

from ._rules import AUTO, Abort, Limits, Resend, Step, Transaction
from .aio import AsyncClient
from .client import Client
from .errors import *  # noqa: F401,F403 (the typed errors, one per code)
from .errors import ApiError, RedstageError, TransactionAborted, error_from

__all__ = [
    "AUTO",
    "Abort",
    "ApiError",
    "AsyncClient",
    "Client",
    "Limits",
    "RedstageError",
    "Resend",
    "Step",
    "Transaction",
    "TransactionAborted",
    "error_from",
]
