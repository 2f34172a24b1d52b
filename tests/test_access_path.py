"""One access path: only records, crypto and audit may import the ciphertext models."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"
ALLOWED = {"records", "crypto", "audit"}
CIPHERTEXT_MODULES = {"service.records.models", "service.records.repository"}
# The models registry imports every model for Alembic and nothing else.
REGISTRY = {SERVICE / "models.py"}


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


class TestOneAccessPath:
    def test_no_module_outside_records_crypto_audit_imports_ciphertext_models(self) -> None:
        assert offenders(SERVICE) == []

    def test_the_check_catches_an_offender(self, tmp_path: Path) -> None:
        (tmp_path / "events").mkdir()
        (tmp_path / "events" / "leak.py").write_text("from service.records.models import FieldValue\n")
        (tmp_path / "console").mkdir()
        (tmp_path / "console" / "ok.py").write_text("from service.records import service\n")
        assert offenders(tmp_path) == ["events/leak.py"]
