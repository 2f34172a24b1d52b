"""The README's shell examples, run as written against a running demo.

Every ```sh block runs, in order, in one bash session (so a variable set in one block is
there in the next) with ``set -euo pipefail``, from a folder laid out like a checkout after
``make install`` (``.venv`` and ``policies/`` beside the demo's ``.tellonce/``). A block is
left out only when the line before it says ``<!-- not run by tests/e2e/test_readme.py: why -->``.
The one change made to the text is the port: the demo listens on a free port, not 8000.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.server import free_port

pytestmark = pytest.mark.e2e

README = REPO_ROOT / "README.md"
NOT_RUN = re.compile(r"<!-- not run by tests/e2e/test_readme\.py: (.+?) -->\s*$")
BLOCK = re.compile(r"^```(\S*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def shell_blocks(text: str) -> tuple[list[str], list[str]]:
    """(blocks to run, reasons given for those left out), in README order."""
    run: list[str] = []
    skipped: list[str] = []
    for match in BLOCK.finditer(text):
        if match.group(1) != "sh":
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.search(before)
        if reason:
            skipped.append(reason.group(1))
        else:
            run.append(match.group(2))
    return run, skipped


@pytest.fixture(scope="module")
async def demo_database(database_url: str) -> AsyncIterator[str]:
    url = await create_scratch_database(database_url)
    try:
        yield url
    finally:
        await drop_scratch_database(url)


@pytest.fixture(scope="module")
def demo(
    demo_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, int, dict[str, str]]]:
    """`tellonce demo` serving a small government, from a checkout-shaped folder."""
    workdir = tmp_path_factory.mktemp("readme")
    (workdir / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (workdir / "policies").symlink_to(REPO_ROOT / "policies")
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TELLONCE_") or key == "TELLONCE_ENV"
    }
    env.update({"TELLONCE_ENV": "development", "TELLONCE_DATABASE_URL": demo_database, "COLUMNS": "160"})
    log = (workdir / "demo.out").open("wb")
    process = subprocess.Popen(
        [
            str(workdir / ".venv" / "bin" / "tellonce"),
            "demo",
            "--citizens",
            "50",
            "--duration",
            "2",
            "--port",
            str(port),
        ],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 180
    output = workdir / "demo.out"
    while "serving; press Ctrl-C to stop" not in output.read_text(errors="replace"):
        assert process.poll() is None, output.read_text(errors="replace")
        assert time.monotonic() < deadline, output.read_text(errors="replace")
        time.sleep(0.2)
    try:
        yield workdir, port, env
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class TestReadme:
    def test_blocks_left_out_say_why(self) -> None:
        run, skipped = shell_blocks(README.read_text())
        assert len(run) >= 3
        assert all(reason.strip() for reason in skipped)

    def test_every_shell_example_runs_as_written(self, demo: tuple[Path, int, dict[str, str]]) -> None:
        workdir, port, env = demo
        run, _skipped = shell_blocks(README.read_text())
        script = "set -euo pipefail\n" + "\n".join(run).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        completed = subprocess.run(
            ["bash", "-c", script],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
        out = completed.stdout
        # What the examples promise: a client made, a token got, a citizen found and read,
        # a claim verified without its value, and a refusal as problem+json.
        assert '"client_secret"' in out
        assert '"withheld"' in out
        assert '"date_of_birth": true' in out
        assert '"status": 403' in out
