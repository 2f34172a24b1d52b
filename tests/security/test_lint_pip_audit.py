"""`make lint` runs pip-audit through ``scripts/audit_deps.py``: a vulnerability outside the
reviewed baseline fails, an accepted one (by id or alias) does not, and a run that could
look nothing up (no network here) passes but says that nothing was audited."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit_deps.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VULNERABLE = [
    {"name": "jinja2", "version": "2.0", "vulns": [{"id": "PYSEC-2019-217", "aliases": ["CVE-2019-10906"]}]},
    {"name": "httpx", "version": "0.28.1", "vulns": []},
]


def test_a_finding_outside_the_baseline_fails() -> None:
    code, lines = _script().verdict(VULNERABLE, set())
    assert code == 1
    assert "pip-audit: jinja2 2.0: PYSEC-2019-217" in lines


def test_a_reviewed_finding_passes_by_id_or_alias() -> None:
    script = _script()
    assert script.verdict(VULNERABLE, {"PYSEC-2019-217"})[0] == 0
    assert script.verdict(VULNERABLE, {"CVE-2019-10906"})[0] == 0


def test_nothing_audited_passes_and_says_so() -> None:
    code, lines = _script().verdict([{"name": "httpx", "skip_reason": "Dependency not found on PyPI"}], set())
    assert code == 0
    assert "NOT audited" in lines[0]


def test_the_baseline_file_is_empty_after_review() -> None:
    assert _script().baseline() == set()
