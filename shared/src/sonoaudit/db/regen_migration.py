"""Regenerate the initial migration from the models (pre-1.0: one initial revision).

``make migration`` runs this. It autogenerates against an empty SQLite database, so the result
describes the full schema. A test fails when models and migrations drift apart.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command

from sonoaudit.db.migrate import MIGRATIONS_DIR, alembic_config


def main() -> None:
    versions = MIGRATIONS_DIR / "versions"
    for old in versions.glob("*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'empty.db'}"
        command.revision(alembic_config(url), message="initial schema", autogenerate=True,
                         rev_id="0001")
    print(f"wrote {next(versions.glob('0001*.py'))}")  # noqa: T201


if __name__ == "__main__":
    main()
