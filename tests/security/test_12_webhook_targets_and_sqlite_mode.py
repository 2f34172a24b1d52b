"""Finding 12 (informational): IPv6 forms that embed a private IPv4 address were accepted
as webhook targets, and the SQLite database and its WAL were created 0644.

Every form that carries an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4 ``2002::/16``,
Teredo, NAT64 ``64:ff9b::/96``) is judged by that address; the database file is made
0600 and SQLite gives its ``-wal`` and ``-shm`` files the same mode.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from service.db import create_engine
from service.events.targets import UnsafeWebhookTarget, check_target


@pytest.mark.parametrize(
    "address",
    [
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254, the cloud metadata address
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "::10.0.0.1",  # IPv4-compatible
        "::ffff:10.0.0.1",  # IPv4-mapped (refused before too)
    ],
)
async def test_an_embedded_private_ipv4_is_refused(address: str) -> None:
    with pytest.raises(UnsafeWebhookTarget) as refused:
        await check_target(f"https://[{address}]/hook", allow_private=False)
    assert "carries" in str(refused.value)


async def test_a_name_resolving_to_6to4_of_a_private_address_is_refused() -> None:
    async def resolver(_host: str, _port: int) -> list[str]:
        return ["2002:c0a8:101::1"]  # 192.168.1.1

    with pytest.raises(UnsafeWebhookTarget, match=r"192\.168\.1\.1"):
        await check_target("https://hooks.example/in", allow_private=False, resolver=resolver)


async def test_an_embedded_public_ipv4_is_accepted() -> None:
    await check_target("https://[2002:5db8:d70e::1]/hook", allow_private=False)  # 93.184.215.14


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_sqlite_database_and_its_wal_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "tellonce.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT x FROM t"))).scalar_one() == 1
            wal = Path(f"{path}-wal")
            assert wal.exists()
            assert _mode(wal) == 0o600
            assert _mode(Path(f"{path}-shm")) == 0o600
        assert _mode(path) == 0o600
    finally:
        await engine.dispose()


async def test_an_existing_0644_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await engine.dispose()
    assert _mode(path) == 0o600
