"""The bank-transfer client workload: balanced transfers against every node, every acknowledged commit logged.

One workload for every fault test (node restarts, outages, the day-2 operations):

- ``accounts`` accounts hold ``initial`` each; the total never changes. Every transfer moves an amount from
  one account to another and inserts a row with a unique id into ``transfers``, in one transaction.
- One client thread per node address (TCP, as an application connects), ``clients_per_node`` if more. A
  transfer counts as *acknowledged* only once COMMIT returned; its id, node and time are logged then.
  An error (a refused connection, a node without a primary component, a certification conflict, a
  timeout) is logged with its time and class, and the client reconnects after a short pause.
- It stops by itself: after ``duration`` seconds or ``max_transfers`` acknowledged transfers, whichever
  comes first (or at ``stop()``).
- ``audit()`` reads the table back from one node (``wsrep_sync_wait``, so it sees every commit the cluster
  made) and checks: every acknowledged id is there (else: an acknowledged write was lost), the total is
  unchanged, and every balance equals its initial value plus what the transfer rows say moved in and out.

Figures (``WorkloadReport``): acknowledged transfers, acknowledged writes lost, invariant violations, client
errors by class, and the longest gap without an acknowledged commit (on the whole cluster, and per node).

    wl = BankWorkload(["10.231.0.11", "10.231.0.12"], user="bank", password=pw, duration=120)
    root_sql(setup_sql(wl.accounts, wl.initial, "bank", pw))   # as root, on one node
    wl.start(); ...fault...; wl.wait()
    report = wl.report(wl.audit())
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

DATABASE = "bank"
PORT = 3306

# MariaDB error numbers, by what they mean for a client (https://mariadb.com/kb/en/mariadb-error-codes/).
CONFLICT_ERRORS = frozenset({1213, 1205})  # deadlock (Galera's certification failure), lock wait timeout
NOT_READY_ERRORS = frozenset({1047})  # WSREP has not yet prepared node for application use (no primary)
CONNECTION_ERRORS = frozenset({2002, 2003, 2006, 2013, 2055})  # cannot connect, gone away, lost


class Cursor(Protocol):
    def execute(self, query: str, args: Any = None) -> Any: ...

    def fetchall(self) -> Any: ...


class Connection(Protocol):
    def cursor(self) -> Any: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


ConnectFn = Callable[[str], Connection]


def setup_sql(accounts: int, initial: int, user: str, password: str) -> str:
    """SQL, run once as root on one node, that makes the bank and the workload's network user.

    The password goes into the statement text (fed on stdin, never a command line).
    """
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    # Built from this module's constants, ints and the quoted password only; no statement takes input.
    return f"""
DROP DATABASE IF EXISTS {DATABASE};
CREATE DATABASE {DATABASE};
CREATE TABLE {DATABASE}.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
CREATE TABLE {DATABASE}.transfers (
    id VARCHAR(64) PRIMARY KEY, src INT NOT NULL, dst INT NOT NULL, amount INT NOT NULL, node VARCHAR(64) NOT NULL
) ENGINE=InnoDB;
INSERT INTO {DATABASE}.accounts (id, balance) SELECT seq, {int(initial)} FROM {DATABASE}.seq_1_to_{int(accounts)};
CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{quoted}';
ALTER USER '{user}'@'%' IDENTIFIED BY '{quoted}';
GRANT SELECT, INSERT, UPDATE ON {DATABASE}.* TO '{user}'@'%';
"""  # noqa: S608


def error_class(exc: BaseException) -> str:
    """conflict | not-ready | connection | timeout | other: the one word a figure is counted under."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code in CONFLICT_ERRORS:
        return "conflict"
    if code in NOT_READY_ERRORS:
        return "not-ready"
    if code in CONNECTION_ERRORS or isinstance(exc, ConnectionError):
        return "connection"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


# --------------------------------------------------------------------------
# Bookkeeping (pure: unit-tested without a database)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    id: str
    src: int
    dst: int
    amount: int
    node: str


@dataclass(frozen=True)
class Ack:
    transfer: Transfer
    at: float  # time.monotonic() when COMMIT returned


@dataclass(frozen=True)
class ClientError:
    node: str
    at: float
    kind: str
    message: str


class Ledger:
    """What the clients saw: every acknowledged transfer and every error, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acks: list[Ack] = []
        self.errors: list[ClientError] = []
        self.started: float | None = None
        self.ended: float | None = None

    def ack(self, transfer: Transfer, at: float) -> int:
        with self._lock:
            self.acks.append(Ack(transfer, at))
            return len(self.acks)

    def error(self, node: str, at: float, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(ClientError(node, at, error_class(exc), f"{type(exc).__name__}: {exc}"[:200]))

    def acknowledged(self) -> int:
        with self._lock:
            return len(self.acks)


def longest_gap(times: Iterable[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] without one of ``times`` (the whole span if there is none)."""
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


@dataclass
class Audit:
    """What the cluster holds after the run, compared with what the clients were told."""

    transfers_in_table: int
    acknowledged: int
    lost: list[str]  # acknowledged ids missing from the table
    unacknowledged_commits: int  # rows whose COMMIT the client never saw return (allowed: the answer was lost)
    total: int
    expected_total: int
    balance_mismatches: dict[int, tuple[int, int]]  # account -> (balance, what the transfer rows say)

    @property
    def invariant_violations(self) -> int:
        return int(self.total != self.expected_total) + len(self.balance_mismatches)


def audit_rows(
    acks: Sequence[Ack],
    rows: Iterable[tuple[str, int, int, int]],
    balances: Mapping[int, int],
    *,
    accounts: int,
    initial: int,
    run_prefix: str = "",
) -> Audit:
    """Compare acknowledged transfers with the table's rows (id, src, dst, amount) and balances.

    Rows of earlier runs on the same bank count for the balances; only this run's rows (ids starting with
    ``run_prefix``) can be unacknowledged commits of this run.
    """
    table: dict[str, tuple[int, int, int]] = {}
    for row_id, src, dst, amount in rows:
        table[str(row_id)] = (int(src), int(dst), int(amount))
    acked_ids = {a.transfer.id for a in acks}
    lost = sorted(i for i in acked_ids if i not in table)
    expected = {account: initial for account in range(1, accounts + 1)}
    for src, dst, amount in table.values():
        expected[src] = expected.get(src, initial) - amount
        expected[dst] = expected.get(dst, initial) + amount
    mismatches = {
        account: (int(balances.get(account, 0)), want)
        for account, want in expected.items()
        if int(balances.get(account, 0)) != want
    }
    for account in balances:
        if account not in expected:
            mismatches[int(account)] = (int(balances[account]), 0)
    return Audit(
        transfers_in_table=len(table),
        acknowledged=len(acked_ids),
        lost=lost,
        unacknowledged_commits=len({i for i in table if i.startswith(run_prefix)} - acked_ids),
        total=sum(int(b) for b in balances.values()),
        expected_total=accounts * initial,
        balance_mismatches=mismatches,
    )


@dataclass
class WorkloadReport:
    acknowledged: int
    acknowledged_lost: int
    invariant_violations: int
    unacknowledged_commits: int
    client_errors: int
    errors_by_kind: dict[str, int]
    longest_gap_s: float  # no acknowledged commit anywhere
    longest_gap_per_node_s: dict[str, float]
    duration_s: float
    lost_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_report(ledger: Ledger, audit: Audit, nodes: Sequence[str]) -> WorkloadReport:
    start = ledger.started if ledger.started is not None else 0.0
    end = ledger.ended if ledger.ended is not None else time.monotonic()
    kinds: dict[str, int] = {}
    for e in ledger.errors:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    return WorkloadReport(
        acknowledged=len(ledger.acks),
        acknowledged_lost=len(audit.lost),
        invariant_violations=audit.invariant_violations,
        unacknowledged_commits=audit.unacknowledged_commits,
        client_errors=len(ledger.errors),
        errors_by_kind=kinds,
        longest_gap_s=round(longest_gap((a.at for a in ledger.acks), start, end), 2),
        longest_gap_per_node_s={
            n: round(longest_gap((a.at for a in ledger.acks if a.transfer.node == n), start, end), 2) for n in nodes
        },
        duration_s=round(end - start, 2),
        lost_ids=audit.lost[:20],
    )


# --------------------------------------------------------------------------
# The clients
# --------------------------------------------------------------------------


def pymysql_connect(user: str, password: str, *, timeout: float = 5.0, io_timeout: float | None = None,
                    ca: Path | None = None) -> ConnectFn:
    """Clients for the workload. With ``ca``, over TLS verified against that CA, as an application connects
    to a cluster with ``requireSecureTransport`` on. ``io_timeout``: reads and writes, if not ``timeout``."""
    tls: dict[str, Any] = {} if ca is None else {"ssl_ca": str(ca), "ssl_verify_cert": True}
    io = timeout if io_timeout is None else io_timeout

    def connect(address: str) -> Connection:
        import pymysql

        conn: Connection = pymysql.connect(
            host=address, port=PORT, user=user, password=password, database=DATABASE, autocommit=False,
            connect_timeout=timeout, read_timeout=io, write_timeout=io, **tls,
        )
        return conn

    return connect


class BankWorkload:
    """Transfers against every node until ``duration`` or ``max_transfers``; see the module docstring."""

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        user: str = "bank",
        password: str = "",
        accounts: int = 20,
        initial: int = 1000,
        duration: float = 60.0,
        max_transfers: int = 100_000,
        clients_per_node: int = 1,
        pause_after_error: float = 0.2,
        connect: ConnectFn | None = None,
        seed: int | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("the workload needs at least one node address")
        self.nodes = list(nodes)
        self.accounts = accounts
        self.initial = initial
        self.duration = duration
        self.max_transfers = max_transfers
        self.clients_per_node = clients_per_node
        self.pause_after_error = pause_after_error
        self.connect = connect or pymysql_connect(user, password)
        self.ledger = Ledger()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._random = random.Random(seed)
        self._run_id = f"{self._random.getrandbits(32):08x}"

    # -- running

    def start(self) -> BankWorkload:
        self.ledger.started = time.monotonic()
        for node in self.nodes:
            for client in range(self.clients_per_node):
                thread = threading.Thread(
                    target=self._client, args=(node, client, self._random.getrandbits(32)), daemon=True,
                    name=f"bank-{node}-{client}",
                )
                self._threads.append(thread)
                thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> None:
        """Until every client has stopped (by its bounds, or after ``stop()``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self.ledger.ended is None:
            self.ledger.ended = time.monotonic()

    def run(self) -> None:
        self.start()
        self.wait()

    def _done(self) -> bool:
        if self._stop.is_set():
            return True
        started = self.ledger.started or time.monotonic()
        if time.monotonic() - started >= self.duration or self.ledger.acknowledged() >= self.max_transfers:
            self._stop.set()
            return True
        return False

    def _client(self, node: str, client: int, seed: int) -> None:
        rng = random.Random(seed)
        conn: Connection | None = None
        seq = 0
        while not self._done():
            try:
                if conn is None:
                    conn = self.connect(node)
                seq += 1
                src, dst = rng.sample(range(1, self.accounts + 1), 2)
                transfer = Transfer(f"{self._run_id}-{node}-{client}-{seq}", src, dst, rng.randint(1, 10), node)
                self._transfer(conn, transfer)
                self.ledger.ack(transfer, time.monotonic())
            except Exception as exc:
                self.ledger.error(node, time.monotonic(), exc)
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: S110 - a broken connection may not close cleanly; it is dropped
                        pass
                conn = None
                self._stop.wait(self.pause_after_error)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: S110 - closing at the end; nothing depends on it
                pass

    @staticmethod
    def _transfer(conn: Connection, t: Transfer) -> None:
        cur = conn.cursor()
        try:
            # Both rows in id order: two transfers on one node never wait on each other in a cycle.
            for account, delta in sorted(((t.src, -t.amount), (t.dst, t.amount))):
                cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (delta, account))
            cur.execute(
                "INSERT INTO transfers (id, src, dst, amount, node) VALUES (%s, %s, %s, %s, %s)",
                (t.id, t.src, t.dst, t.amount, t.node),
            )
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # noqa: S110 - the error that matters is the one re-raised
                pass
            raise

    # -- after the run

    def audit(self, node: str | None = None) -> Audit:
        """Read the bank back from ``node`` (default: the first), waiting for every commit the cluster made."""
        conn = self.connect(node or self.nodes[0])
        try:
            cur = conn.cursor()
            cur.execute("SET SESSION wsrep_sync_wait = 1")
            cur.execute("SELECT id, src, dst, amount FROM transfers")
            rows = [(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()]
            cur.execute("SELECT id, balance FROM accounts")
            balances = {int(r[0]): int(r[1]) for r in cur.fetchall()}
        finally:
            conn.close()
        return audit_rows(self.ledger.acks, rows, balances, accounts=self.accounts, initial=self.initial,
                          run_prefix=f"{self._run_id}-")

    def report(self, audit: Audit) -> WorkloadReport:
        return make_report(self.ledger, audit, self.nodes)
