"""The tests run against a real `redstage serve` and real Redis, which the
workspace's Rust test `tests/python_client.rs` starts (with the example
participants `inventory` and `payments`, stock and funds seeded) before it
runs pytest here, passing:

- ``REDSTAGE_TEST_SERVERS``: the hosts' base URLs, comma-separated;
- ``REDSTAGE_TEST_SCENARIO``: for the tests of ``test_scenarios.py``, the
  one fault the Rust side has set up (a stalled store, a host to kill...);
- ``REDSTAGE_TEST_OUT``: a file for a scenario's outcome, which the Rust
  side then checks against Redis.

Run outside of it, the tests that need a server are skipped (and the Rust
side fails on any skipped test).
"""

import json
import os

import pytest


@pytest.fixture
def servers():
    listed = os.environ.get("REDSTAGE_TEST_SERVERS")
    if not listed:
        pytest.skip("no server: run through `cargo test -p redstage-tests --test python_client`")
    return listed.split(",")


@pytest.fixture
def scenario():
    """Skips a scenario test unless the Rust side set its fault up."""

    def needs(name):
        if os.environ.get("REDSTAGE_TEST_SCENARIO") != name:
            pytest.skip(f"scenario {name} is set up by tests/python_client.rs")

    return needs


@pytest.fixture
def report():
    """Writes a scenario's outcome for the Rust side to check."""

    def write(transaction):
        with open(os.environ["REDSTAGE_TEST_OUT"], "w") as out:
            json.dump(
                {
                    "id": transaction.id,
                    "status": transaction.status,
                    "outputs": transaction.outputs,
                    "resends": [r.reason for r in transaction.resends],
                },
                out,
            )

    return write
