"""SQLAlchemy's mssql+pymssql dialect against the TDS test server: Core and ORM."""

from __future__ import annotations

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import (  # noqa: E402
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

from mssql_pool.testing import TdsServer  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def engine_for(server: TdsServer):  # type: ignore[no-untyped-def]
    return create_engine(
        f"mssql+pymssql://{server.user}:{server.password}@{server.host}:{server.port}/"
        f"{server.database}?tds_version=7.4"
    )


def test_core_connect_create_insert_select(tds_server: TdsServer) -> None:
    eng = engine_for(tds_server)
    with eng.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert eng.dialect.server_version_info[0] == 16
        assert conn.dialect.default_schema_name == "dbo"
    meta = MetaData()
    items = Table("items", meta, Column("id", Integer, primary_key=True),
                  Column("name", String(40), nullable=False))
    meta.create_all(eng)
    assert inspect(eng).has_table("items")
    meta.create_all(eng)  # checkfirst: a second run is a no-op
    with eng.begin() as conn:
        res = conn.execute(items.insert().values(name="a"))
        assert res.inserted_primary_key == (1,)
        conn.execute(items.insert(), [{"name": "b"}, {"name": "c"}])
    with eng.connect() as conn:
        rows = conn.execute(select(items.c.name).order_by(items.c.id)).scalars().all()
        assert rows == ["a", "b", "c"]
        conn.execute(items.update().where(items.c.name == "b").values(name="B"))
        conn.rollback()
        assert conn.execute(select(func.count()).where(items.c.name == "B")).scalar() == 0
    meta.drop_all(eng)
    assert not inspect(eng).has_table("items")
    eng.dispose()


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def test_orm_crud_with_output_inserted(tds_server: TdsServer) -> None:
    eng = engine_for(tds_server)
    Base.metadata.create_all(eng)
    with Session(eng) as ses:
        u = User(name="ann")
        ses.add(u)
        ses.flush()
        assert u.id == 1  # OUTPUT inserted.id
        ses.add_all([User(name="bob"), User(name="cy")])
        ses.commit()
        assert [x.name for x in ses.scalars(select(User).order_by(User.id))] == ["ann", "bob",
                                                                                 "cy"]
        bob = ses.scalars(select(User).where(User.name == "bob")).one()
        bob.name = "rob"
        ses.commit()
        ses.delete(ses.get(User, 1))
        ses.commit()
    with Session(eng) as ses:
        assert [(x.id, x.name) for x in ses.scalars(select(User).order_by(User.id))] == [
            (2, "rob"), (3, "cy")]
    stats = tds_server.stats()
    assert stats["batches"] > 0 and stats["logins"] >= 1
    eng.dispose()
