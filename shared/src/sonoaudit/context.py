"""Everything a process needs to work: settings, database, file store, optional bus.

Built by the CLI (embedded mode) and by each service's lifespan; nothing here runs at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sonoaudit.db.migrate import upgrade
from sonoaudit.db.session import make_engine, make_session_factory, wait_for_database
from sonoaudit.filestore import FileStore
from sonoaudit.settings import Settings

if TYPE_CHECKING:
    from sonoaudit.bus import Bus


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: FileStore
    bus: Bus | None = field(default=None)

    def close(self) -> None:
        self.engine.dispose()


def build_context(settings: Settings, *, migrate: bool = True, wait: bool = True) -> AppContext:
    """Engine + sessions + file store. ``migrate`` brings the schema to head (idempotent)."""
    url = settings.resolved_database_url
    engine = make_engine(url)
    if wait:
        wait_for_database(engine, settings.db_connect_attempts, settings.db_connect_wait_s)
    if migrate:
        upgrade(url)
    store_dir = settings.resolved_store_dir
    store_dir.mkdir(parents=True, exist_ok=True)
    return AppContext(settings, engine, make_session_factory(engine), FileStore(store_dir))
