"""The ORM on mssql_pool's engine, and retried units (run_transaction), with real pymssql
against the TDS test server: create_all, CRUD, relationships, OUTPUT inserted.id, units
re-run under injected deadlocks, ambiguous commits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from bank import chaos_during, paced  # noqa: E402
from sqlalchemy import (  # noqa: E402
    ForeignKey,
    String,
    exc,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

from mssql_pool.errors import CommitUnknownError, RetryExhausted  # noqa: E402
from mssql_pool.retry import FixedBackoff, RetryPolicy  # noqa: E402
from mssql_pool.sqlalchemy import create_engine, run_transaction  # noqa: E402
from mssql_pool.testing import TdsServer  # noqa: E402

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(max_attempts=5, deadline=20.0, backoff=FixedBackoff(0.01), name="test")


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    orders: Mapped[list[Order]] = relationship(back_populates="customer",
                                               cascade="all, delete-orphan",
                                               order_by="Order.id")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"))
    amount: Mapped[int]
    customer: Mapped[Customer] = relationship(back_populates="orders")


class Account(Base):
    __tablename__ = "account"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int]


@pytest.fixture
def engine(tds_server: TdsServer) -> Iterator[Engine]:
    eng = create_engine(tds_server.url, max_size=4, timeout=10.0, name="orm")
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()
    eng.pool.mssql_pool.close()  # type: ignore[attr-defined]


def test_create_all_made_the_tables(engine: Engine) -> None:
    insp = inspect(engine)
    # (get_table_names() reads INFORMATION_SCHEMA.TABLES, which the test server lacks)
    assert all(insp.has_table(name) for name in ("customer", "orders", "account"))
    Base.metadata.create_all(engine)   # checkfirst: a no-op the second time


def test_orm_crud_relationships_and_output_inserted_id(engine: Engine) -> None:
    Factory = sessionmaker(engine)
    with Factory() as ses:
        ann = Customer(name="ann", orders=[Order(amount=10), Order(amount=20)])
        ses.add(ann)
        ses.flush()
        assert ann.id == 1                                  # OUTPUT inserted.id
        assert [o.id for o in ann.orders] == [1, 2]
        assert all(o.customer_id == ann.id for o in ann.orders)
        ses.add(Customer(name="bob", orders=[Order(amount=5)]))
        ses.commit()
    with Factory() as ses:
        rows = ses.scalars(select(Customer).options(selectinload(Customer.orders))
                           .order_by(Customer.id)).all()
        assert [(c.name, [o.amount for o in c.orders]) for c in rows] == [
            ("ann", [10, 20]), ("bob", [5])]
        rows[0].orders[0].amount = 11                        # update through a relationship
        del rows[0].orders[1]                                # delete-orphan
        ses.delete(rows[1])                                  # cascade
        ses.commit()
    with Factory() as ses:
        assert ses.scalar(select(func.count()).select_from(Customer)) == 1
        assert [(o.id, o.amount, o.customer.name) for o in ses.scalars(select(Order))] == [
            (1, 11, "ann")]
        ses.add(Customer(name="cy"))
        ses.rollback()
        assert ses.scalar(select(func.count()).select_from(Customer)) == 1


def test_run_transaction_reruns_an_orm_unit_under_injected_deadlocks(
        tds_server: TdsServer, engine: Engine) -> None:
    Factory = sessionmaker(engine)
    with Factory.begin() as ses:
        ses.add_all([Account(id=1, balance=100), Account(id=2, balance=0)])
    tds_server.fail_next(1205, match="UPDATE", times=2)
    attempts = []

    def transfer(ses: Session, amount: int) -> int:
        attempts.append(ses)
        src, dst = ses.get(Account, 1), ses.get(Account, 2)
        assert src is not None and dst is not None
        src.balance -= amount
        dst.balance += amount
        return len(attempts)

    events: list[Any] = []
    pool = engine.pool.mssql_pool  # type: ignore[attr-defined]
    pool.add_listener(events.append, kinds=["retry_attempt"])
    assert run_transaction(Factory, transfer, 30, policy=FAST) == 3
    assert len(set(map(id, attempts))) == 3          # a fresh Session for every attempt
    assert pool.events.flush()
    # each re-run is a retry_attempt event of the pool under the engine
    assert [(e.attempt, e.error_info.number, e.reason) for e in events] == [
        (1, 1205, "test"), (2, 1205, "test")]
    with Factory() as ses:
        assert [a.balance for a in ses.scalars(select(Account).order_by(Account.id))] == [
            70, 30]                                      # applied exactly once


def test_run_transaction_with_an_engine_gives_a_connection(
        tds_server: TdsServer, engine: Engine) -> None:
    tds_server.fail_next(1205, match="INSERT", times=1)
    calls = []

    def unit(conn: Any) -> None:
        calls.append(conn)
        conn.execute(text("INSERT INTO account (id, balance) VALUES (7, 1)"))

    run_transaction(engine, unit, policy=FAST)
    assert len(calls) == 2 and all(isinstance(c, sqlalchemy.engine.Connection) for c in calls)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT balance FROM account WHERE id = 7")).scalar() == 1


def test_run_transaction_does_not_retry_what_is_not_retryable(engine: Engine) -> None:
    Factory = sessionmaker(engine)
    run_transaction(Factory, lambda s: s.add(Account(id=1, balance=1)), policy=FAST)
    calls = []

    def duplicate(ses: Session) -> None:
        calls.append(1)
        ses.add(Account(id=1, balance=2))

    with pytest.raises(exc.IntegrityError):
        run_transaction(Factory, duplicate, policy=FAST)
    assert calls == [1]


def test_run_transaction_gives_up_after_the_policy(tds_server: TdsServer,
                                                   engine: Engine) -> None:
    Factory = sessionmaker(engine)
    run_transaction(Factory, lambda s: s.add(Account(id=1, balance=1)), policy=FAST)
    tds_server.fail_next(1205, match="UPDATE", times=10)

    def bump(ses: Session) -> None:
        acct = ses.get(Account, 1)
        assert acct is not None
        acct.balance += 1

    with pytest.raises(RetryExhausted) as info:
        run_transaction(Factory, bump, policy=FAST.new(max_attempts=3))
    assert isinstance(info.value.last_error, exc.DBAPIError)
    assert len(info.value.attempts) == 3
    tds_server.clear_faults()


def _seed_and_lose_the_commit(tds_server: TdsServer, engine: Engine) -> sessionmaker[Session]:
    Factory = sessionmaker(engine)
    run_transaction(Factory, lambda s: s.add(Account(id=1, balance=0)), policy=FAST)
    tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=True)   # it lands, the reply is lost
    return Factory


def _bump(ses: Session) -> None:
    acct = ses.get(Account, 1)
    assert acct is not None
    acct.balance += 1


def _balance(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT balance FROM account WHERE id = 1")).scalar_one())


def test_a_lost_commit_is_never_rerun_blindly(tds_server: TdsServer, engine: Engine) -> None:
    Factory = _seed_and_lose_the_commit(tds_server, engine)
    with pytest.raises(CommitUnknownError):
        run_transaction(Factory, _bump, policy=FAST)
    assert _balance(engine) == 1


def test_a_lost_commit_is_resolved_by_verify(tds_server: TdsServer, engine: Engine) -> None:
    Factory = _seed_and_lose_the_commit(tds_server, engine)
    checked = []

    def landed(ses: Session) -> bool:
        checked.append(ses)
        return ses.get(Account, 1).balance == 1  # type: ignore[union-attr]

    events: list[Any] = []
    pool = engine.pool.mssql_pool  # type: ignore[attr-defined]
    pool.add_listener(events.append, kinds=["commit_unknown"])
    run_transaction(Factory, _bump, policy=FAST, verify=landed)
    assert len(checked) == 1 and _balance(engine) == 1
    assert pool.events.flush()
    assert [e.reason for e in events] == ["verify"]


def test_a_lost_commit_of_an_idempotent_unit_is_rerun(tds_server: TdsServer,
                                                      engine: Engine) -> None:
    Factory = _seed_and_lose_the_commit(tds_server, engine)

    def set_five(ses: Session) -> None:
        ses.get(Account, 1).balance = 5  # type: ignore[union-attr]

    run_transaction(Factory, set_five, policy=FAST, idempotent=True)
    assert _balance(engine) == 5


def test_the_commit_reopens_pymssqls_transaction_in_the_same_batch(
        tds_server: TdsServer, engine: Engine) -> None:
    """One round trip for COMMIT and pymssql's next BEGIN TRAN: a reply lost after the
    server ran that batch is an unknown outcome (never a blind re-run), as with a bare
    COMMIT; the next unit runs on a connection whose transaction is open."""
    Factory = sessionmaker(engine)
    run_transaction(Factory, lambda s: s.add(Account(id=1, balance=0)), policy=FAST)
    tds_server.drop_next(match="^COMMIT TRAN;BEGIN TRAN$", after_execute=True)
    calls = []

    def bump(ses: Session) -> None:
        calls.append(1)
        _bump(ses)

    with pytest.raises(CommitUnknownError):
        run_transaction(Factory, bump, policy=FAST)
    assert calls == [1] and _balance(engine) == 1
    run_transaction(Factory, bump, policy=FAST)
    assert calls == [1, 1] and _balance(engine) == 2


def test_a_unit_survives_kill_all(tds_server: TdsServer, engine: Engine) -> None:
    Factory = sessionmaker(engine)
    run_transaction(Factory, lambda s: s.add(Account(id=1, balance=0)), policy=FAST)
    tds_server.kill_all()
    run_transaction(Factory, _bump, policy=FAST)
    assert _balance(engine) == 1


def test_a_unit_waits_for_a_connection_no_longer_than_its_deadline(
        tds_server: TdsServer) -> None:
    import time

    from mssql_pool.sqlalchemy import PoolTimeout

    eng = create_engine(tds_server.url, max_size=1, timeout=30.0)
    try:
        with eng.connect() as held:
            held.execute(text("SELECT 1")).all()
            start = time.monotonic()
            with pytest.raises(PoolTimeout):
                run_transaction(sessionmaker(eng), lambda s: s.execute(text("SELECT 1")),
                                policy=FAST.new(deadline=0.3))
            assert time.monotonic() - start < 5.0          # not the pool's 30 s
        assert run_transaction(eng, lambda c: c.execute(text("SELECT 2")).scalar(),
                               policy=FAST) == 2
    finally:
        eng.dispose()
        eng.pool.mssql_pool.close()  # type: ignore[attr-defined]


class Ledger(Base):
    __tablename__ = "ledger"
    tid: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount: Mapped[int]


def test_concurrent_orm_transfers_under_chaos_apply_exactly_once(
        tds_server: TdsServer, engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    import random
    import threading

    Factory = sessionmaker(engine)
    accounts, initial, threads, per_thread = 6, 1000, 4, 12
    run_transaction(Factory, lambda s: s.add_all(
        [Account(id=i, balance=initial) for i in range(accounts)]), policy=FAST)
    policy = RetryPolicy(max_attempts=30, deadline=30.0, backoff=FixedBackoff(0.01),
                         name="chaos")
    done: list[int] = []
    errors: list[BaseException] = []

    def transfer(ses: Session, tid: str, src: int, dst: int, amount: int) -> None:
        # relative updates: a read-modify-write through loaded objects would lose updates
        # between concurrent units at READ COMMITTED, with or without any pool
        for acct, delta in ((src, -amount), (dst, amount)):
            ses.execute(update(Account).where(Account.id == acct)
                        .values(balance=Account.balance + delta))
        ses.add(Ledger(tid=tid, amount=amount))

    def worker(k: int) -> None:
        rnd = random.Random(k)
        for n in range(per_thread):
            src, dst = rnd.sample(range(accounts), 2)
            tid = f"t{k}-{n}"

            def landed(ses: Session, tid: str = tid) -> bool:
                return ses.get(Ledger, tid) is not None

            try:
                run_transaction(Factory, transfer, tid, src, dst, rnd.randint(1, 50),
                                policy=policy, verify=landed)
            except BaseException as exc:  # collected: asserted empty below
                errors.append(exc)
            done.append(1)

    def chaos(server: TdsServer, stop: threading.Event, rnd: random.Random,
              counts: Counter[str], progress: Callable[[], int]) -> None:
        for _ in paced(stop, progress, 4):
            what = rnd.choice(["1205", "kill", "drop_commit", "none"])
            counts[what] += 1
            if what == "1205":
                server.fail_next(1205, match="UPDATE account")
            elif what == "kill":
                server.kill_all()
            elif what == "drop_commit":
                server.drop_next(match="^COMMIT TRAN", after_execute=True)

    workers = [threading.Thread(target=worker, args=(k,), name=f"orm-{k}", daemon=True)
               for k in range(threads)]
    with chaos_during(tds_server, random.Random(99), Counter(), lambda: len(done),
                      inject=chaos):
        for t in workers:
            t.start()
        for t in workers:
            t.join(45)
    assert not any(t.is_alive() for t in workers)
    # a killed session's rollback must have completed (the server logs a failed undo step)
    assert not any("undo step failed" in r.getMessage() for r in caplog.records)
    assert errors == []
    with Factory() as ses:
        balances = ses.scalars(select(Account.balance)).all()
        ledger = ses.scalars(select(Ledger.tid)).all()
    assert sum(balances) == accounts * initial
    assert sorted(ledger) == sorted(f"t{k}-{n}" for k in range(threads)
                                    for n in range(per_thread))
