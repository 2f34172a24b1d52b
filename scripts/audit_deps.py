"""`make lint`: known vulnerabilities in the installed dependencies, with pip-audit.

Fails (exit 1) on any vulnerability that is not in the reviewed baseline
(`scripts/pip-audit-baseline.txt`: one advisory id per line, then `#` and why it is
accepted). When no vulnerability service can be reached (no network, or a package index
mirror that pip-audit cannot query), it says plainly that nothing was audited and exits 0:
network absence must not fail a build, a finding must.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BASELINE = Path(__file__).with_name("pip-audit-baseline.txt")
NETWORK_SIGNS = ("ConnectionError", "NameResolutionError", "Max retries exceeded", "Temporary failure")


def baseline() -> set[str]:
    ids: set[str] = set()
    for line in BASELINE.read_text().splitlines():
        advisory = line.split("#", 1)[0].strip()
        if advisory:
            ids.add(advisory)
    return ids


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "pip-audit.json"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip_audit",
                "--skip-editable",
                "--progress-spinner",
                "off",
                "--format",
                "json",
                "--output",
                str(report),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if not report.exists():
            if any(sign in result.stderr for sign in NETWORK_SIGNS):
                print("pip-audit: no vulnerability service reachable; dependencies were NOT audited")
                return 0
            print(result.stderr, file=sys.stderr)
            return 1
        dependencies = json.loads(report.read_text())["dependencies"]
    code, lines = verdict(dependencies, baseline())
    for line in lines:
        print(line)
    return code


def verdict(dependencies: list[dict[str, Any]], accepted: set[str]) -> tuple[int, list[str]]:
    """The exit code and the lines to print for pip-audit's JSON ``dependencies``."""
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        return 0, [
            f"pip-audit: none of {len(dependencies)} dependencies could be looked up "
            "(the vulnerability service is not reachable from here); NOT audited"
        ]
    findings = [
        f"pip-audit: {d['name']} {d['version']}: {v['id']}"
        for d in audited
        for v in d.get("vulns", [])
        if v["id"] not in accepted and not accepted & set(v.get("aliases", []))
    ]
    summary = f"pip-audit: {len(audited)} audited, {len(findings)} vulnerabilities outside the baseline"
    return (1 if findings else 0), [*findings, summary]


if __name__ == "__main__":
    sys.exit(main())
