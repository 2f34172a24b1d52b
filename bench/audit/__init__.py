"""Audit benchmarks: durable appends, whole-log verification, and witnessing.

``python -m bench audit`` runs all three; each prints its figures and a ratio against
a baseline measured in the same run.
"""

from __future__ import annotations


def main() -> None:
    from bench.audit import appends, verify, witnesses

    appends.main()
    verify.main()
    witnesses.main()
