"""``tellonce records reindex`` from normalisation 2 to 3: whitespace inside an id.

Under normalisation 2 whitespace inside a value was kept, in the stored value and in its
blind index, so "NI 1A 2B ..." and "NI1A2B..." were two ids and could be two citizens.
Rows indexed under 2 are rebuilt under the current normalisation, a batch per
transaction; afterwards the citizens that now share one national id are listed (exit 1
from the command). On a committed store of its own: the rebuild commits as it goes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata

import pytest

from service.crypto.blind_index import NORMALISATION_VERSION
from service.db import Database
from service.records import values
from service.records.reindex import rebuild_blind_indexes
from tests.conftest import REPO_ROOT
from tests.fixtures.legacy_index import index_versions, registered_under
from tests.records.conftest import RecordsEnv
from tests.records.test_national_ids import grouped, holder, new_national_id, register_as, stored_national_id


def _identifier_v2(raw: str) -> str:
    """The stored spelling as normalisation 2 made it: NFKC and trimmed, spaces inside kept."""
    canonical = unicodedata.normalize("NFKC", raw).strip()
    if not canonical or any(unicodedata.category(ch) in ("Cf", "Cc") for ch in canonical):
        raise values.ValueRejected("not an identifier under normalisation 2")
    return canonical


def _normalise_v2(value: str) -> str:
    """What normalisation 2 hashed: whitespace inside kept."""
    composed = unicodedata.normalize("NFKC", value)
    visible = "".join(ch for ch in composed if unicodedata.category(ch) not in ("Cf", "Cc"))
    return unicodedata.normalize("NFKC", visible.casefold()).strip()


async def _registered_under_v2(env: RecordsEnv, spelled: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A citizen registered before normalisation 3: its id stored with its spaces, and its
    index computed with them and marked version 2."""
    return await registered_under(
        env, register_as, spelled, monkeypatch, identifier=_identifier_v2, normalise=_normalise_v2, version=2
    )


class TestReindexWhitespace:
    async def test_rebuilds_version_2_rows_resumably_and_reports_a_shared_id(
        self, committed_records_env: RecordsEnv, monkeypatch: pytest.MonkeyPatch, root_key: str
    ) -> None:
        env = committed_records_env
        shared_id, alone_id = new_national_id(), new_national_id()
        legacy_shared = await _registered_under_v2(env, grouped(shared_id), monkeypatch)
        legacy_alone = await _registered_under_v2(env, grouped(alone_id, "\u00a0"), monkeypatch)
        # Before the rebuild the version 2 index hides the spaced registration: the same id
        # unspaced registers a second citizen, and the spaced one is not found unspaced.
        plain_shared = (await register_as(env, shared_id)).json()["id"]
        assert await holder(env, alone_id) is None
        assert await index_versions(env, [legacy_shared, legacy_alone, plain_shared]) == [
            2,
            2,
            NORMALISATION_VERSION,
        ]

        database = Database(env.settings)
        keyring = env.app.state.keyring

        def interrupt(done: int) -> None:
            raise KeyboardInterrupt

        try:
            with pytest.raises(KeyboardInterrupt):
                await rebuild_blind_indexes(database, keyring, batch_size=1, progress=interrupt)
            # The first batch committed before the interruption; the second did not run.
            assert await index_versions(env, [legacy_shared, legacy_alone]) == [NORMALISATION_VERSION, 2]

            result = await rebuild_blind_indexes(database, keyring, batch_size=1)
        finally:
            await database.dispose()

        assert (result.rebuilt, result.changed) == (1, 1)
        versions = await index_versions(env, [legacy_shared, legacy_alone, plain_shared])
        assert versions == [NORMALISATION_VERSION] * 3
        assert result.shared == [sorted([legacy_shared, plain_shared])]
        # Found by either spelling now. The stored value keeps the spelling normalisation 2
        # stored (NFKC made the no-break spaces plain ones): a rebuild changes indexes only.
        assert await holder(env, alone_id) == legacy_alone
        assert await holder(env, grouped(alone_id, "\u2009")) == legacy_alone
        assert await stored_national_id(env, legacy_alone) == grouped(alone_id)
        # And the duplicate check sees it: the unspaced spelling is now refused.
        assert (await register_as(env, alone_id)).status_code == 409

        # The command: nothing left to rebuild, the shared id listed, exit 1.
        command = subprocess.run(
            [sys.executable, "-m", "service.cli", "records", "reindex"],
            env={
                **os.environ,
                "TELLONCE_DATABASE_URL": env.database_url,
                "TELLONCE_ENV": "test",
                "TELLONCE_ROOT_KEY": root_key,
                "TELLONCE_DATA_DIR": str(env.settings.data_dir),
            },
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert command.returncode == 1, command.stdout + command.stderr
        assert "0 blind indexes rebuilt" in command.stdout
        assert legacy_shared in command.stdout
        assert plain_shared in command.stdout
        assert shared_id not in command.stdout + command.stderr
        assert legacy_alone not in command.stdout
