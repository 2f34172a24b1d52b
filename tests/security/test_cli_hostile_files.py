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

from service.audit.checkpoint import NoteSigner
from service.audit.merkle import leaf_hash
from service.audit.schemas import canonical_json
from service.policy.signing import OwnerSigner
from service.policy.signing_files import write_private_key

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
