"""One access path, and each domain's tables reached only through that domain.

- Only records, crypto and audit may import the ciphertext models.
- No domain names another domain's table as a string: neither ``table("citizens")`` (a
  table clause slips past the import check) nor raw SQL (``SELECT ... FROM citizens``).
  It asks the owning domain's exported functions instead (``records.public``, ...).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import service.models  # noqa: F401 (every model registered, so every table has an owner)
from service.db import Base

SERVICE = Path(__file__).resolve().parent.parent / "service"
ALLOWED = {"records", "crypto", "audit"}
CIPHERTEXT_MODULES = {"service.records.models", "service.records.repository"}
# The models registry imports every model for Alembic and nothing else.
REGISTRY = {SERVICE / "models.py"}
# (file, table) pairs allowed to name another domain's table, each with its reason.
FOREIGN_TABLE_ALLOWED = {
    # The per-request epoch key reads the newest catalog's hash in the same one statement
    # as the epoch row: a policy is compiled against a catalog, and this is the hot path.
    ("policy/epoch.py", "catalog_versions"),
}


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def offenders(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        domain = relative.parts[0] if len(relative.parts) > 1 else None
        if domain in ALLOWED or path in REGISTRY:
            continue
        if _imports(ast.parse(path.read_text(), str(path))) & CIPHERTEXT_MODULES:
            bad.append(str(relative))
    return bad


def table_owners() -> dict[str, str]:
    """Each table's owning domain: the package of the model that maps it."""
    return {
        str(mapper.class_.__tablename__): mapper.class_.__module__.split(".")[1]
        for mapper in Base.registry.mappers
    }


def _named_tables(tree: ast.AST, owners: dict[str, str]) -> set[str]:
    """Tables named as strings: ``table("x", ...)``/``Table("x", ...)`` and raw SQL."""
    names = "|".join(sorted(map(re.escape, owners), key=len, reverse=True))
    in_sql = re.compile(rf'\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+"?({names})\b', re.IGNORECASE)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            first = node.args[0]
            if (
                name in ("table", "Table")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.add(first.value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(in_sql.findall(node.value))
    return {table for table in found if table in owners}


def foreign_tables(root: Path, owners: dict[str, str]) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            continue
        domain, where = relative.parts[0], relative.as_posix()
        for table in sorted(_named_tables(ast.parse(path.read_text(), str(path)), owners)):
            if owners[table] != domain and (where, table) not in FOREIGN_TABLE_ALLOWED:
                bad.append(f"{where}: {table}")
    return bad


class TestOneAccessPath:
    def test_no_module_outside_records_crypto_audit_imports_ciphertext_models(self) -> None:
        assert offenders(SERVICE) == []

    def test_the_check_catches_an_offender(self, tmp_path: Path) -> None:
        (tmp_path / "events").mkdir()
        (tmp_path / "events" / "leak.py").write_text("from service.records.models import FieldValue\n")
        (tmp_path / "console").mkdir()
        (tmp_path / "console" / "ok.py").write_text("from service.records import service\n")
        assert offenders(tmp_path) == ["events/leak.py"]


class TestTablesThroughTheirDomain:
    def test_every_table_has_an_owner(self) -> None:
        owners = table_owners()
        assert owners["citizens"] == "records"
        assert owners["data_keys"] == "crypto"
        assert owners["policy_epoch"] == "policy"

    def test_no_domain_names_another_domains_table(self) -> None:
        assert foreign_tables(SERVICE, table_owners()) == []

    def test_the_check_catches_string_tables_and_raw_sql(self, tmp_path: Path) -> None:
        for domain in ("events", "crypto", "audit", "records"):
            (tmp_path / domain).mkdir()
        (tmp_path / "events" / "clause.py").write_text(
            'from sqlalchemy import column, table\nCITIZENS = table("citizens", column("id"))\n'
        )
        (tmp_path / "crypto" / "raw.py").write_text(
            'REWRITE = "UPDATE field_values SET ciphertext = :c WHERE id = :i"\n'
        )
        (tmp_path / "audit" / "join.py").write_text(
            'Q = "SELECT a.id FROM audit_entries a JOIN citizens c ON 1"\n'
        )
        (tmp_path / "records" / "own.py").write_text('Q = "SELECT id FROM citizens"\n')
        assert foreign_tables(tmp_path, table_owners()) == [
            "audit/join.py: citizens",
            "crypto/raw.py: field_values",
            "events/clause.py: citizens",
        ]
