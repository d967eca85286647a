"""The client against a real serve: outcomes, typed errors, idempotency
keys, sync and asyncio; and its rules on answers it is given."""

import asyncio
import uuid

import pytest

import redstage
from redstage import _rules


def order(qty, amount, sku="A1", payer="alice"):
    return [
        redstage.Step("inventory", {"op": "deduct", "sku": sku, "qty": qty}),
        redstage.Step("payments", {"op": "transfer", "from": payer, "to": "shop", "amount": amount}),
    ]


def levels(client, sku, payer):
    got = client.submit(
        [
            redstage.Step("inventory", {"op": "levels", "skus": [sku]}),
            redstage.Step("payments", {"op": "balances", "accounts": [payer]}),
        ],
        idempotency_key=None,
    )
    return got.outputs[0][sku], got.outputs[1][payer]


def stock(client, sku, qty, payer, amount):
    """Fresh stock and funds under names of this test's own."""
    client.submit(
        [
            redstage.Step("inventory", {"op": "restock", "sku": sku, "qty": qty}),
            redstage.Step("payments", {"op": "deposit", "account": payer, "amount": amount}),
        ]
    ).raise_for_abort()


@pytest.fixture
def client(servers):
    with redstage.Client(servers) as c:
        yield c


@pytest.fixture
def names():
    tag = uuid.uuid4().hex[:8]
    return f"sku-{tag}", f"payer-{tag}"


def test_an_order_commits_with_each_steps_output(client, names):
    sku, payer = names
    stock(client, sku, 10, payer, 100)
    placed = client.submit(order(2, 30, sku, payer))
    assert placed.committed and placed.status == "committed"
    assert placed.outputs == [
        {"sku": sku, "taken": 2},
        {"amount": 30, "from": payer, "to": "shop"},
    ]
    assert placed.resends == []
    assert uuid.UUID(placed.idempotency_key)
    assert levels(client, sku, payer) == (8, 70)
    looked_up = client.get(placed.id)
    assert (looked_up.id, looked_up.status, looked_up.outputs) == (placed.id, "committed", None)


def test_a_business_abort_is_an_outcome_and_changes_nothing(client, names):
    sku, payer = names
    stock(client, sku, 10, payer, 100)
    refused = client.submit(order(1, 500, sku, payer))
    assert refused.aborted
    assert (refused.abort.step, refused.abort.participant, refused.abort.code) == (
        1,
        "payments",
        "insufficient_funds",
    )
    with pytest.raises(redstage.TransactionAborted) as raised:
        refused.raise_for_abort()
    assert raised.value.code == "insufficient_funds"
    assert levels(client, sku, payer) == (10, 100)


def test_errors_are_typed_by_code(client):
    with pytest.raises(redstage.UnknownParticipant) as raised:
        client.submit([redstage.Step("nobody", {})])
    assert (raised.value.status, raised.value.code) == (400, "unknown_participant")
    assert "nobody" in raised.value.message
    assert isinstance(raised.value, redstage.BadRequest)
    with pytest.raises(redstage.BadIdempotencyKey):
        client.submit(order(1, 1), idempotency_key="k" * 1000)
    with pytest.raises(ValueError):
        client.submit([])
    assert client.get(str(uuid.uuid4())) is None
    assert client.get("not-a-transaction-id") is None


def test_an_unknown_code_is_still_an_api_error():
    error = redstage.error_from(418, {"error": {"code": "teapot", "message": "short and stout"}})
    assert type(error) is redstage.ApiError
    assert (error.status, error.code, error.message) == (418, "teapot", "short and stout")
    error = redstage.error_from(502, "<html>bad gateway</html>")
    assert (type(error), error.code) == (redstage.ApiError, "http_502")


def test_one_key_is_one_application(client, names):
    sku, payer = names
    stock(client, sku, 10, payer, 100)
    key = f"order-{uuid.uuid4()}"
    first = client.submit(order(2, 30, sku, payer), idempotency_key=key)
    again = client.submit(order(2, 30, sku, payer), idempotency_key=key)
    assert (again.id, again.status, again.outputs) == (first.id, first.status, first.outputs)
    assert levels(client, sku, payer) == (8, 70)
    with pytest.raises(redstage.IdempotencyKeyReused):
        client.submit(order(3, 30, sku, payer), idempotency_key=key)


def test_each_call_is_a_new_logical_request(client, names):
    sku, payer = names
    stock(client, sku, 10, payer, 100)
    first = client.submit(order(1, 10, sku, payer))
    second = client.submit(order(1, 10, sku, payer))
    assert first.idempotency_key != second.idempotency_key
    assert first.id != second.id
    assert levels(client, sku, payer) == (8, 80)


def test_the_asyncio_client_runs_orders_at_once(servers, names):
    sku, payer = names

    async def main():
        async with redstage.AsyncClient(servers) as client:
            await client.submit(
                [
                    redstage.Step("inventory", {"op": "restock", "sku": sku, "qty": 20}),
                    redstage.Step("payments", {"op": "deposit", "account": payer, "amount": 100}),
                ]
            )
            placed = await asyncio.gather(*(client.submit(order(1, 5, sku, payer)) for _ in range(16)))
            assert all(p.committed for p in placed)
            assert len({p.id for p in placed}) == 16
            with pytest.raises(redstage.UnknownParticipant):
                await client.submit([redstage.Step("nobody", {})])
            assert (await client.get(placed[0].id)).status == "committed"
            left = await client.submit(
                [
                    redstage.Step("inventory", {"op": "levels", "skus": [sku]}),
                    redstage.Step("payments", {"op": "balances", "accounts": [payer]}),
                ]
            )
            assert left.outputs == [{sku: 4}, {payer: 20}]

    asyncio.run(main())


def test_a_token_goes_with_every_request(servers, monkeypatch):
    # The suite's serve takes no token: one sent is ignored, but it is sent.
    monkeypatch.setenv("REDSTAGE_TOKEN", "from-the-environment")
    with redstage.Client(servers) as client:
        assert client._http.headers["authorization"] == "Bearer from-the-environment"
        assert client.ready()[0]


# The rules themselves, on answers given to them.


def policy(key="k", **limits):
    return _rules.Policy(redstage.Limits(**limits), key)


def test_overloaded_waits_what_retry_after_says():
    p = policy()
    p.sent()
    body = {"error": {"code": "overloaded", "message": "busy"}}
    action = p.answered(503, body, "2")
    assert action == _rules.Wait("overloaded", 2.0)
    assert p.answered(503, body, None) == _rules.Wait("overloaded", 1.0)


def test_outcome_unknown_is_looked_up_before_any_resend():
    p = policy()
    p.sent()
    body = {"error": {"code": "outcome_unknown", "message": "m", "id": "abc"}}
    assert p.answered(503, body, None) == _rules.Resolve("abc")
    # With a key, a resend after the lookup returns the stored outcome.
    committed = redstage.Transaction("abc", "committed")
    assert p.resolved("abc", committed) == _rules.Wait("outcome_unknown:committed", 0.0)
    # Without one, the lookup's outcome is the answer, and nothing is resent.
    p = policy(key=None)
    assert p.resolved("abc", committed) == _rules.Done(committed)
    action = p.resolved("abc", None)
    assert isinstance(action, _rules.Fail) and isinstance(action.error, redstage.OutcomeUnknown)
    assert action.error.id == "abc"


def test_a_lost_answer_is_resent_only_with_a_key():
    lost = ConnectionResetError("reset")
    action = policy().unreachable(lost, sent=True)
    assert isinstance(action, _rules.Wait) and action.failover and action.reason == "answer_lost"
    action = policy(key=None).unreachable(lost, sent=True)
    assert isinstance(action, _rules.Fail) and isinstance(action.error, redstage.OutcomeUnknown)
    action = policy(key=None).unreachable(lost, sent=False)
    assert isinstance(action, _rules.Wait) and action.reason == "unreachable"


def test_every_wait_is_bounded():
    p = policy(attempts_max=2)
    body = {"error": {"code": "store_unavailable", "message": "down"}}
    p.sent()
    assert isinstance(p.answered(503, body, None), _rules.Wait)
    p.sent()
    action = p.answered(503, body, None)
    assert isinstance(action, _rules.Fail) and isinstance(action.error, redstage.StoreUnavailable)
    p = policy(deadline_s=0.5)
    p.sent()
    action = p.answered(503, {"error": {"code": "overloaded", "message": "busy"}}, "1")
    assert isinstance(action, _rules.Fail) and isinstance(action.error, redstage.Overloaded)


def test_errors_the_rules_do_not_retry_are_raised_at_once():
    p = policy()
    p.sent()
    action = p.answered(400, {"error": {"code": "unknown_participant", "message": "m"}}, None)
    assert isinstance(action, _rules.Fail) and isinstance(action.error, redstage.UnknownParticipant)
    p = policy(key=None)
    p.sent()
    action = p.answered(409, {"error": {"code": "in_flight", "message": "m"}}, None)
    assert isinstance(action, _rules.Fail) and isinstance(action.error, redstage.InFlight)
