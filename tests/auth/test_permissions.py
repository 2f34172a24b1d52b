"""Visibility is decided on scopes in one place, whatever role carried them."""

from __future__ import annotations

import pytest

from service.auth import permissions
from service.auth.dependencies import Principal
from service.errors import Forbidden

AUDITOR = Principal.with_roles("audit-app", "audit-office", "auditor")
DVLA_OWNER = Principal.with_roles("dvla-owner", "dvla", "data-owner")
CONSUMER = Principal.with_roles("welfare-app", "welfare", "consumer")


class TestSeesAll:
    def test_only_the_auditor_sees_all(self) -> None:
        assert permissions.sees_all(AUDITOR)
        assert not permissions.sees_all(DVLA_OWNER)
        assert permissions.owner_scope(AUDITOR) is None
        assert permissions.owner_scope(DVLA_OWNER) == "dvla"

    def test_a_token_with_the_scope_but_another_role_name_sees_all_too(self) -> None:
        scoped = Principal("c", "x", roles=frozenset(), scopes=frozenset({"audit:read"}))
        assert permissions.sees_all(scoped)


class TestAgreements:
    def test_an_owner_sees_and_changes_only_its_own(self) -> None:
        assert permissions.sees_agreement(DVLA_OWNER, "dvla")
        assert not permissions.sees_agreement(DVLA_OWNER, "register")
        assert permissions.changes_agreement(DVLA_OWNER, "dvla")

    def test_an_auditor_sees_every_agreement_but_changes_none(self) -> None:
        assert permissions.sees_agreement(AUDITOR, "dvla")
        assert not permissions.changes_agreement(AUDITOR, "dvla")
        assert not permissions.may_write_agreements(AUDITOR)
        assert permissions.may_write_agreements(DVLA_OWNER)

    def test_explain_is_about_own_fields_or_own_department(self) -> None:
        assert permissions.may_explain(DVLA_OWNER, "welfare", ["dvla", "dvla"])
        assert permissions.may_explain(DVLA_OWNER, "dvla", ["register"])
        assert not permissions.may_explain(DVLA_OWNER, "welfare", ["dvla", "register"])
        assert not permissions.may_explain(DVLA_OWNER, "welfare", [None])


class TestAudit:
    def test_readers_and_exporters(self) -> None:
        assert permissions.may_read_audit(DVLA_OWNER)
        assert permissions.may_read_audit(AUDITOR)
        assert permissions.may_export_audit(AUDITOR)
        assert not permissions.may_export_audit(DVLA_OWNER)
        with pytest.raises(Forbidden):
            permissions.require_audit_reader(CONSUMER)
