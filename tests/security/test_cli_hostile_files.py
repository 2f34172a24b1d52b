"""Hostile content in the files the ``tellonce`` command line reads.

Every file the CLI reads (policy folders, import files and their reject files, audit
bundles, key files, the witness's state, the data directory's keys) may be empty, a
folder, a symlink loop, not UTF-8, nested past any parser's stack or shaped wrongly. Each
is one line naming the file (and the line where one applies) and a documented exit code:
never a Python traceback, and never a value the file holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
