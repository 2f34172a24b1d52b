"""Field encryption costs against raw AES-GCM, the data-key cache, and rotation throughput.

- per-field encrypt/decrypt through ``service.crypto.aead`` vs a bare ``AESGCM`` call on
  the same plaintext with a fresh nonce (goal: under 1.5x);
- ``Keyring.data_keys`` on a cache hit vs a miss (row read + unwrap under the KEK);
- ``rotate_department`` over 100k data keys in a scratch SQLite database, in data keys per
  second, vs rewrapping the same keys in memory with no database;
- with SoftHSM2 (``TELLONCE_KEY_PROVIDER=pkcs11``): one data-key unwrap in the token vs
  under a local KEK, and ``Keyring.data_keys`` warm (cache hit) and cold with each
  provider: once warm the read path does not touch the token, so the cost is unchanged.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from bench import goals
from service.crypto import service as key_service
from service.crypto.aead import DataKey, decrypt_value, encrypt_value
from service.crypto.keyring import DATA_KEYS, Keyring
from service.crypto.material import KeyMaterial
from service.crypto.providers import LocalKeyProvider
from service.db import create_engine, utcnow
from service.schema import upgrade_async

PLAINTEXT = b"Wrenfield Lane 42, AB1 2CD"
ROTATION_KEYS = 100_000


def paired(
    ours: Callable[[], object], raw: Callable[[], object], rounds: int = 40, number: int = 10_000
) -> tuple[float, float]:
    """Best-of timings in microseconds per call, the two interleaved round by round so
    that the shared machine's noise falls on both alike. Timed in this thread's CPU time:
    the calls never wait, so waiting for a core (the shared machine's noise) is left out."""
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for slot, function in enumerate((ours, raw)):
            started = time.thread_time()
            for _ in range(number):
                function()
            best[slot] = min(best[slot], (time.thread_time() - started) / number)
    return best[0] * 1e6, best[1] * 1e6


def field_costs() -> None:
    material = secrets.token_bytes(32)
    key = DataKey(123456, "register", 1, material)
    raw = AESGCM(material)
    citizen = str(uuid.uuid4())
    sealed = encrypt_value(key, citizen_id=citizen, field="address", version=3, plaintext=PLAINTEXT)
    nonce = os.urandom(12)
    raw_sealed = raw.encrypt(nonce, PLAINTEXT, None)
    raw_sealed_ad = raw.encrypt(
        nonce, PLAINTEXT, b"\x01" + key.id.to_bytes(8, "big") + b"citizen, field and version"
    )

    ours_enc, raw_enc = paired(
        lambda: encrypt_value(key, citizen_id=citizen, field="address", version=3, plaintext=PLAINTEXT),
        lambda: raw.encrypt(os.urandom(12), PLAINTEXT, None),
    )
    associated = b"\x01" + key.id.to_bytes(8, "big") + b"citizen, field and version"
    ours_dec_ad, raw_dec_ad = paired(
        lambda: decrypt_value(key, citizen_id=citizen, field="address", version=3, ciphertext=sealed),
        lambda: raw.decrypt(nonce, raw_sealed_ad, associated),
    )
    ours_dec, raw_dec = paired(
        lambda: decrypt_value(key, citizen_id=citizen, field="address", version=3, ciphertext=sealed),
        lambda: raw.decrypt(nonce, raw_sealed, None),
    )
    print(
        f"field encrypt ({len(PLAINTEXT)} B): {ours_enc:.2f} us vs raw AESGCM {raw_enc:.2f} us "
        f"-> {ours_enc / raw_enc:.2f}x"
    )
    print(
        f"field decrypt ({len(PLAINTEXT)} B): {ours_dec:.2f} us vs raw AESGCM {raw_dec:.2f} us "
        f"-> {ours_dec / raw_dec:.2f}x"
    )
    print(
        f"field decrypt vs raw AESGCM given a same-size associated data: {ours_dec_ad:.2f} us vs "
        f"{raw_dec_ad:.2f} us -> {ours_dec_ad / raw_dec_ad:.2f}x"
    )
    goals.check("field decrypt / raw AESGCM", ours_dec / raw_dec, 1.5, at_most=True)


async def build_keys(url: str, keyring: Keyring, count: int) -> None:
    """``count`` citizens with a register data key each, inserted in bulk."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            kek = await keyring.active_kek(conn, "register")
            now = utcnow()
            stamp = now.replace(tzinfo=None).isoformat(sep=" ")
            for start in range(0, count, 10_000):
                ids = [str(uuid.uuid4()) for _ in range(min(10_000, count - start))]
                # The driver's executemany: the quickest bulk path on SQLite.
                await conn.exec_driver_sql(
                    "INSERT INTO citizens (id, status, version, registered_by, created_at, updated_at) "
                    "VALUES (?, 'active', 1, 'bench', ?, ?)",
                    [(i, stamp, stamp) for i in ids],
                )
                await conn.exec_driver_sql(
                    "INSERT INTO data_keys (citizen_id, department, kek_version, status, wrapped_key, "
                    "created_at) VALUES (?, 'register', ?, 'active', ?, ?)",
                    [(i, kek.version, kek.wrap(KeyMaterial(secrets.token_bytes(32)), i), stamp) for i in ids],
                )
    finally:
        await engine.dispose()


async def cache_costs(url: str, keyring: Keyring) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            key_id = 1
            await keyring.data_keys(conn, [key_id])
            rounds = 2000
            started = time.perf_counter()
            for _ in range(rounds):
                await keyring.data_keys(conn, [key_id])
            hit = (time.perf_counter() - started) / rounds * 1e6
            started = time.perf_counter()
            for n in range(rounds):
                # A different key each time, so every call reads and unwraps a row.
                await keyring.data_keys(conn, [n + 2])
            miss = (time.perf_counter() - started) / rounds * 1e6
            started = time.perf_counter()
            for n in range(rounds):
                # Baseline for a miss: the same one-row read with no unwrapping.
                (await conn.execute(select(DATA_KEYS.c.wrapped_key).where(DATA_KEYS.c.id.in_([n + 2])))).all()
            bare_read = (time.perf_counter() - started) / rounds * 1e6
    finally:
        await engine.dispose()
    print(
        f"data key, cache hit: {hit:.2f} us; miss (SQLite row read + unwrap): {miss:.2f} us "
        f"-> miss/hit {miss / hit:.1f}x"
    )
    print(
        f"data key miss vs a bare one-row read on the same connection: {miss:.2f} vs {bare_read:.2f} us "
        f"-> {miss / bare_read:.2f}x"
    )


async def rotation_throughput(url: str, keyring: Keyring) -> None:
    # Baseline: unwrap under the old KEK and wrap under a new one, in memory only.
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            old = await keyring.active_kek(conn, "register")
        materials = [(str(uuid.uuid4()), KeyMaterial(secrets.token_bytes(32))) for _ in range(20_000)]
        wrapped = [(c, old.wrap(m, c)) for c, m in materials]
        started = time.perf_counter()
        for citizen, blob in wrapped:
            old.wrap(old.unwrap(blob, citizen), citizen)
        baseline = len(wrapped) / (time.perf_counter() - started)

        started = time.perf_counter()
        result = await key_service.rotate_department(engine, keyring, "register", batch_size=2000)
        elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    assert result.rewrapped == ROTATION_KEYS
    rate = result.rewrapped / elapsed
    print(
        f"rotation of {result.rewrapped} data keys (SQLite): {elapsed:.1f} s, {rate:,.0f} keys/s "
        f"vs in-memory rewrap {baseline:,.0f} keys/s -> {baseline / rate:.1f}x slower with storage"
    )


async def storage_benchmarks() -> None:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-crypto-"))
    url = f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    await upgrade_async(url)
    keyring = Keyring(LocalKeyProvider(KeyMaterial(secrets.token_bytes(32))))
    started = time.perf_counter()
    await build_keys(url, keyring, ROTATION_KEYS)
    print(f"built {ROTATION_KEYS} data keys in {time.perf_counter() - started:.1f} s")
    await cache_costs(url, keyring)
    await rotation_throughput(url, keyring)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{folder / 'bench.db'}{suffix}").unlink(missing_ok=True)
    folder.rmdir()


async def _cold_keys(url: str, keyring: Keyring, ids: list[int]) -> float:
    """Microseconds per ``data_keys`` call, each id once (row read + unwrap), filling the cache."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            started = time.perf_counter()
            for key_id in ids:
                await keyring.data_keys(conn, [key_id])
            return (time.perf_counter() - started) / len(ids) * 1e6
    finally:
        await engine.dispose()


async def _warm_keys(urls: dict[str, str], keyrings: dict[str, Keyring], ids: list[int]) -> dict[str, float]:
    """Best-of microseconds per cache-hit ``data_keys`` call, the keyrings interleaved."""
    best = dict.fromkeys(keyrings, float("inf"))
    engines = {name: create_engine(url) for name, url in urls.items()}
    try:
        for _ in range(7):
            for name, keyring in keyrings.items():
                async with engines[name].connect() as conn:
                    started = time.perf_counter()
                    for key_id in ids:
                        await keyring.data_keys(conn, [key_id])
                    best[name] = min(best[name], (time.perf_counter() - started) / len(ids) * 1e6)
    finally:
        for engine in engines.values():
            await engine.dispose()
    return best


async def hsm_costs() -> None:
    # Imported here: the token store must be configured before python-pkcs11 loads SoftHSM.
    from service.config import Settings
    from service.crypto.hsm import Pkcs11KeyProvider
    from tests.fixtures.softhsm import PIN, TOKENS, make_token_store

    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-hsm-"))
    store = make_token_store(folder)
    os.environ["SOFTHSM2_CONF"] = str(store.conf)
    settings = Settings(
        env="test",
        key_provider="pkcs11",
        pkcs11_module=store.module,
        pkcs11_token_label=TOKENS[0],
        pkcs11_pin=PIN,  # type: ignore[arg-type]
    )
    local = Keyring(LocalKeyProvider(KeyMaterial(secrets.token_bytes(32))))
    hsm = Keyring(Pkcs11KeyProvider.from_settings(settings))
    count = 2000
    keyrings = {"local": local, "pkcs11": hsm}
    urls = {name: f"sqlite+aiosqlite:///{folder / f'{name}.db'}" for name in keyrings}
    cold: dict[str, float] = {}
    unwrap: dict[str, float] = {}
    ids = list(range(1, count + 1))
    for name, keyring in keyrings.items():
        url = urls[name]
        await upgrade_async(url)
        await build_keys(url, keyring, count)
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                kek = await keyring.active_kek(conn, "register")
        finally:
            await engine.dispose()
        citizen = str(uuid.uuid4())
        blob = kek.wrap(KeyMaterial(secrets.token_bytes(32)), citizen)
        started = time.perf_counter()
        for _ in range(count):
            kek.unwrap(blob, citizen)
        unwrap[name] = (time.perf_counter() - started) / count * 1e6
        cold[name] = await _cold_keys(url, keyring, ids)
    warm = await _warm_keys(urls, keyrings, ids)
    print(
        f"data-key unwrap in the token (SoftHSM2, AES-GCM): {unwrap['pkcs11']:.1f} us vs local KEK "
        f"{unwrap['local']:.1f} us -> {unwrap['pkcs11'] / unwrap['local']:.1f}x"
    )
    print(
        f"data_keys cold (row read + unwrap): pkcs11 {cold['pkcs11']:.1f} us vs local {cold['local']:.1f} us "
        f"-> {cold['pkcs11'] / cold['local']:.2f}x"
    )
    print(
        f"data_keys warm (cache hit, the read path): pkcs11 {warm['pkcs11']:.2f} us vs local "
        f"{warm['local']:.2f} us -> {warm['pkcs11'] / warm['local']:.2f}x"
    )
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    field_costs()
    asyncio.run(storage_benchmarks())
    asyncio.run(hsm_costs())


if __name__ == "__main__":
    main()
