"""Finding 10: a YAML alias bomb hung ``policies apply``.

Anchors and aliases are refused in policy and catalog files before anything is expanded,
and a file over the size cap is refused unread; ``policies apply`` exits 1 with FILE:LINE.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.policy.loader import load_policy_folder
from service.sourcefile import MAX_SOURCE_BYTES, SourceFileError
from tests.security.conftest import SECURITY_POLICIES


def _bomb(levels: int) -> str:
    """``levels`` levels of nine aliases each: 9**levels strings once expanded."""
    return "\n".join(
        [
            "owner: register",
            'lol0: &l0 "lol"',
            *(f"lol{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels + 1)),
            f"agreements: *l{levels}",
        ]
    )


# 9**9: 387 million strings, the hang that was reported.
BOMB = _bomb(9)


def _folder(tmp_path: Path, register: str, catalog: str | None = None) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "catalog.yaml").write_text(catalog or (SECURITY_POLICIES / "catalog.yaml").read_text())
    (folder / "register.yaml").write_text(register)
    return folder


def test_an_alias_bomb_is_refused_at_its_first_anchor(tmp_path: Path) -> None:
    # A small one (6,561 strings), so that code which expands aliases fails here rather than hangs.
    folder = _folder(tmp_path, _bomb(4))
    with pytest.raises(SourceFileError) as caught:
        load_policy_folder(folder)
    first = caught.value.errors[0]
    assert (first.file, first.line) == (str(folder / "register.yaml"), 2)
    assert "anchors and aliases" in first.message


def test_policies_apply_exits_1_naming_file_and_line(tmp_path: Path, scratch_database: str) -> None:
    folder = _folder(tmp_path, BOMB)
    env = {**os.environ, "TELLONCE_DATABASE_URL": scratch_database, "TELLONCE_ENV": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "policies", "apply", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert f"{folder / 'register.yaml'}:2:" in result.stdout + result.stderr


def test_a_catalog_with_an_anchor_is_refused(tmp_path: Path) -> None:
    catalog = (
        (SECURITY_POLICIES / "catalog.yaml")
        .read_text()
        .replace("  - id: register\n", "  - &reg\n    id: register\n", 1)
    )
    folder = _folder(tmp_path, "owner: register\nagreements: []\n", catalog)
    with pytest.raises(SourceFileError) as caught:
        load_policy_folder(folder)
    assert any(
        e.file.endswith("catalog.yaml") and "anchors and aliases" in e.message for e in caught.value.errors
    )


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    padding = "# " + "x" * 78 + "\n"
    big = "owner: register\nagreements: []\n" + padding * (MAX_SOURCE_BYTES // len(padding) + 1)
    folder = _folder(tmp_path, big)
    with pytest.raises(SourceFileError) as caught:
        load_policy_folder(folder)
    assert [str(e) for e in caught.value.errors] == [
        f"{folder / 'register.yaml'}:1: file is larger than {MAX_SOURCE_BYTES} bytes"
    ]
