"""The demo's owner keys: made private in the data dir, and held to the rule of every
secret file when a later run reads them back."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.policy.signing import OwnerSigner
from service.policy.signing_files import write_private_key
from service.sim.policies import SIGNING_OWNERS, owner_key_path, signed_policies
from tests.conftest import DEMO_POLICIES


class TestDemoOwnerKeys:
    def test_made_owner_only_and_reused(self, tmp_path: Path) -> None:
        _folder, first = signed_policies(DEMO_POLICIES, tmp_path)
        for department in SIGNING_OWNERS:
            assert stat.S_IMODE(owner_key_path(tmp_path, department).stat().st_mode) == 0o600
        _folder, second = signed_policies(DEMO_POLICIES, tmp_path)
        assert second == first

    @pytest.mark.parametrize("mode", [0o644, 0o640], ids=oct)
    def test_a_kept_key_open_to_other_accounts_stops_the_demo(self, tmp_path: Path, mode: int) -> None:
        key = owner_key_path(tmp_path, SIGNING_OWNERS[0])
        write_private_key(key, OwnerSigner.generate(SIGNING_OWNERS[0]))
        key.chmod(mode)
        with pytest.raises(RuntimeError) as caught:
            signed_policies(DEMO_POLICIES, tmp_path)
        assert f"the owner key in {key} is open to other accounts (mode {mode:o})" in str(caught.value)
        assert f"run chmod 600 {key}" in str(caught.value)
        assert stat.S_IMODE(key.stat().st_mode) == mode

    def test_a_kept_file_that_is_not_a_key_is_one_message(self, tmp_path: Path) -> None:
        key = owner_key_path(tmp_path, SIGNING_OWNERS[0])
        key.write_text("not a key\n")
        key.chmod(0o600)
        with pytest.raises(RuntimeError, match=r"the owner key of \w+ .* cannot be read: .*make run-reset"):
            signed_policies(DEMO_POLICIES, tmp_path)
