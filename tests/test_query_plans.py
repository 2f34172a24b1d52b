"""Every hot query is served by an index, on SQLite and on PostgreSQL.

The statements are not copied here: they are captured while the real code runs real
requests with real tokens against a served app (raw-driver reads, SQLAlchemy statements),
then each is explained on the same database with the parameters it ran with. A plan
fails if it reads a table, or walks a whole index, without a search key:

- SQLite (``EXPLAIN QUERY PLAN``): any ``SCAN <table>`` step, with or without an index;
  only ``SEARCH`` steps (and ``SCAN CONSTANT ROW``) pass;
- PostgreSQL (``EXPLAIN (FORMAT JSON)``): any ``Seq Scan``, and any index scan without an
  ``Index Cond``;
- on both, a search keyed only by a one-sided range (``rowid>?``, ``id > $1``: from a
  point to the end of the table) when the statement also filters on something else: an
  audit search's first page is ``id > 0 AND purpose = ?``, a search in name and a walk of
  the whole log in fact.

A walk of a whole *partial* index passes on both when the index holds exactly the rows the
statement asks for (all current agreements, say), but not the walk of an index whose
condition only leaves out rows without a key (``blind_index IS NOT NULL``): that index
holds every keyed row, a national id per citizen. Every statement that compares a blind
index must search ``ix_field_values_blind_index`` by its key. The test tables hold a handful of
rows, on which PostgreSQL rightly prefers a sequential scan whatever the indexes, so its
explaining session sets ``enable_seqscan = off``: the plan then shows whether an index
*can* serve the statement, which is what the plan on a large table depends on
(``bench/scale.py`` runs these same paths on the registers it loads, millions of citizens, and
explains them there with sequential scans allowed).

Statements that read no table (inserts of values, ``last_insert_rowid()``, advisory
locks) have nothing to scan. The SQLite audit writer's inserts run on its own sqlite3
connection and are not captured; they are inserts of values.

Not held to this: audit searches filtered *only* by owner or field (comma-wrapped lists
matched with ``LIKE '%,x,%'``, which no B-tree serves), or only by purpose, decision,
action or a time window. Those walk the log in id order from the cursor and stop when a
page is full: quick for a common value, a long read for a rare one on a large log. Each
index on ``audit_entries`` is paid by every audited request, so none is added for them.
The audit filters held here are the ones with an index: citizen and consumer.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from rich.console import Console
from sqlalchemy import event
from sqlalchemy.engine import make_url

from service.app import create_app
from service.audit.service import make_sequencer
from service.auth import service as auth_service
from service.config import Settings
from service.db import Base, SqliteReads, create_session_factory, numbered
from service.policy import epoch as policy_epoch
from service.records import importing
from service.sim import policies as demo_policies
from tests.conftest import DEMO_POLICIES
from tests.fixtures.databases import create_scratch_database, drop_scratch_database

# The hot paths, each with the tables its statements must have touched: a capture that
# silently recorded nothing would otherwise pass.
HOT_PATHS: dict[str, set[str]] = {
    "authentication": {"policy_epoch", "clients", "catalog_versions"},
    "policy and catalog load": {"agreement_versions", "catalog_versions"},
    "secured read": {"citizens", "field_values", "data_keys", "key_encryption_keys"},
    # A read under an agreement the citizen may object to (the demo's open register):
    # each such read asks for the citizen's consents and objections.
    "secured read with consents and objections": {"consents", "objections"},
    "lookup by national id": {"field_values", "citizens", "data_keys"},
    # The duplicate national-id check before a registration, and an import's for a batch.
    "registration": {"field_values"},
    "import": {"field_values", "import_runs"},
    "batch get": {"citizens", "field_values", "data_keys"},
    "access log by citizen": {"citizens", "audit_entries", "audit_leaves"},
    "audit search by citizen": {"audit_entries"},
    "audit search by consumer": {"audit_entries"},
    "audit search by consumer and purpose": {"audit_entries"},
    "audit append and sequencing": {"audit_sequencer", "audit_entries"},
}

_TABLES = re.compile(r'\b(?:FROM|JOIN|UPDATE|INTO)\s+"?(\w+)', re.IGNORECASE)
_EXPLAINED = re.compile(r"^\s*(SELECT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


@dataclass
class Statement:
    path: str
    sql: str
    params: tuple[Any, ...]
    # Placeholders written $1, $2 (asyncpg), or ? (sqlite3, and the raw-driver reads).
    numbered: bool

    @property
    def tables(self) -> set[str]:
        return {name.lower() for name in _TABLES.findall(self.sql)}


@dataclass
class Recorder:
    """Every statement the app runs while a hot path is named, on any of its read paths."""

    path: str | None = None
    statements: list[Statement] = field(default_factory=list)

    def add(self, sql: str, params: Sequence[Any], *, numbered: bool) -> None:
        if self.path is not None:
            self.statements.append(Statement(self.path, sql, tuple(params), numbered))

    @contextmanager
    def named(self, path: str) -> Iterator[None]:
        self.path = path
        try:
            yield
        finally:
            self.path = None

    def of(self, path: str) -> list[Statement]:
        return [s for s in self.statements if s.path == path]


# A partial index's condition that only leaves out rows without a key.
_KEY_PRESENT = re.compile(r"^\(?\w+ IS NOT NULL\)?$", re.IGNORECASE)


def partial_indexes() -> set[str]:
    """The names of the schema's partial indexes (a ``WHERE`` in the index) that a whole
    walk may read: not those whose condition is only ``x IS NOT NULL``, which hold every
    row with a key (the blind-index index: a national id per citizen)."""
    return {
        index.name
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if index.name
        and (sqlite := index.dialect_options["sqlite"].get("where")) is not None
        and (postgresql := index.dialect_options["postgresql"].get("where")) is not None
        and not (_KEY_PRESENT.match(str(sqlite)) and _KEY_PRESENT.match(str(postgresql)))
    }


BLIND_INDEX_INDEX = "ix_field_values_blind_index"
# A statement that searches by blind index: a comparison of the column with a value.
_BLIND_INDEX_SEARCH = re.compile(r"\bblind_index\s*(?:=|IN\b)", re.IGNORECASE)


_ONE_SIDED = re.compile(r"^\((?:rowid|\w+)[<>]=?\?\)$")


def _other_conditions(sql: str) -> bool:
    """Whether the statement's WHERE has more than one condition (a rough split on AND,
    enough for the statements here)."""
    where = re.search(r"\bWHERE\b(.*?)(?:\bORDER BY\b|\bGROUP BY\b|\bLIMIT\b|$)", sql, re.S | re.I)
    return where is not None and re.search(r"\bAND\b", where.group(1), re.I) is not None


def sqlite_scans(plan: Sequence[str], partial: set[str], sql: str = "") -> list[str]:
    """The steps of a SQLite plan that read without a search key: ``SCAN`` of a table or a
    whole (non-partial) index, and a ``SEARCH`` keyed only by a one-sided range (``rowid>?``:
    from a point to the end of the table) when the statement filters on anything else, so
    the walk reads rows it does not return."""
    scans = []
    for step in plan:
        if step.startswith("SEARCH "):
            key = re.search(r"(\([^()]*\))$", step)
            if key and _ONE_SIDED.match(key.group(1)) and _other_conditions(sql):
                scans.append(step)
            continue
        if not step.startswith("SCAN ") or step == "SCAN CONSTANT ROW":
            continue
        walked = re.search(r"USING (?:COVERING )?INDEX (\w+)", step)
        if walked and walked.group(1) in partial:
            continue
        scans.append(step)
    return scans


def postgres_scans(node: dict[str, Any], partial: set[str]) -> list[str]:
    """The nodes of a PostgreSQL plan that read without a search key: ``Seq Scan``, an
    index scan with no ``Index Cond`` (a whole index; a partial one passes), and one keyed
    only by a one-sided range with a ``Filter`` on the rows it walks."""
    scans = []
    kind = node["Node Type"]
    if kind == "Seq Scan":
        scans.append(f"Seq Scan on {node['Relation Name']}")
    elif kind in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"):
        condition = node.get("Index Cond", node.get("Recheck Cond"))
        if condition is None and node.get("Index Name") not in partial:
            scans.append(f"{kind} on {node['Relation Name']} using {node['Index Name']}, no Index Cond")
        elif (
            condition is not None and "Filter" in node and re.fullmatch(r"\(\w+ [<>]=? [^=<>]+\)", condition)
        ):
            scans.append(f"{kind} on {node['Relation Name']} from {condition} to the end, filtered")
    for child in node.get("Plans", []):
        scans += postgres_scans(child, partial)
    return scans


@dataclass
class Explained:
    statement: Statement
    plan: str
    scans: list[str]


async def explain_all(
    database_url: str, statements: Sequence[Statement], *, seqscan: bool = False
) -> list[Explained]:
    """Each statement's plan and its scans; on PostgreSQL with sequential scans off unless
    ``seqscan`` (a large table whose statistics the planner should follow)."""
    partial = partial_indexes()
    explained = []
    wanted = [s for s in statements if _EXPLAINED.match(s.sql)]
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(url.database or "") as sqlite:
            for statement in wanted:
                rows = sqlite.execute(f"EXPLAIN QUERY PLAN {statement.sql}", statement.params).fetchall()
                steps = [str(row[3]) for row in rows]
                explained.append(
                    Explained(statement, "\n".join(steps), sqlite_scans(steps, partial, statement.sql))
                )
        return explained
    conn = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        if not seqscan:
            await conn.execute("SET enable_seqscan = off")
        for statement in wanted:
            sql = statement.sql if statement.numbered else numbered(statement.sql)
            document = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *statement.params)
            plan = (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]
            explained.append(Explained(statement, json.dumps(plan, indent=1), postgres_scans(plan, partial)))
    finally:
        await conn.close()
    return explained


def _record_driver_reads(patch: pytest.MonkeyPatch, recorder: Recorder) -> None:
    """The raw-driver reads: sqlite3 through ``SqliteReads``, and asyncpg's pool, which
    both ``PostgresReads`` and the records store read through."""
    sqlite_rows = SqliteReads.rows

    async def rows(self: SqliteReads, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        recorder.add(sql, params, numbered=False)
        return await sqlite_rows(self, sql, params)

    pool_fetch = asyncpg.Pool.fetch

    async def fetch(self: asyncpg.Pool, query: str, *args: Any, **options: Any) -> list[Any]:
        recorder.add(query, args, numbered=True)
        return list(await pool_fetch(self, query, *args, **options))

    patch.setattr(SqliteReads, "rows", rows)
    patch.setattr(asyncpg.Pool, "fetch", fetch)


async def _run_hot_paths(url: str, data_dir: Path, root_key: str, recorder: Recorder) -> None:
    settings = Settings(
        env="test",
        database_url=url,
        data_dir=data_dir,
        root_key=root_key,  # type: ignore[arg-type]
        log_level="WARNING",
        policies_dir=DEMO_POLICIES,
        # The sequencer is run by hand below, so its statements fall in their own path.
        run_workers=False,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        database = app.state.database
        keyring = app.state.keyring

        @event.listens_for(database.engine.sync_engine, "before_cursor_execute")
        def _statement(
            _conn: Any, _cursor: Any, sql: str, params: Any, context: Any, executemany: bool
        ) -> None:
            if not executemany:
                recorder.add(sql, params or (), numbered=context.dialect.name == "postgresql")

        await demo_policies.apply(database, DEMO_POLICIES, Console(quiet=True))
        sessions = create_session_factory(database.engine)
        async with sessions.begin() as session:
            clients = {
                department: await auth_service.create_client(session, department=department, roles=[role])
                for department, role in (
                    ("register", "registrar"),
                    ("dwp", "consumer"),
                    ("hmrc", "consumer"),
                    ("citizen-portal", "citizen-portal"),
                    ("audit-office", "auditor"),
                )
            }
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            bearer = {}
            for department, client in clients.items():
                assert client.client_secret is not None
                token = await http.post(
                    "/oauth/token",
                    data={"grant_type": "client_credentials"},
                    auth=(client.client_id, client.client_secret),
                )
                assert token.status_code == 200, token.text
                bearer[department] = {"Authorization": f"Bearer {token.json()['access_token']}"}

            citizens = []
            for n in range(3):
                registered = await http.post(
                    "/v1/citizens",
                    json={
                        "national_id": f"ZZ00000{n}A",
                        "fields": {"given_name": "Ada", "date_of_birth": "1980-01-0" + str(n + 1)},
                    },
                    headers=bearer["register"],
                )
                assert registered.status_code == 201, registered.text
                citizens.append(registered.json()["id"])
            with recorder.named("registration"):
                registered = await http.post(
                    "/v1/citizens",
                    json={"national_id": "ZZ000003A", "fields": {"given_name": "Grace"}},
                    headers=bearer["register"],
                )
            assert registered.status_code == 201, registered.text
            # An import whose batch holds a new citizen and one registered above.
            source = data_dir / "register.csv"
            source.write_text("national_id,given_name\nZZ000004A,Alan\nZZ000000A,Ada\n")
            plan = await importing.plan_import(database.engine, source, "csv", "register", "register")
            with recorder.named("import"):
                report = await importing.run_import(database.engine, keyring, plan, actor="operator:plans")
            assert report.counts.registered == 1, report.counts
            read_query = {"purpose": "benefit-eligibility", "fields": "given_name,date_of_birth"}

            # A policy change reaches every process through the epoch: the next request
            # re-reads the client's standing, and the next read recompiles policy and
            # catalog.
            async with sessions.begin() as session:
                await policy_epoch.bump_epoch(session)
            with recorder.named("authentication"):
                response = await http.get("/v1/catalog", headers=bearer["dwp"])
            assert response.status_code == 200, response.text
            with recorder.named("policy and catalog load"):
                response = await http.get(
                    f"/v1/citizens/{citizens[0]}", params=read_query, headers=bearer["dwp"]
                )
            assert response.status_code == 200, response.text

            # Each read finds its keys in the database, as a read of a citizen not seen
            # lately does.
            keyring.data_key_cache.clear()
            keyring.kek_cache.clear()
            with recorder.named("secured read"):
                response = await http.get(
                    f"/v1/citizens/{citizens[1]}", params=read_query, headers=bearer["dwp"]
                )
            assert response.status_code == 200, response.text
            with recorder.named("secured read with consents and objections"):
                response = await http.get(
                    f"/v1/citizens/{citizens[1]}",
                    params={"purpose": "open-register", "fields": "electoral_registered"},
                    headers=bearer["hmrc"],
                )
            assert response.status_code == 200, response.text
            keyring.data_key_cache.clear()
            with recorder.named("lookup by national id"):
                response = await http.post(
                    "/v1/citizens/lookup",
                    json={"national_id": "ZZ000002A", "purpose": "benefit-eligibility"},
                    headers=bearer["dwp"],
                )
            assert response.status_code == 200, response.text
            keyring.data_key_cache.clear()
            with recorder.named("batch get"):
                response = await http.post(
                    "/v1/citizens/batch-get",
                    json={
                        "ids": [*citizens, "00000000-0000-4000-8000-000000000000"],
                        "purpose": "benefit-eligibility",
                    },
                    headers=bearer["dwp"],
                )
            assert response.status_code == 200, response.text

            sequencer = make_sequencer(settings, database.engine)
            with recorder.named("audit append and sequencing"):
                assert await sequencer.run_once() > 0
                # What an idle sequencer asks at each poll (a statement on PostgreSQL).
                signal = await sequencer._idle_signal()
                assert signal is not None
                try:
                    await signal.mark()
                finally:
                    await signal.close()
            with recorder.named("access log by citizen"):
                response = await http.get(
                    f"/v1/citizens/{citizens[1]}/access-log", headers=bearer["citizen-portal"]
                )
            assert response.status_code == 200, response.text
            for path, filters in (
                ("audit search by citizen", {"citizen_id": citizens[0]}),
                ("audit search by consumer", {"consumer": "dwp"}),
                (
                    "audit search by consumer and purpose",
                    {"consumer": "dwp", "purpose": "benefit-eligibility"},
                ),
            ):
                with recorder.named(path):
                    response = await http.get(
                        "/v1/audit/entries", params=filters, headers=bearer["audit-office"]
                    )
                assert response.status_code == 200, response.text
                assert response.json()["items"], path


async def capture_hot_paths(url: str, data_dir: Path, root_key: str) -> list[Statement]:
    """Run every hot path against ``url`` (a migrated database; the demo policies are
    applied, four clients and three citizens added) and return what each ran."""
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        _record_driver_reads(patch, recorder)
        await _run_hot_paths(url, data_dir, root_key, recorder)
    return recorder.statements


@pytest.fixture(scope="module")
async def hot_plans(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, root_key: str
) -> AsyncIterator[dict[str, list[Explained]]]:
    """Each hot path's statements, explained on a committed scratch database."""
    url = await create_scratch_database(database_url)
    try:
        statements = await capture_hot_paths(url, tmp_path_factory.mktemp("plans"), root_key)
        explained = await explain_all(url, statements)
        yield {path: [e for e in explained if e.statement.path == path] for path in HOT_PATHS}
    finally:
        await drop_scratch_database(url)


class TestHotQueryPlans:
    @pytest.mark.parametrize("path", list(HOT_PATHS))
    def test_every_statement_searches_an_index(
        self, hot_plans: dict[str, list[Explained]], path: str
    ) -> None:
        explained = hot_plans[path]
        touched = set().union(*(e.statement.tables for e in explained))
        assert HOT_PATHS[path] <= touched, f"{path}: no statement captured on {HOT_PATHS[path] - touched}"
        scanning = [
            f"{e.statement.sql}\n  scans: {', '.join(e.scans)}\n  plan:\n{e.plan}"
            for e in explained
            if e.scans
        ]
        assert not scanning, f"{path}: a statement reads without a search key:\n\n" + "\n\n".join(scanning)

    @pytest.mark.parametrize("path", ["lookup by national id", "registration", "import"])
    def test_national_ids_are_found_by_the_blind_index(
        self, hot_plans: dict[str, list[Explained]], path: str
    ) -> None:
        # The index is partial (rows with a blind index only): a search uses it only when
        # its WHERE implies the index's, which a comparison of blind_index does.
        searches = [e for e in hot_plans[path] if _BLIND_INDEX_SEARCH.search(e.statement.sql)]
        assert searches, f"{path}: no search by blind index captured"
        for explained in searches:
            assert BLIND_INDEX_INDEX in explained.plan, f"{explained.statement.sql}\n{explained.plan}"


class TestScanDetection:
    """The checks themselves find a scan where there is one."""

    def test_sqlite_table_and_full_index_scans_fail_partial_index_walks_pass(self) -> None:
        partial = {"uq_agreement_versions_current"}
        assert sqlite_scans(["SCAN citizens"], partial) == ["SCAN citizens"]
        assert sqlite_scans(["SCAN t USING COVERING INDEX ix_t_a"], partial) == [
            "SCAN t USING COVERING INDEX ix_t_a"
        ]
        assert sqlite_scans(["SEARCH citizens USING INDEX pk (id=?)", "SCAN CONSTANT ROW"], partial) == []
        assert (
            sqlite_scans(["SCAN agreement_versions USING INDEX uq_agreement_versions_current"], partial) == []
        )

    def test_sqlite_one_sided_walk_fails_only_when_it_filters(self) -> None:
        walk = ["SEARCH audit_entries USING INTEGER PRIMARY KEY (rowid>?)"]
        filtered = "SELECT id FROM audit_entries WHERE id > ? AND purpose = ? ORDER BY id LIMIT ?"
        assert sqlite_scans(walk, set(), filtered) == walk
        assert (
            sqlite_scans(walk, set(), "SELECT id FROM audit_entries WHERE id > ? ORDER BY id LIMIT ?") == []
        )
        keyed = ["SEARCH audit_entries USING INDEX ix_audit_entries_department (department=? AND id>?)"]
        assert sqlite_scans(keyed, set(), filtered) == []

    def test_postgres_seq_scans_unkeyed_and_filtered_walks_fail(self) -> None:
        plan = {
            "Node Type": "Nested Loop",
            "Plans": [
                {"Node Type": "Seq Scan", "Relation Name": "citizens"},
                {"Node Type": "Index Scan", "Relation Name": "t", "Index Name": "pk_t"},
                {
                    "Node Type": "Index Scan",
                    "Relation Name": "t",
                    "Index Name": "pk_t",
                    "Index Cond": "(id = 1)",
                },
                {"Node Type": "Index Only Scan", "Relation Name": "a", "Index Name": "uq_a_current"},
                {
                    "Node Type": "Bitmap Heap Scan",
                    "Relation Name": "e",
                    "Recheck Cond": "(id > '0'::bigint)",
                    "Filter": "((purpose)::text = 'x'::text)",
                },
                {
                    "Node Type": "Index Scan",
                    "Relation Name": "e",
                    "Index Name": "pk_e",
                    "Index Cond": "(id > 5)",
                },
            ],
        }
        assert postgres_scans(plan, {"uq_a_current"}) == [
            "Seq Scan on citizens",
            "Index Scan on t using pk_t, no Index Cond",
            "Bitmap Heap Scan on e from (id > '0'::bigint) to the end, filtered",
        ]

    def test_the_schema_has_partial_indexes(self) -> None:
        assert {"uq_field_values_current", "uq_agreement_versions_current"} <= partial_indexes()

    def test_a_walk_of_every_blind_index_is_a_scan(self) -> None:
        # Partial, but it holds a national id per citizen.
        assert BLIND_INDEX_INDEX not in partial_indexes()
        walk = [f"SCAN field_values USING INDEX {BLIND_INDEX_INDEX}"]
        assert sqlite_scans(walk, partial_indexes()) == walk
