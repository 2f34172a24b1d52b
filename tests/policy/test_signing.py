"""Owner signing keys and signed agreements: the signing text, files, apply and compile."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import AuditEntryRow
from service.audit.policy_changes import connect_policy_changes
from service.audit.schemas import canonical_json
from service.catalog import service as catalog_service
from service.catalog.loader import load_catalog
from service.policy import epoch as policy_epoch
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.policy.models import AgreementVersion
from service.policy.signing import OwnerSigner, OwnerVerifier, SigningKeyError, signing_text, version_digest
from service.policy.signing_files import read_private_key, sign_folder, write_private_key
from service.sourcefile import SourceFileError
from tests.conftest import REPO_ROOT, TEST_POLICIES
from tests.fixtures.cli import run_cli

AGREEMENT = {
    "id": "revenue-reads-licence",
    "consumer": "revenue",
    "fields": ["licence_status"],
    "actions": ["read"],
    "purposes": ["tax-administration"],
    "legal_basis": "Finance Act 2008, s.114 — “quoted”",
}


def signed_folder(tmp_path: Path, *owners: str) -> tuple[Path, dict[str, OwnerSigner]]:
    """A copy of the test policies whose catalog gives each of ``owners`` a key, signed by them."""
    folder = tmp_path / "policies"
    shutil.copytree(TEST_POLICIES, folder, ignore=shutil.ignore_patterns("tests"))
    signers = {owner: OwnerSigner.generate(owner) for owner in owners}
    catalog = yaml.safe_load((folder / "catalog.yaml").read_text())
    for department in catalog["departments"]:
        if department["id"] in signers:
            department["signing_key"] = signers[department["id"]].verifier_key()
    (folder / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    for signer in signers.values():
        sign_folder(folder, signer)
    return folder, signers


def edit_agreement_line(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


class TestSigningText:
    def test_is_the_canonical_json_with_owner_and_without_signature(self) -> None:
        text = signing_text({**AGREEMENT, "signature": "xyz"}, "dvla")
        assert text == canonical_json({**AGREEMENT, "owner": "dvla"})
        assert '"signature"' not in text
        # UTF-8, not \\u escapes, as audit entries.
        assert "“quoted”" in text

    def test_the_readme_command_prints_the_same_text(self) -> None:
        """README, "What is signed": its command, for signing outside tellonce, run as
        written (but with this interpreter) on an agreement sent as JSON."""
        readme = (REPO_ROOT / "README.md").read_text()
        block = readme.split("Outside tellonce, for example:\n\n```\n", 1)[1].split("```", 1)[0]
        assert block.startswith("python -c ")
        command = f"{shlex.quote(sys.executable)} {block.removeprefix('python ')}"
        printed = subprocess.run(
            ["sh", "-c", command],
            input=json.dumps({**AGREEMENT, "signature": "xyz"}),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert printed == signing_text(AGREEMENT, "dvla")

    def test_a_signature_verifies_and_any_change_breaks_it(self) -> None:
        signer = OwnerSigner.generate("dvla")
        verifier = OwnerVerifier.parse(signer.verifier_key(), "dvla")
        signed = signer.signed(AGREEMENT)
        assert verifier.problem(signed, "dvla") is None
        assert "unsigned" in (verifier.problem(AGREEMENT, "dvla") or "")
        widened = {**signed, "purposes": ["tax-administration", "fraud-investigation"]}
        assert "does not verify" in (verifier.problem(widened, "dvla") or "")
        # The owner is signed too: the same text granted as another department fails.
        assert "does not verify" in (verifier.problem(signed, "register") or "")

    def test_a_remembered_signature_vouches_only_for_its_own_key_and_text(self) -> None:
        signer = OwnerSigner.generate("dvla")
        signed = signer.signed(AGREEMENT)
        verifier = OwnerVerifier.parse(signer.verifier_key(), "dvla")
        # Verified twice: the second answer comes from memory, and is the same.
        assert verifier.problem(signed, "dvla") is None
        assert verifier.problem(signed, "dvla") is None
        # Remembering it does not make it verify under another key, for another text or owner.
        other = OwnerVerifier.parse(OwnerSigner.generate("dvla").verifier_key(), "dvla")
        assert "does not verify" in (other.problem(signed, "dvla") or "")
        edited = {**signed, "legal_basis": "none"}
        assert "does not verify" in (verifier.problem(edited, "dvla") or "")
        assert "does not verify" in (verifier.problem(signed, "register") or "")

    def test_digest_covers_the_signature(self) -> None:
        signer = OwnerSigner.generate("dvla")
        signed = signer.signed(AGREEMENT)
        assert version_digest(signed, "dvla") != version_digest(AGREEMENT, "dvla")

    def test_vkey_must_name_the_department(self) -> None:
        signer = OwnerSigner.generate("dvla")
        with pytest.raises(SigningKeyError, match="not the department 'register'"):
            OwnerVerifier.parse(signer.verifier_key(), "register")

    def test_private_key_round_trips_and_hides_itself(self, tmp_path: Path) -> None:
        signer = OwnerSigner.generate("dvla")
        path = tmp_path / "dvla.key"
        write_private_key(path, signer)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        again = read_private_key(path)
        assert again.verifier_key() == signer.verifier_key()
        assert "PRIVATE" not in repr(again)
        with pytest.raises(FileExistsError):
            write_private_key(path, signer)


class TestCatalogKey:
    def test_a_bad_signing_key_is_reported_with_its_line(self, tmp_path: Path) -> None:
        folder, _signers = signed_folder(tmp_path)
        other = OwnerSigner.generate("register")
        edit_agreement_line(
            folder / "catalog.yaml", "- id: dvla\n", f"- id: dvla\n  signing_key: {other.verifier_key()}\n"
        )
        with pytest.raises(SourceFileError) as caught:
            load_catalog(folder)
        assert "catalog.yaml" in str(caught.value)
        assert "not the department 'dvla'" in str(caught.value)


class TestSignFolder:
    def test_signs_in_place_keeping_comments(self, tmp_path: Path) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        text = (folder / "dvla.yaml").read_text()
        original = (TEST_POLICIES / "dvla.yaml").read_text()
        comments = [line for line in original.splitlines() if line.strip().startswith("#")]
        assert all(comment in text for comment in comments)
        assert text.count("signature:") == original.count("- id:")
        loaded = load_policy_folder(folder)
        assert all(a.spec.signature for a in loaded.agreements if a.owner == "dvla")

    def test_signing_again_changes_nothing(self, tmp_path: Path) -> None:
        folder, signers = signed_folder(tmp_path, "dvla")
        before = (folder / "dvla.yaml").read_text()
        report = sign_folder(folder, signers["dvla"])
        assert report.signed == []
        assert (folder / "dvla.yaml").read_text() == before

    def test_a_flow_style_file_is_rewritten_cleanly(self, tmp_path: Path) -> None:
        folder = tmp_path / "policies"
        shutil.copytree(TEST_POLICIES, folder, ignore=shutil.ignore_patterns("tests"))
        spec = {k: v for k, v in AGREEMENT.items() if k != "legal_basis"} | {"legal_basis": "Act"}
        (folder / "dvla.yaml").write_text(
            yaml.safe_dump({"owner": "dvla", "agreements": [spec]}, default_flow_style=True)
        )
        signer = OwnerSigner.generate("dvla")
        report = sign_folder(folder, signer)
        assert report.rewritten == [str(folder / "dvla.yaml")]
        document = yaml.safe_load((folder / "dvla.yaml").read_text())
        verifier = OwnerVerifier.parse(signer.verifier_key())
        assert verifier.problem(document["agreements"][0], "dvla") is None


class TestLoaderRefuses:
    """Unsigned, wrongly signed and signed-then-edited agreements, each as FILE:LINE."""

    def test_unsigned_is_refused_at_its_line(self, tmp_path: Path) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        text = (folder / "dvla.yaml").read_text()
        first_signature = next(line for line in text.splitlines() if "signature:" in line)
        edit_agreement_line(folder / "dvla.yaml", first_signature + "\n", "")
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        [error] = caught.value.errors
        assert error.file.endswith("dvla.yaml")
        assert error.line == 3
        assert "unsigned" in error.message

    def test_wrongly_signed_is_refused(self, tmp_path: Path) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        impostor = OwnerSigner.generate("dvla")
        for path in [folder / "dvla.yaml"]:
            text = path.read_text()
            lines = text.splitlines()
            # Re-sign with a key the catalog does not name.
            document = yaml.safe_load(text)
            first = {k: v for k, v in document["agreements"][0].items() if k != "signature"}
            wrong = impostor.sign(load_policy_folder_spec(first))
            index = next(i for i, line in enumerate(lines) if "signature:" in line)
            lines[index] = lines[index].split("signature:")[0] + f'signature: "{wrong}"'
            path.write_text("\n".join(lines) + "\n")
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        assert [e.line for e in caught.value.errors] == [4]
        assert "does not verify" in caught.value.errors[0].message

    def test_signed_then_edited_is_refused(self, tmp_path: Path) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        edit_agreement_line(
            folder / "dvla.yaml",
            "purposes: [benefit-eligibility]",
            "purposes: [benefit-eligibility, tax-administration]",
        )
        with pytest.raises(SourceFileError) as caught:
            load_policy_folder(folder)
        assert len(caught.value.errors) == 1
        assert "does not verify" in caught.value.errors[0].message

    def test_a_department_without_a_key_works_unsigned(self, tmp_path: Path) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        loaded = load_policy_folder(folder)
        assert any(a.owner == "register" and a.spec.signature is None for a in loaded.agreements)


def load_policy_folder_spec(raw: dict[str, object]) -> dict[str, object]:
    from service.policy.schemas import AgreementSpec

    return AgreementSpec.model_validate(raw).content()


def _cli(*args: str, env_url: str | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TELLONCE_ENV": "test"}
    if env_url is not None:
        env["TELLONCE_DATABASE_URL"] = env_url
    return run_cli(env, *args, stdin=stdin)


class TestCommands:
    def test_keygen_sign_verify(self, tmp_path: Path) -> None:
        folder = tmp_path / "policies"
        shutil.copytree(TEST_POLICIES, folder, ignore=shutil.ignore_patterns("tests"))
        keygen = _cli("owners", "keygen", "--department", "dvla", "--out", str(tmp_path / "dvla.key"))
        assert keygen.returncode == 0, keygen.stderr
        vkey = keygen.stdout.strip()
        assert vkey.startswith("dvla+")
        assert stat.S_IMODE(os.stat(tmp_path / "dvla.key").st_mode) == 0o600
        edit_agreement_line(folder / "catalog.yaml", "- id: dvla\n", f"- id: dvla\n    signing_key: {vkey}\n")
        unsigned = _cli("policies", "verify", str(folder))
        assert unsigned.returncode == 1
        assert "dvla.yaml:3: agreement licence-status-for-welfare: unsigned" in unsigned.stderr
        signed = _cli("policies", "sign", str(folder), "--key", str(tmp_path / "dvla.key"))
        assert signed.returncode == 0, signed.stderr
        verified = _cli("policies", "verify", str(folder))
        assert verified.returncode == 0, verified.stderr
        assert "department(s) with a signing key verified" in verified.stdout

    def test_keygen_never_overwrites(self, tmp_path: Path) -> None:
        (tmp_path / "k").write_text("x")
        result = _cli("owners", "keygen", "--department", "dvla", "--out", str(tmp_path / "k"))
        assert result.returncode == 1
        assert (tmp_path / "k").read_text() == "x"

    def test_keygen_into_a_missing_folder_is_one_line(self, tmp_path: Path) -> None:
        out = tmp_path / "absent" / "dvla.key"
        result = _cli("owners", "keygen", "--department", "dvla", "--out", str(out))
        assert result.returncode == 1
        assert result.stderr == f"cannot write {out}: No such file or directory\n"
        assert result.stdout == ""

    @pytest.mark.parametrize("command", [["policies", "sign", "POLICIES"], ["owners", "sign"]])
    def test_a_key_file_that_is_not_text_is_one_line(self, tmp_path: Path, command: list[str]) -> None:
        key = tmp_path / "binary.key"
        key.write_bytes(b"\xff\xfe\x00\x01")
        key.chmod(0o600)
        args = [str(TEST_POLICIES) if part == "POLICIES" else part for part in command]
        result = _cli(*args, "--key", str(key))
        assert result.returncode == 1
        assert result.stderr == f"{key}: not a signing key file (not UTF-8 text)\n"

    def test_apply_refuses_unsigned_and_stores_nothing(self, tmp_path: Path, scratch_database: str) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        edit_agreement_line(
            folder / "dvla.yaml", "purposes: [benefit-eligibility]", "purposes: [tax-administration]"
        )
        result = _cli("policies", "apply", str(folder), env_url=scratch_database)
        assert result.returncode == 1
        assert "dvla.yaml:" in result.stderr
        assert "does not verify" in result.stderr
        assert "nothing stored" in result.stderr


class TestKeyFileMode:
    """An owner key file other accounts may read or write is refused, as the root key's is:
    one line saying what to run, exit 1, nothing signed, and the file left as it is."""

    def unsigned_folder(self, tmp_path: Path, signer: OwnerSigner) -> Path:
        """A copy of the test policies whose catalog names ``signer``'s key, not signed yet."""
        folder = tmp_path / "policies"
        shutil.copytree(TEST_POLICIES, folder, ignore=shutil.ignore_patterns("tests"))
        edit_agreement_line(
            folder / "catalog.yaml", "- id: dvla\n", f"- id: dvla\n    signing_key: {signer.verifier_key()}\n"
        )
        return folder

    def key_file(self, tmp_path: Path, signer: OwnerSigner, mode: int) -> Path:
        key = tmp_path / "dvla.key"
        write_private_key(key, signer)
        key.chmod(mode)
        return key

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
    @pytest.mark.parametrize("command", [["policies", "sign", "FOLDER"], ["owners", "sign"]])
    def test_a_key_open_to_other_accounts_is_refused(
        self, tmp_path: Path, command: list[str], mode: int
    ) -> None:
        signer = OwnerSigner.generate("dvla")
        folder = self.unsigned_folder(tmp_path, signer)
        before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
        key = self.key_file(tmp_path, signer, mode)
        args = [str(folder) if part == "FOLDER" else part for part in command]

        result = _cli(*args, "--key", str(key), stdin="text to sign\n")

        assert result.returncode == 1, result.stderr
        assert result.stderr == (
            f"the owner key in {key} is open to other accounts (mode {mode:o}): run chmod 600 {key}, "
            "and replace the owner key if anyone else may have read it\n"
        )
        assert result.stdout == ""
        assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
        # Left as it is: tightening it would hide that the key was exposed.
        assert stat.S_IMODE(key.stat().st_mode) == mode

    def test_policies_sign_with_an_owner_only_key_signs(self, tmp_path: Path) -> None:
        signer = OwnerSigner.generate("dvla")
        folder = self.unsigned_folder(tmp_path, signer)
        key = self.key_file(tmp_path, signer, 0o600)

        result = _cli("policies", "sign", str(folder), "--key", str(key))

        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("signed ")
        # The catalog names dvla's key: the folder loads only if each of its agreements verifies.
        assert all(a.spec.signature for a in load_policy_folder(folder).agreements if a.owner == "dvla")

    def test_owners_sign_with_an_owner_only_key_signs(self, tmp_path: Path) -> None:
        signer = OwnerSigner.generate("dvla")
        key = self.key_file(tmp_path, signer, 0o600)

        result = _cli("owners", "sign", "--key", str(key), stdin="text to sign\n")

        assert result.returncode == 0, result.stderr
        assert base64.b64decode(result.stdout.strip()) == signer.sign_text("text to sign")


class TestCompileTimeCheck:
    """A row edited or inserted directly in the database is never compiled."""

    async def test_signed_rows_compile_with_their_digest(self, session: AsyncSession, tmp_path: Path) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="t")
        snapshot = await policy_service.compile_snapshot(await session.connection(), 1)
        assert snapshot.refused == ()
        dvla = [a for a in snapshot.policy.agreements if a.owner == "dvla"]
        assert dvla
        assert all(len(a.digest) == 64 for a in dvla)

    async def test_an_edited_row_is_refused_and_reported(self, session: AsyncSession, tmp_path: Path) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="t")
        row = (
            (
                await session.execute(
                    select(AgreementVersion).where(
                        AgreementVersion.owner == "dvla", AgreementVersion.is_current
                    )
                )
            )
            .scalars()
            .first()
        )
        assert row is not None
        edited = {**row.content, "purposes": [*row.content["purposes"], "tax-administration"]}
        # As an operator would: straight into the table, then the epoch moved on.
        await session.execute(
            update(AgreementVersion).where(AgreementVersion.id == row.id).values(content=edited)
        )
        await policy_epoch.bump_epoch(session)
        refusals: list[None] = []
        holder = policy_service.PolicyHolder(on_refused=lambda: refusals.append(None))
        snapshot = await holder.snapshot(await session.connection())
        assert [r.agreement_id for r in snapshot.refused] == [row.agreement_id]
        assert "does not verify" in snapshot.refused[0].problem
        assert len(refusals) == 1
        assert row.agreement_id not in {a.id for a in snapshot.policy.agreements}

    async def test_an_inserted_row_grants_nothing(self, session: AsyncSession, tmp_path: Path) -> None:
        folder, _signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="t")
        content: dict[str, object] = dict(AGREEMENT)
        agreement_id = f"{AGREEMENT['id']}-x"
        session.add(
            AgreementVersion(
                agreement_id=agreement_id,
                owner="dvla",
                version=1,
                status="active",
                content={**content, "id": agreement_id},
                content_hash="0" * 64,
                author="operator",
                reason="",
                is_current=True,
            )
        )
        await session.flush()
        await policy_epoch.bump_epoch(session)
        snapshot = await policy_service.compile_snapshot(await session.connection(), 2)
        assert [r.agreement_id for r in snapshot.refused] == [agreement_id]
        assert "unsigned" in snapshot.refused[0].problem


class TestKeyChangesAreAudited:
    async def test_changing_and_removing_a_key_logs_old_and_new(
        self, session: AsyncSession, tmp_path: Path
    ) -> None:
        connect_policy_changes()
        first, signers = signed_folder(tmp_path / "one", "dvla")
        await policy_service.apply_folder(session, load_policy_folder(first), author="tests", reason="keys")
        second, new_signers = signed_folder(tmp_path / "two", "dvla")
        await policy_service.apply_folder(
            session, load_policy_folder(second), author="tests", reason="rotate"
        )
        await catalog_service.store(session, load_catalog(TEST_POLICIES), author="tests", reason="no key")
        rows = (
            await session.execute(
                select(AuditEntryRow.canonical)
                .where(AuditEntryRow.action == "catalog-change")
                .order_by(AuditEntryRow.id)
            )
        ).scalars()
        entries = [json.loads(row) for row in rows]
        old, new = signers["dvla"].verifier_key(), new_signers["dvla"].verifier_key()
        key_reasons = [[r["reason"] for r in e["reasons"] if r["effect"] == "signing-key"] for e in entries]
        assert key_reasons == [
            [f"dvla signing key: none -> {old}"],
            [f"dvla signing key: {old} -> {new}"],
            [f"dvla signing key: {new} -> none"],
        ]
        # The whole catalog is in the log, so an owner can see which fields were its own.
        assert all(json.loads(e["document"])["fields"] for e in entries)
        # Each new agreement version's canonical JSON is logged with its digest.
        changes = (
            await session.execute(
                select(AuditEntryRow.canonical).where(AuditEntryRow.action == "policy-change")
            )
        ).scalars()
        for raw in changes:
            entry = json.loads(raw)
            [reason] = entry["reasons"]
            assert reason["digest"] == hashlib.sha256(entry["document"].encode()).hexdigest()

    async def test_a_key_added_then_removed_brings_the_earlier_catalog_back(
        self, session: AsyncSession, tmp_path: Path
    ) -> None:
        connect_policy_changes()
        before = load_catalog(TEST_POLICIES)
        assert await catalog_service.store(session, before, author="tests", reason="no key") == 1
        folder, signers = signed_folder(tmp_path, "dvla")
        await policy_service.apply_folder(session, load_policy_folder(folder), author="tests", reason="key")
        # The very catalog of version 1 again: a new version, not a refusal.
        assert await catalog_service.store(session, before, author="tests", reason="key removed") == 3
        assert (await catalog_service.current(session))[1].signing_keys == {}
        rows = (
            await session.execute(
                select(AuditEntryRow.canonical)
                .where(AuditEntryRow.action == "catalog-change")
                .order_by(AuditEntryRow.id)
            )
        ).scalars()
        reasons = [
            [r["reason"] for r in json.loads(row)["reasons"] if r["effect"] == "signing-key"] for row in rows
        ]
        vkey = signers["dvla"].verifier_key()
        assert reasons[1:] == [[f"dvla signing key: none -> {vkey}"], [f"dvla signing key: {vkey} -> none"]]
