"""The job table's Alembic migrations, shipped inside the package (``env.py``, ``versions/``, ``alembic.ini``).

:func:`head_revision` reads the head revision id from the version files without importing Alembic,
so the hot path (a submit on a current schema) compares one string with ``alembic_version``.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent
INI_FILE = DIRECTORY / "alembic.ini"
VERSIONS = DIRECTORY / "versions"
_ASSIGN = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+)$", re.M)
_IDS = re.compile(r"[\"']([^\"']+)[\"']")


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The one revision no other revision names as its parent (Alembic's head, for a linear history)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        if path.name.startswith("_"):
            continue
        found = dict(_ASSIGN.findall(path.read_text(encoding="utf-8")))
        revisions.update(_IDS.findall(found.get("revision", "")))
        parents.update(_IDS.findall(found.get("down_revision", "")))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migrations in {VERSIONS} have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()
