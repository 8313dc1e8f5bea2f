"""Init container of every sonoaudit Deployment: wait until the results store is migrated to the
revision this image ships (the migration Job runs `sonoaudit migrate`), so no replica serves
requests against a missing or older schema. Exit 0 when it is; exit 1 after WAIT_TIMEOUT_S
(default 900) so the pod restarts and the wait shows up in its events.

Runs with the service image's own Python: sonoaudit, SQLAlchemy and Alembic are there, and the
database URL comes from SONOAUDIT_DATABASE_URL like the service's.
"""

from __future__ import annotations

import os
import sys
import time

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sonoaudit.db.migrate import alembic_config
from sonoaudit.db.session import make_engine
from sonoaudit.settings import Settings


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def current_and_head(url: str) -> tuple[str | None, str | None]:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision(), head
    finally:
        engine.dispose()


def main() -> int:
    url = Settings().resolved_database_url
    timeout = float(os.environ.get("WAIT_TIMEOUT_S", "900"))
    interval = float(os.environ.get("WAIT_INTERVAL_S", "2"))
    where = url.rsplit("@", 1)[-1]  # never print the password
    deadline = time.monotonic() + timeout
    while True:
        try:
            current, head = current_and_head(url)
            if current == head:
                say(f"schema of {where} is at {head}")
                return 0
            state = f"at {current or 'no revision'}, want {head}"
        except Exception as exc:  # database not up yet: keep waiting
            state = f"unreachable ({type(exc).__name__})"
        if time.monotonic() >= deadline:
            say(f"gave up after {timeout:.0f}s: {where} {state}")
            return 1
        say(f"waiting for the migration Job: {where} {state}")
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
