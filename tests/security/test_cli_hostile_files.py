"""Hostile content in the files the ``tellonce`` command line reads.

Every file the CLI reads (policy folders, import files and their reject files, audit
bundles, key files, the witness's state, the data directory's keys) may be empty, a
folder, a symlink loop, not UTF-8, nested past any parser's stack or shaped wrongly. Each
is one line naming the file (and the line where one applies) and a documented exit code:
never a Python traceback, and never a value the file holds.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from service.audit.checkpoint import NoteSigner
from service.audit.merkle import leaf_hash
from service.audit.releases import ReleaseChecker
from service.audit.schemas import canonical_json
from service.policy.loader import load_policy_folder
from service.policy.signing import OwnerSigner, OwnerVerifier
from service.policy.signing_files import write_private_key
from service.sourcefile import SourceFileError
from service.witness.cosignature import CosignatureSigner

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"


def _cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command, as an operator runs it, in ``tmp_path``."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={
            **os.environ,
            "TELLONCE_ENV": "test",
            "TELLONCE_DATA_DIR": str(tmp_path / "data"),
            "TELLONCE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tellonce.db'}",
            **env,
        },
    )


def _one_line(result: subprocess.CompletedProcess[str], code: int, *names: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    for name in names:
        assert name in result.stderr, result.stderr


def _unreadable(kind: str, path: Path) -> None:
    """Make ``path`` something that cannot be read as text: a folder, a symlink loop, or a
    file that is not UTF-8 (a UTF-16 byte order mark)."""
    if kind == "folder":
        path.mkdir(mode=0o700)
    elif kind == "symlink loop":
        partner = path.with_name(path.name + ".loop")
        path.symlink_to(partner.name)
        partner.symlink_to(path.name)
    else:
        path.write_bytes(b"\xff\xfeo\x00w\x00n\x00")
        path.chmod(0o600)


UNREADABLE = ["folder", "symlink loop", "utf-16"]


@pytest.mark.parametrize("kind", UNREADABLE)
def test_policies_sign_names_a_policy_file_it_cannot_read(kind: str, tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    _unreadable(kind, folder / "zz.yaml")
    key = tmp_path / "dvla.key"
    write_private_key(key, OwnerSigner.generate("dvla"))
    before = (folder / "dvla.yaml").read_text()
    result = _cli(["policies", "sign", str(folder), "--key", str(key)], tmp_path)
    _one_line(result, 1, f"{folder / 'zz.yaml'}:0: cannot read file:", "nothing signed")
    assert (folder / "dvla.yaml").read_text() == before


@pytest.mark.parametrize("content", ["", "# nothing here\n", "- owner: dvla\n", "dvla\n"])
def test_policies_sign_refuses_a_policy_file_that_is_not_a_mapping_as_apply_does(
    content: str, tmp_path: Path
) -> None:
    # Passed over as "not its department's", it would leave an owner believing all signed.
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    (folder / "zz.yaml").write_text(content)
    key = tmp_path / "dvla.key"
    write_private_key(key, OwnerSigner.generate("dvla"))
    before = (folder / "dvla.yaml").read_text()
    refusal = "a policy file must be a mapping with owner and agreements"
    result = _cli(["policies", "sign", str(folder), "--key", str(key)], tmp_path)
    _one_line(result, 1, f"{folder / 'zz.yaml'}:", refusal, "1 error(s); nothing signed")
    assert (folder / "dvla.yaml").read_text() == before
    # The same refusal, at the same line, as apply's.
    with pytest.raises(SourceFileError) as refused:
        load_policy_folder(folder)
    (applied,) = [str(error) for error in refused.value.errors if "zz.yaml" in str(error)]
    assert applied in result.stderr.splitlines()


# --- audit bundles (audit verify --bundle, audit check-releases) ---------------------------

LOG_KEY = NoteSigner("tellonce.example/audit", Ed25519PrivateKey.generate()).verifier_key()


def _entry_line(entry: dict[str, Any], leaf_index: int = 0) -> str:
    """A bundle line whose leaf hash is its entry's own: it passes the hash check."""
    leaf = base64.b64encode(leaf_hash(canonical_json(entry).encode())).decode()
    record = {"type": "entry", "leaf_index": leaf_index, "entry_id": leaf_index + 1, "leaf_hash": leaf}
    return json.dumps({**record, "entry": entry})


def _bundle(tmp_path: Path, *lines: str) -> Path:
    header = {"type": "bundle", "format": 2, "origin": "tellonce.example/audit", "verifier_key": LOG_KEY}
    path = tmp_path / "bundle.jsonl"
    path.write_text("\n".join([json.dumps({**header, "tree_size": len(lines)}), *lines]) + "\n")
    return path


def test_a_bundle_line_nested_past_the_parser_s_stack_is_not_json(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "[" * 100_000 + "]" * 100_000)
    result = _cli(["audit", "verify", "--bundle", str(bundle), "--key", LOG_KEY], tmp_path)
    _one_line(result, 1, f"audit log does NOT verify: {bundle}:2: not a JSON line")


@pytest.mark.parametrize("levels", [300, 1000])
def test_an_entry_too_deep_to_hash_is_named_by_its_line(levels: int, tmp_path: Path) -> None:
    # orjson reads 1,000 levels; it writes only 255, and ``json``, which writes the entry's
    # canonical bytes then, runs out of stack first at 1,000.
    line = _entry_line({"action": "read"})
    assert line.endswith('"read"}}')
    text = line[: -len("}}")] + ', "deep": ' + "[" * levels + "]" * levels + "}}"
    bundle = _bundle(tmp_path, text)
    result = _cli(["audit", "verify", "--bundle", str(bundle), "--key", LOG_KEY], tmp_path)
    if levels == 300:  # written by ``json``: its hash is not the one recorded
        _one_line(result, 1, "entry 1 at leaf 0 no longer matches its leaf hash")
    else:
        _one_line(result, 1, f"audit log does NOT verify: {bundle}:2: nested too deeply to read")


@pytest.mark.parametrize("columns", [None, [], "time", 0, True])
def test_entry_columns_that_are_not_an_object_fail_verification(columns: Any, tmp_path: Path) -> None:
    # Skipping the column check would let a bundle pass with its columns unchecked.
    record = json.loads(_entry_line({"action": "read"}))
    bundle = _bundle(tmp_path, json.dumps({**record, "columns": columns}))
    for command in ("verify", "check-releases"):
        owner = ["--owner", "dvla", "--owner-key", OwnerSigner.generate("dvla").verifier_key()]
        args = ["audit", command, "--bundle", str(bundle), "--key", LOG_KEY]
        result = _cli([*args, *owner] if command == "check-releases" else args, tmp_path)
        _one_line(result, 1, f"audit log does NOT verify: {bundle}:2: columns is not a JSON object")


@pytest.mark.parametrize(("kind", "line"), [("leaf_hash", 2), ("root_hash", 3)])
def test_a_hash_that_is_not_base64_is_named_by_its_line(kind: str, line: int, tmp_path: Path) -> None:
    entry = json.loads(_entry_line({"action": "read"}))
    checkpoint = {"type": "checkpoint", "tree_size": 1, "root_hash": entry["leaf_hash"], "note": "x"}
    (entry if kind == "leaf_hash" else checkpoint)[kind] = "not base64!"
    # Checkpoints are opened before the entries are read: one for the root hash only.
    lines = [json.dumps(entry), *([json.dumps(checkpoint)] if kind == "root_hash" else [])]
    bundle = _bundle(tmp_path, *lines)
    result = _cli(["audit", "verify", "--bundle", str(bundle), "--key", LOG_KEY], tmp_path)
    _one_line(result, 1, f"audit log does NOT verify: {bundle}:{line}: {kind} is not base64")


def test_check_releases_of_entries_the_service_never_writes_is_a_verdict(tmp_path: Path) -> None:
    owner_key = OwnerSigner.generate("dvla").verifier_key()
    catalog = {"fields": [{"name": "licence_status", "owner": "dvla"}]}
    entries: list[dict[str, Any]] = [
        {"action": "catalog-change", "document": json.dumps(catalog)},
        {"action": "read", "department": "dwp", "fields_released": [["licence_status"]]},
        {"action": "policy-change", "decision": "permit", "reasons": {"0": 1}, "document": "{}"},
        {"action": "consent-change", "citizen_id": "c1", "reasons": True},
    ]
    bundle = _bundle(tmp_path, *(_entry_line(entry, index) for index, entry in enumerate(entries)))
    args = ["audit", "check-releases", "--bundle", str(bundle), "--owner", "dvla", "--owner-key", owner_key]
    result = _cli([*args, "--key", LOG_KEY], tmp_path)
    # Every entry is read; the verdict is on the log, which no checkpoint signs.
    _one_line(result, 1, "audit log does NOT verify: the log holds no signed checkpoint")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_consent_terms = st.builds(
    lambda expiry, fields: json.dumps({"expires_at": expiry, "fields": fields, "consumer": "dwp"}),
    st.sampled_from(["2026-06-01T00:00:00+00:00", "2026-06-01T00:00:00", "2026-06-01", None]),
    st.just(["licence_status"]) | _json,
)
_logged_entry = st.fixed_dictionaries(
    {"citizen_id": st.just("c1") | _json},
    optional={
        "action": st.sampled_from(["policy-change", "consent-change", "objection-change", "read"]) | _json,
        "decision": st.just("permit") | _json,
        "reasons": st.just([{"agreement": "a1", "effect": "active", "field": "licence_status"}]) | _json,
        "document": _consent_terms | st.text(max_size=4) | _json,
        "fields_released": st.just(["licence_status"]) | _json,
        "department": st.just("dwp") | _json,
        "time": st.sampled_from(["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00"]) | _json,
        "purpose": _json,
        "case_ref": _json,
        "citizen_status": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_logged_entry, min_size=1, max_size=4))
def test_release_checker_reads_any_json_entry(entries: list[dict[str, Any]]) -> None:
    """Whatever JSON a bundle's entries hold, each is judged, never a crash."""
    signer = OwnerSigner.generate("dvla")
    checker = ReleaseChecker("dvla", OwnerVerifier.parse(signer.verifier_key(), "dvla"))
    catalog = {"fields": [{"name": "licence_status", "owner": "dvla"}]}
    checker.add(0, "entry 1", {"action": "catalog-change", "document": json.dumps(catalog)})
    for index, entry in enumerate(entries, 1):
        checker.add(index, f"entry {index + 1}", entry)
    checker.finish()


# --- keys given as files (--key, --witness, --owner-key, --log) ------------------------------

# Shaped as a key, wrong inside: the refusal names the rule and the file, never the text.
_BAD_KEY = "audit.example+zz00+S3cretKeyMaterialQQ=="


@pytest.mark.parametrize(
    ("command", "option", "code"),
    [
        ("verify", "--key", 2),
        ("verify", "--witness", 2),
        ("check-releases", "--owner-key", 2),
        ("check-releases", "--key", 2),
        ("serve", "--log", 2),
        ("serve", "--key", 2),
    ],
)
def test_a_key_file_that_does_not_parse_is_named(
    command: str, option: str, code: int, tmp_path: Path
) -> None:
    bad = tmp_path / "given.key"
    bad.write_text(("PRIVATE+KEY+" if (command, option) == ("serve", "--key") else "") + _BAD_KEY + "\n")
    bad.chmod(0o600)
    bundle = _bundle(tmp_path)
    given = {option: str(bad)}
    if command == "serve":
        witness_key = tmp_path / "witness.key"
        witness_key.write_text(CosignatureSigner.generate("witness.example/w").private_key_text())
        witness_key.chmod(0o600)
        args = ["witness", "serve", "--port", "1", "--state", str(tmp_path / "state.db")]
        args += ["--key", given.get("--key", str(witness_key)), "--log", given.get("--log", LOG_KEY)]
    else:
        args = ["audit", command, "--bundle", str(bundle), "--key", given.get("--key", LOG_KEY)]
        if command == "verify" and option == "--witness":
            args += ["--witness", str(bad)]
        if command == "check-releases":
            owner_key = OwnerSigner.generate("dvla").verifier_key()
            args += ["--owner", "dvla", "--owner-key", given.get("--owner-key", owner_key)]
    result = _cli(args, tmp_path)
    _one_line(result, code, f"{bad}: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "S3cret" not in result.stderr


# --- the witness's state file (witness serve --state) ---------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("folder", "not a regular file"),
        ("symlink loop", "Too many levels of symbolic links"),
        ("not sqlite", "file is not a database"),
    ],
)
def test_witness_serve_names_a_state_file_it_cannot_use(kind: str, reason: str, tmp_path: Path) -> None:
    key = tmp_path / "witness.key"
    key.write_text(CosignatureSigner.generate("witness.example/w").private_key_text())
    key.chmod(0o600)
    state = tmp_path / "state.db"
    if kind == "not sqlite":
        state.write_bytes(b"national id QQ123456C, not a database\n" * 100)
    else:
        _unreadable(kind, state)
    mode = state.lstat().st_mode
    result = _cli(
        ["witness", "serve", "--port", "1", "--key", str(key), "--state", str(state), "--log", LOG_KEY],
        tmp_path,
    )
    _one_line(result, 2, f"cannot start the witness: cannot use the state file {state}: {reason}")
    assert "QQ123456C" not in result.stderr
    if kind == "folder":  # refused as it is: a folder's mode is not the state file's 0600
        assert state.lstat().st_mode == mode


# --- the data directory's keys ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "symlink loop"])
def test_an_audit_checkpoint_key_that_cannot_be_read_is_one_line(kind: str, tmp_path: Path) -> None:
    key = tmp_path / "data" / "audit-checkpoint.key"
    key.parent.mkdir(mode=0o700)
    _unreadable(kind, key)
    result = _cli(["audit", "export", "--out", str(tmp_path / "bundle.jsonl")], tmp_path)
    _one_line(result, 2, f"tellonce: cannot use the audit checkpoint key: {key} cannot be read: ")


@pytest.mark.parametrize(
    ("kind", "problem"),
    [("folder", "cannot be read"), ("symlink loop", "cannot be read"), ("utf-16", "is not base64")],
)
def test_a_root_key_file_that_cannot_be_read_is_one_line(kind: str, problem: str, tmp_path: Path) -> None:
    key = tmp_path / "data" / "root.key"
    key.parent.mkdir(mode=0o700)
    _unreadable(kind, key)
    rows = tmp_path / "rows.csv"
    rows.write_text("national_id,given_name\nQQ123456C,Alice\n")
    result = _cli(["import", "--department", "register", str(rows)], tmp_path)
    _one_line(result, 2, f"tellonce: cannot use the root key: the root key in {key} {problem}")


def test_a_pkcs11_pin_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    from service.config import Settings
    from service.crypto.errors import RootKeyUnavailable
    from service.crypto.hsm import token_config

    pin = tmp_path / "pin"
    _unreadable("utf-16", pin)
    settings = Settings(
        database_url="sqlite+aiosqlite:///:memory:",
        key_provider="pkcs11",
        pkcs11_module="/nonexistent/libsofthsm2.so",
        pkcs11_token_label="tellonce",
        pkcs11_pin_file=pin,
    )
    with pytest.raises(
        RootKeyUnavailable, match=f"the PKCS#11 PIN in {pin} cannot be read \\(not UTF-8 text\\)"
    ):
        token_config(settings)


def test_a_signing_key_manifest_nested_past_the_parser_s_stack_cannot_be_parsed(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "signing-keys"
    folder.mkdir(parents=True, mode=0o700)
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    result = _cli(["auth", "rotate-signing-key"], tmp_path)
    _one_line(
        result, 2, f"the access-token signing-key manifest in {folder / 'manifest.json'} cannot be parsed"
    )


# --- tellonce import --resume: the reject file an earlier run wrote ------------------------------


@pytest.mark.parametrize(
    ("rows", "refusal"),
    [
        ("9" * 5000 + ",x\n", None),  # past int()'s 4,300 digits: past any committed line
        ("1," + "x" * (17 << 20) + "\n", "field larger than field limit"),
    ],
)
def test_resume_reads_a_hostile_reject_file_without_a_traceback(
    rows: str, refusal: str | None, tmp_path: Path
) -> None:
    from service.records.cli import _RejectFile
    from service.records.importing import ImportRefused

    path = tmp_path / "rejects.csv"
    path.write_text("line,reason\n2,kept\n" + rows)
    if refusal is None:
        _RejectFile(path, keep_up_to_line=10).close()
        assert path.read_bytes() == b"line,reason\r\n2,kept\r\n"
        return
    with pytest.raises(
        ImportRefused, match=f"the reject file to resume is not one an import wrote .*{refusal}"
    ):
        _RejectFile(path, keep_up_to_line=10)


# --- the console's single sign-on role map (TELLONCE_CONSOLE_OIDC_ROLE_MAP) ------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[" * 3000 + "]" * 3000, ":1: nested deeper than 64 levels"),
        ("claim: groups\nrules: &r [*r]\n", ":2: YAML anchors and aliases (&, *) are not supported"),
        ("claim: gro\x07ups\n", ":1: invalid YAML: character #x0007 is not allowed"),
    ],
)
def test_serve_refuses_a_hostile_role_map_in_one_line(content: str, problem: str, tmp_path: Path) -> None:
    role_map = tmp_path / "roles.yaml"
    role_map.write_text(content)
    result = _cli(
        ["serve", "--port", "1"],
        tmp_path,
        TELLONCE_CONSOLE_OIDC_ISSUER="https://id.example",
        TELLONCE_CONSOLE_OIDC_CLIENT_ID="console",
        TELLONCE_CONSOLE_OIDC_CLIENT_SECRET="console-secret-7f3a",
        TELLONCE_CONSOLE_OIDC_ROLE_MAP=str(role_map),
    )
    _one_line(result, 2, "tellonce: invalid settings: ", f"not a valid console role map ({role_map}{problem}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "console-secret-7f3a" not in result.stderr
