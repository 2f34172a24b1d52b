"""The console's "Verify now" across a change of checkpoint key.

The log of ``tests/audit/test_checkpoint_key_change.py`` (the key lost after it signed some
checkpoints, replaced with ``tellonce init --new-checkpoint-key``, the new one signing on),
served by the app that holds the new key: an auditor pastes the old key's verifier key and
the console applies the rule ``tellonce audit verify --key OLD --key NEW`` applies."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.app import create_app
from service.audit.checkpoint import NoteSigner
from service.audit.config import AuditSettings
from service.audit.models import AuditEntryRow
from service.auth import service as auth_service
from service.config import get_settings
from service.db import create_engine
from tests.audit.test_checkpoint_key_change import (  # noqa: F401 - the fixture used by name
    ChangedLog,
    _grow,
    _label,
    changed_log,
    invoke,
)
from tests.console.test_real_services import sign_in
from tests.console.test_signed_agreements import csrf, error_summary

FIELD = "Verifier keys of replaced checkpoint keys"
RESULT = re.compile(r'<div class="panel [^"]*" id="verify-result".*?</div>\s*</div>', re.S)


def result(page: httpx.Response) -> str:
    found = RESULT.search(page.text)
    assert found is not None, page.text[:3000]
    return html.unescape(found.group(0))


def key_lines(page: httpx.Response) -> list[str]:
    found = re.search(r'<ul class="list" id="verify-keys">(.*?)</ul>', page.text, re.S)
    assert found is not None, page.text[:3000]
    return [html.unescape(line) for line in re.findall(r"<li>(.*?)</li>", found.group(1))]


@dataclass
class Console:
    client: httpx.AsyncClient
    log: ChangedLog

    async def verify(self, keys: str | None, *, token: bool = True) -> httpx.Response:
        """Press "Verify now" with ``keys`` in the field (None: the field left out)."""
        page = await self.client.get("/console/audit/integrity")
        assert page.status_code == 200, page.text[:3000]
        data = {"csrf_token": csrf(page)} if token else {}
        if keys is not None:
            data["replaced_keys"] = keys
        return await self.client.post("/console/audit/integrity/verify", data=data)


async def audit_queries() -> int:
    engine = create_engine(get_settings().database_url)
    try:
        async with engine.connect() as conn:
            statement = select(func.count()).where(AuditEntryRow.action == "audit-query")
            return int(await conn.scalar(statement) or 0)
    finally:
        await engine.dispose()


@pytest.fixture
async def console(changed_log: ChangedLog) -> AsyncIterator[Console]:  # noqa: F811 - the fixture
    """An auditor signed in to the console of the installation whose key was replaced."""
    settings = get_settings().model_copy(update={"run_workers": False, "log_level": "WARNING"})
    engine = create_engine(settings.database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            auditor = await auth_service.create_client(session, department="audit-office", roles=["auditor"])
            await session.commit()
    finally:
        await engine.dispose()
    assert auditor.client_secret is not None
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await sign_in(client, auditor.client_id, auditor.client_secret)).status_code == 303
            yield Console(client, changed_log)


class TestVerifyNowAcrossAKeyChange:
    async def test_the_old_key_pasted_verifies_and_each_key_is_named(self, console: Console) -> None:
        log = console.log
        done = await console.verify(log.old.verifier_key() + "\n")
        assert done.status_code == 200
        assert "The log verified" in result(done)
        # The lines `tellonce audit verify --key OLD --key NEW` prints after its verdict.
        assert key_lines(done) == [
            f"checkpoints of size {log.old_sizes[0]} to {log.old_sizes[-1]} ({len(log.old_sizes)}): "
            f"verified with {_label(log.old)}",
            f"checkpoints of size {log.new_sizes[0]} to {log.new_sizes[-1]} ({len(log.new_sizes)}): "
            f"verified with {_label(log.new)}",
        ]
        keys = ("--key", log.old.verifier_key(), "--key", log.new.verifier_key())
        code, out, err = await asyncio.to_thread(invoke, "audit", "verify", *keys)
        assert code == 0, err
        assert out.strip().splitlines()[1:] == key_lines(done)
        # The key is public: it is shown again in the field, for the next check.
        assert f">{log.old.verifier_key()}\n</textarea>" in done.text
        # Anchored on what this auditor verified, the next check says so.
        again = await console.verify(log.old.verifier_key())
        assert "The log verified" in result(again)
        assert f"It still holds the {log.new_sizes[-1]} entries an auditor verified before" in result(again)
        assert await audit_queries() == 2

    @pytest.mark.parametrize("keys", [None, "", "\n  \n"])
    async def test_without_the_old_key_it_says_which_key_to_paste_and_where(
        self, console: Console, keys: str | None
    ) -> None:
        log = console.log
        done = await console.verify(keys)
        assert done.status_code == 200
        shown = result(done)
        assert "The log did NOT verify" in shown
        assert (
            f"the checkpoints up to size {log.old_sizes[-1]} were signed by the replaced key "
            f"{_label(log.old)}. This service no longer holds that key"
        ) in shown
        assert f'Paste that key\'s verifier key into "{FIELD}" below and verify again.' in shown
        assert "signature" not in shown
        assert 'id="verify-keys"' not in done.text
        assert await audit_queries() == 1  # the check was made, and recorded

    async def test_a_key_that_is_not_the_replaced_one_is_told_the_same(self, console: Console) -> None:
        stranger = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        done = await console.verify(stranger.verifier_key())
        shown = result(done)
        assert "The log did NOT verify" in shown
        assert f"signed by the replaced key {_label(console.log.old)}" in shown

    async def test_a_key_given_that_signed_nothing_fails_as_on_the_command_line(
        self, console: Console
    ) -> None:
        log = console.log
        stranger = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        done = await console.verify(f"{log.old.verifier_key()}\n{stranger.verifier_key()}")
        assert done.status_code == 200
        shown = result(done)
        assert "The log did NOT verify" in shown
        assert (
            f"{_label(stranger)} verified no checkpoint: each key given must have signed some of the "
            "log's checkpoints (give only the keys that signed it)"
        ) in shown

    async def test_a_forged_checkpoint_still_fails_with_both_keys(self, console: Console) -> None:
        log = console.log
        attacker = NoteSigner(AuditSettings().origin, Ed25519PrivateKey.generate())
        forged = (await _grow(attacker, 4))[-1]
        done = await console.verify(log.old.verifier_key())
        shown = result(done)
        assert "The log did NOT verify" in shown
        assert f"(size {forged}): the note carries no signature by a trusted key" in shown
        assert "replaced key" not in shown
        # The installation's own key is trusted already; pasting it too changes nothing.
        both = await console.verify(f"{log.old.verifier_key()}\n{log.new.verifier_key()}")
        assert f"(size {forged}): the note carries no signature by a trusted key" in result(both)

    async def test_the_old_key_signing_after_the_change_fails(self, console: Console) -> None:
        log = console.log
        late = (await _grow(log.old, 4))[-1]  # the lost key leaked, and signs on
        done = await console.verify(log.old.verifier_key())
        shown = result(done)
        assert "The log did NOT verify" in shown
        assert f"size {late}) is signed by {_label(log.old)}, not by {_label(log.new)}" in shown

    async def test_csrf_is_still_required(self, console: Console) -> None:
        refused = await console.verify(console.log.old.verifier_key(), token=False)
        assert refused.status_code == 403
        assert "This form could not be accepted" in refused.text
        assert await audit_queries() == 0


class TestTheKeysField:
    @pytest.mark.parametrize(
        ("keys", "message"),
        [
            (
                "{old}\nnot a key <script>alert(1)</script>",
                "Line 2 of the verifier keys is not an Ed25519 verifier key: a verifier key is "
                "<name>+<hex key id>+<base64 key>",
            ),
            ("\n\n{old}+", "Line 3 of the verifier keys is not an Ed25519 verifier key"),
            ("\n".join(["{old}"] * 21), f"{FIELD} can hold at most 20 keys; you entered 21"),
            ("{old}" + " " * 9000, f"{FIELD} must be at most 8 KiB"),
        ],
    )
    async def test_bad_keys_are_a_field_error_and_nothing_is_checked(
        self, console: Console, keys: str, message: str
    ) -> None:
        text = keys.replace("{old}", console.log.old.verifier_key())
        refused = await console.verify(text)
        assert refused.status_code == 422
        summary = error_summary(refused)
        assert 'href="#replaced_keys"' in summary
        assert message in summary
        field = re.search(r'<p class="error-message" id="replaced_keys-error">(.*?)</p>', refused.text, re.S)
        assert field is not None, refused.text[:3000]
        assert message in html.unescape(field.group(1))
        assert re.search(
            r'<textarea class="textarea textarea--error" id="replaced_keys" name="replaced_keys"[^>]*'
            r'aria-describedby="replaced_keys-hint replaced_keys-error"',
            refused.text,
        )
        # What was typed is shown again only escaped, and never past the field's limit.
        assert "<script>alert(1)</script>" not in refused.text
        assert len(refused.text) < 30_000
        assert 'id="verify-result"' not in refused.text
        assert await audit_queries() == 0

    async def test_a_script_in_the_field_is_shown_escaped(self, console: Console) -> None:
        refused = await console.verify('"></textarea><script>alert(1)</script>')
        assert refused.status_code == 422
        assert "&lt;/textarea&gt;&lt;script&gt;alert(1)&lt;/script&gt;</textarea>" in refused.text
