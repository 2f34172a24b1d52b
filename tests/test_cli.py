"""The `tellonce` command itself: groups load lazily, help is plain, a bad setting or an
unreachable database is one line and exit 2, and explain refuses names it does not know."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from service.audit.checkpoint import NoteSigner
from service.cli import LAZY_GROUPS
from service.cli import app as cli_app
from service.config import get_settings
from tests.conftest import TEST_POLICIES
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.server import refused_port


class TestLazyGroups:
    def test_help_imports_no_domain(self) -> None:
        # What makes `tellonce --help` quick: no domain, FastAPI or SQLAlchemy import.
        probe = (
            "import sys\n"
            "from typer.testing import CliRunner\n"
            "from service.cli import app\n"
            "result = CliRunner().invoke(app, ['--help'])\n"
            "assert result.exit_code == 0, result.output\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'fastapi', 'uvicorn')"
            " or m.startswith(('service.audit', 'service.policy', 'service.db', 'service.app'))]\n"
            "print(sorted(heavy))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
        )
        assert result.stdout.strip() == "[]"

    def test_help_lists_every_group_with_its_summary(self) -> None:
        result = CliRunner().invoke(cli_app, ["--help"])
        assert result.exit_code == 0
        for name, (_module, _attribute, summary) in LAZY_GROUPS.items():
            assert name in result.stdout
            assert summary.split()[0] in result.stdout
        for name in ("init", "serve", "worker", "db"):
            assert name in result.stdout

    @pytest.mark.parametrize("name", sorted(LAZY_GROUPS))
    def test_each_group_loads_when_run(self, name: str) -> None:
        result = CliRunner().invoke(cli_app, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert f"Usage: tellonce {name}" in result.stdout or f"Usage: root {name}" in result.stdout

    @pytest.mark.parametrize(
        ("args", "sentence"),
        [
            (["import"], "Each row is validated as the API validates"),
            (["audit", "verify"], "and check every checkpoint"),
        ],
    )
    def test_help_rewraps_a_docstring_s_paragraphs(self, args: list[str], sentence: str) -> None:
        # Plain help as at the top level: a docstring's own line breaks are not kept, so a
        # sentence wrapped in the source reads whole (once the terminal's wrapping is undone).
        result = CliRunner().invoke(cli_app, [*args, "--help"], terminal_width=400)
        assert result.exit_code == 0, result.output
        assert sentence in result.stdout
        assert "╭" not in result.stdout

    @pytest.mark.parametrize("args", [["serve", "--help"], ["keygen", "--help"], ["keygen"]])
    def test_python_m_service_witness_prints_as_tellonce_witness_does(self, args: list[str]) -> None:
        # The README: `python -m service.witness` runs the same commands; its help and usage
        # errors read the same, plain as every other command's.
        env = {**os.environ, "COLUMNS": "100"}

        def run(*command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", *command, *args], capture_output=True, text=True, env=env, timeout=60
            )

        alone, tellonce = run("service.witness"), run("service.cli", "witness")
        outputs = (tellonce.stdout, tellonce.stderr)
        named = [text.replace("python -m service.cli", "tellonce") for text in outputs]
        assert [alone.returncode, alone.stdout, alone.stderr] == [tellonce.returncode, *named]
        assert "╭" not in alone.stdout + alone.stderr


class TestInvalidSettings:
    """A bad setting is one line naming it and exit 2, from whichever command reads the
    settings first (the lazily loaded ones included), never a traceback or the value."""

    @pytest.mark.parametrize(
        ("args", "variable", "value"),
        [
            (["import", "--department", "register", "FILE"], "TELLONCE_ROOT_KEY", ""),
            (["audit", "verify"], "TELLONCE_CLIENT_RATE_BURST", "not-a-number-7f3a"),
            (["db", "upgrade"], "TELLONCE_ROOT_KEY", "c2hvcnQta2V5LTdmM2E="),
            (["worker"], "TELLONCE_WORKER_NICE", "20"),
            (["serve"], "TELLONCE_DB_POOL_RECYCLE_SECONDS", "-7"),
            (["worker"], "TELLONCE_DB_POOL_RECYCLE_SECONDS", "soon-7f3a"),
            # The audit and console settings are other classes, with their own prefixes.
            (["audit", "export", "--out", "OUT"], "TELLONCE_AUDIT_ORIGIN", "bad origin-7f3a"),
            (["worker"], "TELLONCE_AUDIT_WITNESS_QUORUM", "-7"),
            (["serve"], "TELLONCE_AUDIT_SEQUENCER_BATCH", "zero-7f3a"),
            (["serve"], "TELLONCE_CONSOLE_PAGE_SIZE", "5017"),
            # A URL no driver of this service reads: not SQLAlchemy's traceback.
            (["keys", "status"], "TELLONCE_DATABASE_URL", "mysql://auditor:s3cret-7f3a@db.example/x"),
            (["audit", "verify"], "TELLONCE_DATABASE_URL", "sqlite:///plain-7f3a.db"),
            (["db", "upgrade"], "TELLONCE_DATABASE_URL", "not-a-url-7f3a"),
            # A witness list that does not parse: one line before serving, not a failed
            # start-up traceback, and the entry (a URL may carry a credential) not echoed.
            (["serve"], "TELLONCE_AUDIT_WITNESSES", "https://w:s3cret-7f3a@w.example/w"),
            (["worker"], "TELLONCE_AUDIT_WITNESSES", "https://w.example/w=not-a-vkey-7f3a"),
        ],
    )
    def test_one_line_and_exit_2(self, args: list[str], variable: str, value: str, tmp_path: Path) -> None:
        register = tmp_path / "register.csv"
        register.write_text("national_id,given_name\nZZ00000000A,Ada\n")
        files = {"FILE": str(register), "OUT": str(tmp_path / "bundle.jsonl")}
        env = {
            **os.environ,
            "TELLONCE_DATA_DIR": str(tmp_path / "data"),
            "TELLONCE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tellonce.db'}",
            variable: value,
        }
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *(files.get(a, a) for a in args)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"tellonce: invalid settings: {variable}: ")
        assert "Traceback" not in result.stderr
        if value:
            assert value not in result.stderr

    def _run_with_witnesses(self, args: list[str], witnesses: str, quorum: str, tmp_path: Path) -> str:
        """``args``' standard error, asserting exit 2."""
        env = {
            **os.environ,
            "TELLONCE_DATA_DIR": str(tmp_path / "data"),
            "TELLONCE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tellonce.db'}",
            "TELLONCE_AUDIT_WITNESSES": witnesses,
            "TELLONCE_AUDIT_WITNESS_QUORUM": quorum,
        }
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        return result.stderr

    @pytest.mark.parametrize("args", [["serve"], ["worker"]])
    def test_a_quorum_above_the_witnesses_is_one_line(self, args: list[str], tmp_path: Path) -> None:
        from service.witness.cosignature import CosignatureSigner

        witness = CosignatureSigner.generate("w.example/w").verifier_key()
        stderr = self._run_with_witnesses(args, f"http://127.0.0.1:9={witness}", "2", tmp_path)
        assert stderr.strip().splitlines() == [
            "tellonce: invalid settings: TELLONCE_AUDIT_WITNESS_QUORUM: "
            "a quorum of 2 needs at least 2 witnesses"
        ]

    @pytest.mark.parametrize("args", [["serve"], ["worker"]])
    @pytest.mark.parametrize("witnesses", ["", " \t"])
    def test_a_quorum_without_witnesses_is_one_line(
        self, args: list[str], witnesses: str, tmp_path: Path
    ) -> None:
        """It was ignored: the operator asked for witnessing and got an unwitnessed log."""
        stderr = self._run_with_witnesses(args, witnesses, "1", tmp_path)
        assert stderr.strip().splitlines() == [
            "tellonce: invalid settings: TELLONCE_AUDIT_WITNESS_QUORUM: "
            "a quorum of 1 is set, but TELLONCE_AUDIT_WITNESSES lists no witness"
        ]


class TestUnusableDatabase:
    """A database that cannot be reached is one line naming it (password masked) and the
    driver's reason, from any command; never a traceback, never an audit verdict."""

    def _run(self, args: list[str], url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TELLONCE_DATABASE_URL": url, "TELLONCE_DATA_DIR": str(tmp_path / "data")}
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    @pytest.mark.parametrize(
        "args",
        [["db", "upgrade"], ["audit", "verify"], ["policies", "apply", "POLICIES"], ["serve", "--no-worker"]],
    )
    def test_refused_connection(self, args: list[str], tmp_path: Path) -> None:
        with refused_port() as port:
            url = f"postgresql+asyncpg://auditor:s3cret-7f3a@127.0.0.1:{port}/register"
            result = self._run([str(TEST_POLICIES) if a == "POLICIES" else a for a in args], url, tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"tellonce: cannot use the database {url.replace('s3cret-7f3a', '***')}: "
            f"Connect call failed ('127.0.0.1', {url.split(':')[-1].split('/')[0]})"
        ]

    @pytest.mark.parametrize("args", [["policies", "apply", "POLICIES"], ["clients", "list"]])
    def test_a_database_never_migrated_is_one_line(
        self, args: list[str], tmp_path: Path, database_url: str
    ) -> None:
        """An empty database (no `tellonce db upgrade` yet) says so, on SQLite and on
        PostgreSQL, instead of a page of traceback."""
        url = asyncio.run(create_scratch_database(database_url, migrate=False))
        try:
            result = self._run([str(TEST_POLICIES) if a == "POLICIES" else a for a in args], url, tmp_path)
        finally:
            asyncio.run(drop_scratch_database(url))
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"tellonce: the database {url} has no schema, or an older one (")
        assert line.endswith("): run `tellonce db upgrade` first")

    def test_import_into_a_database_never_migrated_says_to_migrate(
        self, tmp_path: Path, database_url: str
    ) -> None:
        """Not "stopped by a database error ... run again with --resume": nothing ran."""
        register = tmp_path / "register.csv"
        register.write_text("national_id,given_name\nZZ00000000A,Ada\n")
        url = asyncio.run(create_scratch_database(database_url, migrate=False))
        try:
            result = self._run(["import", "--department", "register", str(register)], url, tmp_path)
        finally:
            asyncio.run(drop_scratch_database(url))
        assert result.returncode == 2, result.stderr
        # After the development root key's creation, if any: one line.
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"tellonce: the database {url} has no schema, or an older one (")
        assert line.endswith("): run `tellonce db upgrade` first")
        assert "--resume" not in result.stderr

    def test_import_keeps_its_resume_advice(self, tmp_path: Path) -> None:
        register = tmp_path / "register.csv"
        register.write_text("national_id,given_name\nZZ00000000A,Ada\n")
        with refused_port() as port:
            url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/register"
            result = self._run(["import", "--department", "register", str(register)], url, tmp_path)
        assert result.returncode == 1, result.stderr
        message = " ".join(result.stderr.split())
        assert "tellonce import: stopped by a database error (Connect call failed" in message
        assert "run again with --resume" in message
        assert "Traceback" not in result.stderr

    def test_the_command_s_own_files_are_not_the_database(self, tmp_path: Path) -> None:
        from service.db import unusable_database

        with pytest.raises(FileNotFoundError) as missing:
            (tmp_path / "absent").read_text()
        assert unusable_database(missing.value) is None
        assert unusable_database(ValueError("no")) is None


class TestPortOutOfRange:
    """A port no socket can bind is a usage error before anything starts, as `demo` does."""

    @pytest.mark.parametrize("command", [["serve"], ["witness", "serve"]])
    @pytest.mark.parametrize("port", ["0", "65536", "99999999"])
    def test_exit_2_naming_the_option(self, command: list[str], port: str, tmp_path: Path) -> None:
        witness = ["--key", str(tmp_path / "k"), "--state", str(tmp_path / "s"), "--log", "x"]
        args = [*command, "--port", port, *(witness if command[0] == "witness" else [])]
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TELLONCE_DATA_DIR": str(tmp_path / "data")},
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert "Invalid value for '--port'" in result.stderr
        assert "Uvicorn running" not in result.stderr


class TestActor:
    """The actor names an operator's audit entries (``operator:NAME``): one the audit's
    client column cannot hold, or a control character, is refused before anything runs."""

    @pytest.mark.parametrize(
        ("args", "env", "reason"),
        [
            (["--actor", "a" * 192], {}, "the actor is at most 191 characters"),
            ([], {"TELLONCE_ACTOR": "ops\x1b[2J"}, "the actor has a control character"),
        ],
    )
    def test_refused_in_one_line_with_exit_2(
        self, args: list[str], env: dict[str, str], reason: str, tmp_path: Path
    ) -> None:
        database = tmp_path / "never-made.db"
        result = CliRunner().invoke(
            cli_app,
            [*args, "clients", "list"],
            env={"TELLONCE_DATABASE_URL": f"sqlite+aiosqlite:///{database}", **env},
        )
        assert result.exit_code == 2
        assert result.stderr == f"tellonce: --actor (or TELLONCE_ACTOR): {reason}\n"
        assert result.stdout == ""
        assert not database.exists()

    def test_the_longest_is_recorded_whole(self) -> None:
        from service import operator

        try:
            operator.choose("a" * operator.MAX_ACTOR_LENGTH)
            assert operator.refusal(operator.current()) is None
            assert len(operator.audit_client_id()) == 200
        finally:
            operator.choose(None)


class TestAuditVerifyExitCodes:
    """Exit 1 is a verdict on the log; what keeps the check from running is exit 2."""

    def test_a_malformed_key_is_a_usage_error(self, tmp_path: Path) -> None:
        bundle = tmp_path / "bundle.jsonl"
        bundle.write_text("")
        result = CliRunner().invoke(
            cli_app, ["audit", "verify", "--bundle", str(bundle), "--key", "not-a-key"]
        )
        assert result.exit_code == 2, result.output
        assert "--key/--witness: a verifier key is" in result.stderr

    @pytest.mark.parametrize("option", ["--key", "--witness", "--owner-key"])
    def test_a_key_file_that_is_not_text_is_a_usage_error(self, tmp_path: Path, option: str) -> None:
        bundle = tmp_path / "bundle.jsonl"
        bundle.write_text("")
        binary = tmp_path / "binary.vkey"
        binary.write_bytes(b"\xff\xfe\x00\x01")
        key = NoteSigner("audit.example/log", Ed25519PrivateKey.generate()).verifier_key()
        if option == "--owner-key":
            args = ["audit", "check-releases", "--bundle", str(bundle), "--owner", "dvla", "--owner-key"]
            args += [str(binary), "--key", key]
        else:
            args = ["audit", "verify", "--bundle", str(bundle), "--key", key, option, str(binary)]
        result = CliRunner().invoke(cli_app, args)
        assert result.exit_code == 2, result.output
        named = "--owner-key" if option == "--owner-key" else "--key/--witness"
        assert result.stderr == f"{named}: cannot read {binary}: not UTF-8 text\n"

    def test_an_unreadable_bundle_is_not_a_verdict(self, tmp_path: Path) -> None:
        key = NoteSigner("audit.example/log", Ed25519PrivateKey.generate()).verifier_key()
        result = CliRunner().invoke(
            cli_app, ["audit", "verify", "--bundle", str(tmp_path / "absent.jsonl"), "--key", key]
        )
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("audit log not checked: ")
        assert "does NOT verify" not in result.stderr

    @pytest.mark.parametrize("env", ["development", "production"])
    def test_a_bundle_without_key_is_refused_before_any_key_is_read(
        self, env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        data = tmp_path / "data"
        monkeypatch.setenv("TELLONCE_ENV", env)
        monkeypatch.setenv("TELLONCE_DATA_DIR", str(data))
        get_settings.cache_clear()
        bundle = tmp_path / "bundle.jsonl"
        bundle.write_text("")
        try:
            result = CliRunner().invoke(cli_app, ["audit", "verify", "--bundle", str(bundle)])
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == (
            "--bundle needs --key: offline verification trusts only the key you give"
        )
        # Not the installation's key: none is made (development) or looked for (production).
        assert not (data / "audit-checkpoint.key").exists()


@pytest.fixture
def applied(scratch_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
    monkeypatch.setenv("TELLONCE_ENV", "test")
    get_settings.cache_clear()
    assert CliRunner().invoke(cli_app, ["policies", "apply", str(TEST_POLICIES)]).exit_code == 0
    yield
    get_settings.cache_clear()


class TestAuditExport:
    def test_a_bundle_that_cannot_be_written_is_one_line(
        self, scratch_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
        monkeypatch.setenv("TELLONCE_ENV", "test")
        monkeypatch.setenv("TELLONCE_DATA_DIR", str(tmp_path / "data"))
        get_settings.cache_clear()
        out = tmp_path / "absent" / "bundle.jsonl"
        try:
            result = CliRunner().invoke(cli_app, ["audit", "export", "--out", str(out)])
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 1, result.output
        assert result.stderr == f"cannot write {out}: No such file or directory\n"


class TestPoliciesExplain:
    ASK = ("--field", "licence_status", "--purpose", "benefit-eligibility")

    def test_known_names_are_decided(self, applied: None) -> None:
        result = CliRunner().invoke(
            cli_app, ["policies", "explain", "--consumer", "welfare", *self.ASK, "--citizen-status", "active"]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["decisions"]["licence_status"]["effect"] == "permit"

    def test_a_held_refusal_says_how_long_it_is_held(
        self, scratch_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # revenue's only delayed-disclosure agreement is the register's: under a case, a
        # refusal of dvla's field cites none and is held for the register's max_delay.
        folder = tmp_path / "policies"
        shutil.copytree(TEST_POLICIES, folder)
        with (folder / "register.yaml").open("a") as register:
            register.write(
                "  - id: fraud-names-for-revenue\n"
                "    consumer: revenue\n"
                "    fields: [given_name]\n"
                "    actions: [read]\n"
                "    purposes: [fraud-investigation]\n"
                '    legal_basis: "Test Act s.20"\n'
                "    disclosure: after-case-closed\n"
                "    max_delay: P30D\n"
            )
        monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
        monkeypatch.setenv("TELLONCE_ENV", "test")
        get_settings.cache_clear()
        try:
            applied = CliRunner().invoke(cli_app, ["policies", "apply", str(folder)])
            assert applied.exit_code == 0, applied.output
            ask = ["policies", "explain", "--consumer", "revenue", "--field", "points"]
            ask += ["--purpose", "fraud-investigation"]
            held = CliRunner().invoke(cli_app, [*ask, "--case-ref", "FRAUD-1"])
            plain = CliRunner().invoke(cli_app, ask)
        finally:
            get_settings.cache_clear()
        assert held.exit_code == 0, held.output
        decision = json.loads(held.stdout)["decisions"]["points"]
        assert (decision["effect"], decision["agreement"], decision["held_for"]) == ("deny", None, "P30D")
        assert "fraud-names-for-revenue" not in held.stdout
        assert plain.exit_code == 0, plain.output
        assert json.loads(plain.stdout)["decisions"]["points"]["held_for"] is None

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--consumer", "wellfare", *ASK], "unknown consumer 'wellfare' (departments: "),
            (["--consumer", "welfare", "--action", "peek", *ASK], "unknown action 'peek'"),
            (
                ["--consumer", "welfare", "--field", "licence_colour", "--purpose", "benefit-eligibility"],
                "unknown field 'licence_colour'",
            ),
            (
                ["--consumer", "welfare", "--field", "licence_status", "--purpose", "curiosity"],
                "unknown purpose 'curiosity'",
            ),
            (["--consumer", "welfare", *ASK, "--citizen-status", "dead"], "unknown citizen status 'dead'"),
        ],
    )
    def test_unknown_names_exit_2_deciding_nothing(
        self, applied: None, args: list[str], message: str
    ) -> None:
        result = CliRunner().invoke(cli_app, ["policies", "explain", *args])
        assert result.exit_code == 2
        assert result.stdout == ""
        assert message in result.stderr
