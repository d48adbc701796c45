"""SQLAlchemy on mssql_pool's engine against a real server: the first connect (the
dialect's version and probes), the ORM end to end, and a real deadlock re-run through
``mssql_pool.sqlalchemy.run_transaction``."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import ForeignKey, String, func, select, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from mssql_pool.sqlalchemy import create_engine, run_transaction  # noqa: E402

from .conftest import RealServer  # noqa: E402

pytestmark = pytest.mark.realserver

SUFFIX = uuid.uuid4().hex[:8]


class Base(DeclarativeBase):
    pass


class Owner(Base):
    __tablename__ = f"mp_owner_{SUFFIX}"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    balance: Mapped[int] = mapped_column(default=0)
    pets: Mapped[list[Pet]] = relationship(back_populates="owner", cascade="all, delete-orphan",
                                           order_by="Pet.id")


class Pet(Base):
    __tablename__ = f"mp_pet_{SUFFIX}"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    owner_id: Mapped[int] = mapped_column(ForeignKey(f"mp_owner_{SUFFIX}.id"))
    owner: Mapped[Owner] = relationship(back_populates="pets")


@pytest.fixture
def engine(real_server: RealServer) -> Iterator[Engine]:
    url = real_server.url.replace("mssql://", "mssql+pymssql://", 1)
    eng = create_engine(url, min_size=1, max_size=4, name="mp-sqla",
                        connect_args={"tds_version": "7.4", "login_timeout": 10})
    try:
        yield eng
    finally:
        try:
            Base.metadata.drop_all(eng)
        finally:
            eng.dispose()
            eng.pool.mssql_pool.close()


def test_first_connect_reads_the_server_version(engine: Engine, real_server: RealServer) -> None:
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    info = engine.dialect.server_version_info
    assert isinstance(info, tuple) and len(info) >= 3 and info[0] >= 12
    if real_server.is_babelfish:
        assert info[:2] == (12, 0)      # SERVERPROPERTY('ProductVersion'): 12.0.2000.8


def test_orm_end_to_end(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine)
    with factory.begin() as session:
        session.add_all([Owner(id=1, name="ada", pets=[Pet(name="rex"), Pet(name="tom")]),
                         Owner(id=2, name="bob")])
    with factory() as session:
        ada = session.scalars(select(Owner).where(Owner.name == "ada")).one()
        assert [p.name for p in ada.pets] == ["rex", "tom"]
        ada.pets[0].name = "max"
        session.delete(session.get(Owner, 2))
        session.commit()
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Owner)) == 1
        assert session.scalars(select(Pet.name).order_by(Pet.id)).all() == ["max", "tom"]
        session.rollback()
    with factory() as session:                      # a rolled-back change stays undone
        session.get(Owner, 1).name = "zed"
        session.flush()
        session.rollback()
        assert session.get(Owner, 1).name == "ada"
    stats = engine.pool.mssql_pool.get_stats()
    assert stats["connections_discarded"] == 0


def test_orm_deadlock_victim_is_rerun(engine: Engine) -> None:
    """Two ORM units update two rows in opposite orders: one is the deadlock victim (1205;
    on Babelfish its transaction is already gone, so a plain rollback would raise 3903).
    run_transaction re-runs it; both land exactly once.

    The increments are SQL expressions (``balance = balance + 1``), not a read in Python and a
    literal write: under Babelfish's snapshot reads a read-modify-write of the re-run can read
    the winner's row before the winner commits and write back a stale value (a lost update
    the workload makes, not the pool). On SQL Server the read blocks instead."""
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine)
    with factory.begin() as session:
        session.add_all([Owner(id=10, name="a"), Owner(id=11, name="b")])
    barrier = threading.Barrier(2, timeout=30)
    attempts = {0: 0, 1: 0}
    errors: list[BaseException] = []

    def unit(session: Session, who: int, first: int, second: int) -> None:
        attempts[who] += 1
        session.get(Owner, first).balance = Owner.balance + 1
        session.flush()
        if attempts[who] == 1:
            barrier.wait()      # both hold their first row: a certain deadlock
        session.get(Owner, second).balance = Owner.balance + 1
        session.flush()

    def run(who: int, first: int, second: int) -> None:
        try:
            run_transaction(factory, unit, who, first, second)
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(0, 10, 11), name="orm-dl-0"),
               threading.Thread(target=run, args=(1, 11, 10), name="orm-dl-1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert errors == []
    assert sorted(attempts.values()) == [1, 2]
    with factory() as session:
        assert [o.balance for o in session.scalars(select(Owner).order_by(Owner.id))] == [2, 2]


def test_plain_sqlalchemy_isolation_probe_does_not_break_the_session(engine: Engine) -> None:
    """The dialect's isolation-level probe (sys.system_views) may fail on other engines; the
    connection it ran on must stay usable."""
    with engine.connect() as conn:
        level: Any = None
        try:
            level = conn.get_isolation_level()
        except NotImplementedError:
            pass
        assert level in (None, "READ COMMITTED")
        assert conn.execute(text("SELECT 2")).scalar() == 2
