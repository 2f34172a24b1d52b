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
from service.sourcefile import MAX_DEPTH, MAX_SOURCE_BYTES, SourceFileError
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


def _apply(folder: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    """``tellonce policies apply FOLDER``, run as a user runs it."""
    env = {**os.environ, "TELLONCE_DATABASE_URL": database_url, "TELLONCE_ENV": "test"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "policies", "apply", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_policies_apply_exits_1_naming_file_and_line(tmp_path: Path, scratch_database: str) -> None:
    folder = _folder(tmp_path, BOMB)
    result = _apply(folder, scratch_database)
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


# Characters YAML does not allow anywhere in a document: PyYAML's reader refused them
# before the parse, with a ReaderError that escaped as a traceback.
NOT_ALLOWED = ["\x00", "\x07", "\x1b", "\ufffe", "\uffff"]


@pytest.mark.parametrize("character", NOT_ALLOWED, ids=[f"U+{ord(c):04X}" for c in NOT_ALLOWED])
def test_a_character_yaml_does_not_allow_is_a_problem_on_its_line(tmp_path: Path, character: str) -> None:
    folder = _folder(tmp_path, f"owner: register\nagreements: []\nnote: 'a{character}b'\n")
    with pytest.raises(SourceFileError) as caught:
        load_policy_folder(folder)
    assert [str(e) for e in caught.value.errors] == [
        f"{folder / 'register.yaml'}:3: invalid YAML: character #x{ord(character):04x} is not allowed"
    ]


@pytest.mark.parametrize(
    "nested",
    [
        "agreements: " + "[" * 5000 + "]" * 5000,
        "agreements:\n" + "".join("  " * depth + "- \n" for depth in range(1, 300)),
        "agreements: " + "{a: " * 5000 + "1" + "}" * 5000,
    ],
    ids=["flow-lists", "block-lists", "flow-mappings"],
)
def test_nesting_deeper_than_the_limit_is_refused_before_it_is_built(tmp_path: Path, nested: str) -> None:
    # Built, it overflowed Python's stack (RecursionError) in PyYAML's composer.
    folder = _folder(tmp_path, f"owner: register\n{nested}\n")
    with pytest.raises(SourceFileError) as caught:
        load_policy_folder(folder)
    [error] = caught.value.errors
    assert error.file == str(folder / "register.yaml")
    assert error.message == f"nested deeper than {MAX_DEPTH} levels"


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path, "owner: register\nagreements: []\nnote: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    )
    with pytest.raises(SourceFileError) as caught:
        load_policy_folder(folder)
    # Read whole: what is left is the policy file's own problem with the unknown key.
    assert all(
        "nested deeper" not in e.message and "invalid YAML" not in e.message for e in caught.value.errors
    )


@pytest.mark.parametrize("bad", ["note: 'a\x07b'", "agreements: " + "[" * 3000], ids=["U+0007", "deep"])
def test_policies_apply_exits_1_naming_the_line_not_a_traceback(
    tmp_path: Path, scratch_database: str, bad: str
) -> None:
    folder = _folder(tmp_path, f"owner: register\n{bad}\n")
    result = _apply(folder, scratch_database)
    assert result.returncode == 1
    assert f"{folder / 'register.yaml'}:2:" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "\x07" not in result.stdout + result.stderr
