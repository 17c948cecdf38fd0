"""LeaseKeeper: renews while the block runs, stops with it, survives a failing
renewal, and gives up once the lease is someone else's."""

from __future__ import annotations

import time

from shared.core.leases import LeaseKeeper


def test_renews_while_working_and_stops_after():
    calls: list[float] = []
    with LeaseKeeper(lambda: calls.append(time.monotonic()) or True, every=0.05):
        time.sleep(0.3)
    count = len(calls)
    assert count >= 3
    time.sleep(0.15)
    assert len(calls) == count


def test_a_failing_renewal_is_tried_again():
    outcomes = iter([ConnectionError("db down"), True, True, True, True, True, True, True])

    def renew() -> bool:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with LeaseKeeper(renew, every=0.05) as keeper:
        time.sleep(0.3)
    assert not keeper.lost


def test_a_lease_taken_over_is_not_renewed_again():
    calls: list[int] = []

    def renew() -> bool:
        calls.append(1)
        return False

    with LeaseKeeper(renew, every=0.05) as keeper:
        time.sleep(0.3)
    assert keeper.lost and len(calls) == 1
