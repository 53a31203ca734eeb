"""rehearsal/workload.py's bookkeeping: what counts as acknowledged, lost, violated, and how long a gap was.

The clients run against an in-memory bank that applies a transaction at COMMIT (and can be told to fail a
COMMIT, or to drop a committed row afterwards, as a lost write would), so the figures are checked against
what really happened.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rehearsal import workload as wl


class FakeBank:
    def __init__(self, accounts: int, initial: int) -> None:
        self.lock = threading.Lock()
        self.balances = {a: initial for a in range(1, accounts + 1)}
        self.rows: dict[str, tuple[int, int, int]] = {}
        self.fail_commit_every = 0  # every n-th COMMIT raises after applying nothing
        self.commit_then_lose_answer_every = 0  # every n-th COMMIT applies, then the answer is lost
        self.commits = 0
        self.refuse: set[str] = set()  # node addresses that refuse connections


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.result: list[tuple[Any, ...]] = []

    def execute(self, query: str, args: Any = None) -> None:
        bank = self.conn.bank
        if query.startswith("UPDATE accounts"):
            self.conn.pending.append(("update", args))
        elif query.startswith("INSERT INTO transfers"):
            self.conn.pending.append(("insert", args))
        elif query.startswith("SELECT id, src"):
            self.result = [(i, *r) for i, r in bank.rows.items()]
        elif query.startswith("SELECT id, balance"):
            self.result = list(bank.balances.items())

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.result


class FakeConnection:
    def __init__(self, bank: FakeBank) -> None:
        self.bank = bank
        self.pending: list[tuple[str, Any]] = []

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def commit(self) -> None:
        time.sleep(0.0005)  # a round trip: lets the other clients' threads run, as a real server does
        bank = self.bank
        with bank.lock:
            bank.commits += 1
            n = bank.commits
            if bank.fail_commit_every and n % bank.fail_commit_every == 0:
                self.pending = []
                raise wl_error(1213, "Deadlock found when trying to get lock")
            for kind, args in self.pending:
                if kind == "update":
                    delta, account = args
                    bank.balances[account] += delta
                else:
                    row_id, src, dst, amount, _node = args
                    bank.rows[row_id] = (src, dst, amount)
            self.pending = []
            if bank.commit_then_lose_answer_every and n % bank.commit_then_lose_answer_every == 0:
                raise wl_error(2013, "Lost connection to server during query")

    def rollback(self) -> None:
        self.pending = []

    def close(self) -> None:
        pass


class FakeDbError(Exception):
    pass


def wl_error(code: int, message: str) -> FakeDbError:
    return FakeDbError(code, message)


def fake_connect(bank: FakeBank) -> wl.ConnectFn:
    def connect(address: str) -> FakeConnection:
        if address in bank.refuse:
            raise wl_error(2003, f"Can't connect to server on '{address}'")
        return FakeConnection(bank)

    return connect  # type: ignore[return-value]


NODES = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]


def run(bank: FakeBank, **kwargs: Any) -> tuple[wl.BankWorkload, wl.WorkloadReport]:
    load = wl.BankWorkload(NODES, accounts=10, initial=100, connect=fake_connect(bank), seed=7,
                           pause_after_error=0.01, **{"duration": 5.0, "max_transfers": 300, **kwargs})
    load.run()
    return load, load.report(load.audit())


def test_a_clean_run_stops_at_its_count_with_nothing_lost_and_the_total_kept() -> None:
    bank = FakeBank(10, 100)
    load, report = run(bank)
    assert report.acknowledged >= 300 and report.acknowledged < 300 + len(NODES)  # bounded by count
    assert report.acknowledged_lost == 0 and report.invariant_violations == 0
    assert report.client_errors == 0 and report.unacknowledged_commits == 0
    assert sum(bank.balances.values()) == 1000
    assert {a.transfer.node for a in load.ledger.acks} == set(NODES)  # every node was written to
    assert report.duration_s < 5.0


def test_control_a_lost_acknowledged_write_is_found() -> None:
    bank = FakeBank(10, 100)
    load, _ = run(bank, max_transfers=50)
    victim = load.ledger.acks[10].transfer
    src, dst, amount = bank.rows.pop(victim.id)  # the cluster "forgot" a commit it acknowledged
    bank.balances[src] += amount
    bank.balances[dst] -= amount
    report = load.report(load.audit())
    assert report.acknowledged_lost == 1 and report.lost_ids == [victim.id]
    assert report.invariant_violations == 0  # balances and rows agree: only the ack log shows the loss


def test_control_a_broken_balance_is_an_invariant_violation() -> None:
    bank = FakeBank(10, 100)
    load, _ = run(bank, max_transfers=50)
    bank.balances[3] += 5  # money from nowhere
    audit = load.audit()
    assert audit.total == 1005 and audit.invariant_violations == 2  # the total, and account 3
    assert audit.balance_mismatches[3][0] == audit.balance_mismatches[3][1] + 5
    bank.balances[3] -= 5
    bank.balances[4] -= 5
    bank.balances[5] += 5  # the total holds, but two balances disagree with the transfer rows
    assert load.audit().invariant_violations == 2


def test_a_failed_commit_is_an_error_not_an_acknowledgement() -> None:
    bank = FakeBank(10, 100)
    bank.fail_commit_every = 7
    _, report = run(bank, max_transfers=200)
    assert report.client_errors > 0 and report.errors_by_kind == {"conflict": report.client_errors}
    assert report.acknowledged_lost == 0 and report.invariant_violations == 0
    assert len(bank.rows) == report.acknowledged  # nothing applied that was not acknowledged


def test_a_commit_whose_answer_is_lost_is_an_unacknowledged_commit_not_a_loss() -> None:
    bank = FakeBank(10, 100)
    bank.commit_then_lose_answer_every = 5
    _, report = run(bank, max_transfers=100)
    assert report.unacknowledged_commits > 0 and report.errors_by_kind.get("connection", 0) > 0
    assert report.acknowledged_lost == 0 and report.invariant_violations == 0


def test_a_node_that_refuses_is_counted_and_the_others_go_on() -> None:
    bank = FakeBank(10, 100)
    bank.refuse = {NODES[1]}
    _, report = run(bank, duration=0.5, max_transfers=10**6)
    assert report.errors_by_kind.get("connection", 0) > 0
    assert report.longest_gap_per_node_s[NODES[1]] == pytest.approx(report.duration_s, abs=0.05)
    assert report.longest_gap_s < 0.25  # the cluster as a whole kept acknowledging
    assert 0.5 <= report.duration_s < 1.5  # bounded by time


def test_longest_gap() -> None:
    assert wl.longest_gap([2.0, 3.0, 7.0], 0.0, 10.0) == 4.0
    assert wl.longest_gap([], 0.0, 10.0) == 10.0
    assert wl.longest_gap([1.0, 9.5], 1.0, 10.0) == 8.5


def test_error_classes() -> None:
    assert wl.error_class(FakeDbError(1213, "x")) == "conflict"
    assert wl.error_class(FakeDbError(1047, "WSREP has not yet prepared node")) == "not-ready"
    assert wl.error_class(FakeDbError(2003, "x")) == "connection"
    assert wl.error_class(TimeoutError()) == "timeout"
    assert wl.error_class(ValueError("odd")) == "other"


def test_setup_sql_quotes_the_password() -> None:
    text = wl.setup_sql(5, 100, "bank", "pa'ss\\word")
    assert "IDENTIFIED BY 'pa\\'ss\\\\word'" in text
    assert "bank.seq_1_to_5" in text and "SELECT seq, 100" in text


def test_rows_of_an_earlier_run_are_not_this_runs_unacknowledged_commits() -> None:
    bank = FakeBank(10, 100)
    first, _ = run(bank, max_transfers=40)
    second = wl.BankWorkload(NODES, accounts=10, initial=100, connect=fake_connect(bank), seed=8,
                             duration=5.0, max_transfers=40)
    second.run()
    report = second.report(second.audit())
    assert report.unacknowledged_commits == 0 and report.acknowledged_lost == 0
    assert report.invariant_violations == 0  # the balances include the first run's transfers
    # Control: a row of this run that no client saw acknowledged is counted.
    stray = f"{second._run_id}-10.0.0.11-0-999999"
    bank.rows[stray] = (1, 2, 0)
    assert second.audit().unacknowledged_commits == 1
    assert first.audit().unacknowledged_commits == 0
