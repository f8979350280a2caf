"""Opening the agent's SQLite files: owner-only (0600), WAL, schema applied.

The agent keeps three databases (VMs with their account passwords,
permissions, audit); all are sensitive and all follow the same rules, so they
are opened in one place.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Iterable

import aiosqlite


def _prepare_file(path: Path) -> None:
    """Parent folder, then the file created (or forced) owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


async def open_private_db(path: str | os.PathLike, schema: Iterable[str] = (), *, version: int | None = None,
                          pragmas: Iterable[str] = ()) -> aiosqlite.Connection:
    """An aiosqlite connection on a 0600 WAL database with ``schema`` statements applied."""
    path = Path(path)
    await asyncio.to_thread(_prepare_file, path)
    db = await aiosqlite.connect(path)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        for pragma in pragmas:
            await db.execute(f"PRAGMA {pragma}")
        for statement in schema:
            await db.execute(statement)
        if version is not None:
            await db.execute(f"PRAGMA user_version={int(version)}")
        await db.commit()
    except BaseException:
        await db.close()
        raise
    return db
