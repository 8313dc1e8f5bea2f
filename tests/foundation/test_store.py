"""Results store: migrations on SQLite and on a fresh Postgres database, models match migrations,
the content-addressed file store and the unique keys that make writes idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sonoaudit.db.migrate import downgrade, upgrade
from sonoaudit.db.models import Base, Dataset, Image, Job
from sonoaudit.db.session import make_engine, make_session_factory, session_scope
from sonoaudit.filestore import FileStore, sha256_bytes
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError


def _urls(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


@pytest.fixture(params=["sqlite_url", pytest.param("postgres_url", marks=pytest.mark.integration)])
def migrated_url(request: pytest.FixtureRequest) -> str:
    url = _urls(request)
    upgrade(url)
    return url


def test_migrations_match_models(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; run `make migration`: {diff}"


def test_every_table_created(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    expected = {
        "datasets", "images", "jobs", "dead_letters", "models", "training_runs",
        "generation_runs", "metric_runs", "llm_classifications", "studies", "study_items",
        "readers", "answers",
    }
    assert expected <= tables


def test_insert_and_unique_image_name(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as s:
        ds = Dataset(name="t", format="busbra", root_path="/x", fingerprint="f" * 64)
        s.add(ds)
        s.flush()
        s.add(Image(sha256="a" * 64, source="real", class_label="benign", name="bus_1",
                    path="aa/a.png", width=10, height=10, dataset_id=ds.id))
    with pytest.raises(IntegrityError), session_scope(sessions) as s:
        s.add(Image(sha256="b" * 64, source="real", class_label="benign", name="bus_1",
                    path="bb/b.png", width=10, height=10, dataset_id=ds.id))
    with session_scope(sessions) as s:
        # the failed insert left nothing behind (other tests share the session's database)
        assert len(s.scalars(select(Image).where(Image.dataset_id == ds.id)).all()) == 1
        job = Job(kind="generate", total=3)
        s.add(job)
    engine.dispose()


def test_downgrade_to_base_and_back(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    downgrade(sqlite_url, "base")
    engine = make_engine(sqlite_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(sqlite_url)


def test_filestore_is_content_addressed(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    digest, rel = store.put(b"hello")
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert digest == sha256_bytes(b"hello")
    assert rel == f"2c/{digest}.png"
    assert store.get(rel) == b"hello"
    assert store.put(b"hello") == (digest, rel)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{digest}.png"]
    with pytest.raises(ValueError, match="escapes"):
        store.path("../../etc/passwd")
