"""Faults set up by tests/python_client.rs around one order placed here;
the Rust side checks afterwards, in Redis, that it was applied exactly as
often as the answer says (once if committed, never if aborted)."""

import threading

import redstage
from redstage import Step

ORDER = [
    Step("inventory", {"op": "deduct", "sku": "A1", "qty": 2}),
    Step("payments", {"op": "transfer", "from": "alice", "to": "shop", "amount": 30}),
]


def test_overloaded_is_retried_after_retry_after(servers, scenario, report):
    scenario("overloaded")
    # The host admits one transaction at a time and holds each a while:
    # of two orders sent together, one is answered `overloaded` first.
    placed = []
    with redstage.Client(servers) as client:
        threads = [threading.Thread(target=lambda: placed.append(client.submit(ORDER))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [p.status for p in placed] == ["committed", "committed"]
    reasons = [r.reason for p in placed for r in p.resends]
    assert "overloaded" in reasons, reasons
    assert all(r.after_s == 1.0 for p in placed for r in p.resends if r.reason == "overloaded")
    report(placed[0])


def test_stalled_store_is_resolved_by_lookup(servers, scenario, report):
    scenario("stalled_store")
    # The reply of the commit point is held past the store timeout: the host
    # answers outcome_unknown; the client looks the id up, then resends with
    # the same key and gets the stored outcome.
    with redstage.Client(servers) as client:
        placed = client.submit(ORDER)
    assert placed.committed, placed
    assert placed.outputs == [{"sku": "A1", "taken": 2}, {"amount": 30, "from": "alice", "to": "shop"}]
    reasons = [r.reason for r in placed.resends]
    assert reasons and reasons[0].startswith("outcome_unknown:"), reasons
    report(placed)


def test_killed_host_mid_request(servers, scenario, report):
    scenario("killed_host")
    # The first host is killed while it holds the order; the client resends
    # with the same key to the second, which answers the first's outcome or
    # runs it once the first's claim is over.
    with redstage.Client(servers, limits=redstage.Limits(timeout_s=60)) as client:
        placed = client.submit(ORDER)
    assert placed.committed, placed
    assert [r.reason for r in placed.resends][:1] == ["answer_lost"], placed.resends
    report(placed)
