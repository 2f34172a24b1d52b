"""C2SP tlog-tiles read API: paths, hash tiles that rebuild the tree, entry bundles."""

from __future__ import annotations

import gzip
import re
import struct

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from service.audit import merkle
from service.audit.checkpoint import NoteVerifier
from service.audit.models import AuditEntryRow
from service.audit.tiles import TILE_PATH_PATTERN, TilePathInvalid, parse_tile_path, tile_path
from service.audit.writer import AuditWriter
from service.auth.dependencies import Principal, get_principal, optional_principal
from tests.audit.conftest import poll
from tests.fixtures.audit import make_entry
from tests.fixtures.auth import act_as

LEAVES = 600  # two full level-0 tiles and a partial one of width 88


class TestTilePaths:
    @pytest.mark.parametrize(
        ("path", "level", "index", "width"),
        [
            ("0/000", 0, 0, None),
            ("0/x001/x234/067", 0, 1234067, None),
            ("1/002.p/17", 1, 2, 17),
            ("entries/x001/000.p/255", None, 1000, 255),
        ],
    )
    def test_parses_the_spec_examples(
        self, path: str, level: int | None, index: int, width: int | None
    ) -> None:
        request = parse_tile_path(path)
        assert (request.level, request.index, request.width) == (level, index, width)
        assert tile_path(level, index, width) == path

    @pytest.mark.parametrize(
        "path",
        [
            "0",
            "00/000",
            "64/000",
            "0/1",
            "0/x1/000",
            "0/001/000",
            "0/000.p/0",
            "0/000.p/256",
            "0/000.p/07",
            "x/000",
        ],
    )
    def test_refuses_malformed_paths(self, path: str) -> None:
        with pytest.raises(TilePathInvalid):
            parse_tile_path(path)
        assert re.fullmatch(TILE_PATH_PATTERN, path) is None


class TestDocumentedPattern:
    """``TILE_PATH_PATTERN``, the tile parameter's pattern in /openapi.json, is what
    ``parse_tile_path`` reads: a path it matches is never the 400 "Not a tile path", and a
    path it does not match always is."""

    @given(st.from_regex(TILE_PATH_PATTERN, fullmatch=True))
    def test_every_path_it_matches_is_read(self, path: str) -> None:
        request = parse_tile_path(path)
        assert tile_path(request.level, request.index, request.width) == path

    @given(st.text(alphabet="0123456789x/.pentries", max_size=20))
    def test_matches_exactly_what_the_parser_reads(self, path: str) -> None:
        try:
            parse_tile_path(path)
        except TilePathInvalid:
            read = False
        else:
            read = True
        assert (re.fullmatch(TILE_PATH_PATTERN, path) is not None) == read

    @pytest.mark.parametrize("path", ["63/000", "entries/x999/999.p/1", "0/999.p/255", "9/x010/000"])
    def test_matches_the_edges(self, path: str) -> None:
        assert re.fullmatch(TILE_PATH_PATTERN, path)
        parse_tile_path(path)

    @given(
        st.integers(0, 10**12),
        st.one_of(st.none(), st.integers(0, 63)),
        st.one_of(st.none(), st.integers(1, 255)),
    )
    def test_round_trips(self, index: int, level: int | None, width: int | None) -> None:
        request = parse_tile_path(tile_path(level, index, width))
        assert (request.level, request.index, request.width) == (level, index, width)


def _tile_hash(hashes: list[bytes]) -> bytes:
    """MTH of a full tile's 256 hashes, as the level above holds it."""
    compact = merkle.CompactRange()
    for digest in hashes:
        compact.push(digest)
    return compact.root()


class TestTileEndpoints:
    @pytest.fixture
    async def grown(self, audit_app: FastAPI, audit_client: httpx.AsyncClient) -> list[str]:
        writer: AuditWriter = audit_app.state.audit_writer
        entries = [make_entry(request_id=f"tile-{n}") for n in range(LEAVES)]
        await writer.append_many(entries)
        act_as(audit_app, "audit-office", "auditor")

        async def sequenced() -> bool:
            # The leaves' tiles, and a checkpoint signed over them: the sequencer signs its
            # checkpoint after it has stored the leaves, so the tiles can be there first.
            response = await audit_client.get("/v1/audit/tile/0/002.p/88")
            if response.status_code != 200:
                return False
            verifier = NoteVerifier.parse((await audit_client.get("/v1/audit/verifier-key")).text)
            note = await audit_client.get("/v1/audit/checkpoint")
            return note.status_code == 200 and verifier.open_checkpoint(note.text).size >= LEAVES

        await poll(sequenced)
        return [e.canonical() for e in entries]

    async def test_hash_tiles_rebuild_the_signed_root(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient, grown: list[str]
    ) -> None:
        full = await audit_client.get("/v1/audit/tile/0/000")
        assert full.status_code == 200
        assert full.headers["content-type"] == "application/octet-stream"
        assert full.headers["cache-control"] == "private, max-age=31536000, immutable"
        assert len(full.content) == 256 * 32
        vkey = (await audit_client.get("/v1/audit/verifier-key")).text
        checkpoint = NoteVerifier.parse(vkey).open_checkpoint(
            (await audit_client.get("/v1/audit/checkpoint")).text
        )
        assert checkpoint.size >= LEAVES
        leaves: list[bytes] = []
        for index in range(checkpoint.size // 256 + 1):
            width = None if index < checkpoint.size // 256 else checkpoint.size % 256
            if width == 0:
                break
            tile = (await audit_client.get(f"/v1/audit/tile/{tile_path(0, index, width)}")).content
            leaves += [tile[i : i + 32] for i in range(0, len(tile), 32)]
        assert len(leaves) == checkpoint.size
        assert _tile_hash(leaves) == checkpoint.root_hash
        level1 = await audit_client.get("/v1/audit/tile/1/000.p/2")
        assert level1.status_code == 200
        # tlog-tiles: a partial tile never changes either (its hashes are of complete
        # subtrees), so it is cached as long as a full one.
        assert level1.headers["cache-control"] == "private, max-age=31536000, immutable"
        assert level1.content == _tile_hash(leaves[:256]) + _tile_hash(leaves[256:512])
        # Tiles the tree is not large enough for are not there.
        assert (await audit_client.get("/v1/audit/tile/1/000")).status_code == 404
        assert (await audit_client.get(f"/v1/audit/tile/{tile_path(0, 10**6)}")).status_code == 404

    async def test_entry_bundles_hash_to_the_level_0_tile(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient, grown: list[str]
    ) -> None:
        response = await audit_client.get("/v1/audit/tile/entries/000")
        assert response.headers["cache-control"] == "private, max-age=31536000, immutable"
        tile = (await audit_client.get("/v1/audit/tile/0/000")).content
        assert _leaf_hashes(response.content) == tile

    @pytest.mark.parametrize("path", ["0/000", "0/002.p/88"])
    async def test_hash_tiles_are_for_shared_caches_only_when_public(
        self,
        audit_app: FastAPI,
        audit_client: httpx.AsyncClient,
        grown: list[str],
        monkeypatch: pytest.MonkeyPatch,
        path: str,
    ) -> None:
        """Served to a token only, a tile is ``private``: a shared cache that kept a
        ``public`` one would hand it to callers without a token (RFC 9111, section 3.5)."""
        assert (
            (await audit_client.get(f"/v1/audit/tile/{path}")).headers["cache-control"].startswith("private,")
        )
        _public(audit_app, monkeypatch)
        _anonymous(audit_app)
        response = await audit_client.get(f"/v1/audit/tile/{path}")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"

    async def test_a_partial_entry_bundle_is_immutable_too(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient, grown: list[str]
    ) -> None:
        partial = await audit_client.get("/v1/audit/tile/entries/002.p/88")
        assert partial.status_code == 200
        assert partial.headers["cache-control"] == "private, max-age=31536000, immutable"
        assert _leaf_hashes(partial.content) == (await audit_client.get("/v1/audit/tile/0/002.p/88")).content

    async def test_an_entry_bundle_is_gzipped_for_a_client_that_accepts_gzip(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient, grown: list[str]
    ) -> None:
        """tlog-tiles: entry bundles SHOULD be compressed at the HTTP layer, with
        ``Content-Encoding: gzip`` for a client whose ``Accept-Encoding`` names it."""
        headers, plain = await _raw(audit_client, "/v1/audit/tile/entries/000", "identity")
        assert "content-encoding" not in headers
        assert headers["vary"] == "Accept-Encoding"
        assert _leaf_hashes(plain) == (await audit_client.get("/v1/audit/tile/0/000")).content
        for accepted in ("gzip", "br, gzip;q=0.5", "*", "GZIP", "x-gzip", "gzip;q=0.001"):
            headers, compressed = await _raw(audit_client, "/v1/audit/tile/entries/000", accepted)
            assert headers["content-encoding"] == "gzip", accepted
            assert headers["vary"] == "Accept-Encoding"
            assert headers["content-type"] == "application/octet-stream"
            assert headers["cache-control"] == "private, max-age=31536000, immutable"
            assert int(headers["content-length"]) == len(compressed)
            assert len(compressed) < len(plain)
            assert gzip.decompress(compressed) == plain
        for refused in ("identity", "gzip;q=0", "*;q=0", "br", "gzip;q=0, *", "gzip;q=2", "gzip;q=0.0001"):
            headers, body = await _raw(audit_client, "/v1/audit/tile/entries/000", refused)
            assert "content-encoding" not in headers, refused
            assert body == plain

    async def test_hash_tiles_are_not_compressed(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient, grown: list[str]
    ) -> None:
        """Hashes do not compress; only entry bundles are gzipped."""
        headers, tile = await _raw(audit_client, "/v1/audit/tile/0/000", "gzip")
        assert "content-encoding" not in headers
        assert len(tile) == 256 * 32

    async def test_entry_bundles_are_for_auditors_only(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient, grown: list[str]
    ) -> None:
        act_as(audit_app, "dvla", "data-owner")
        response = await audit_client.get("/v1/audit/tile/entries/000")
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"

    async def test_bundle_with_an_entry_over_64_kib_is_a_typed_501(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient
    ) -> None:
        # A catalog-change entry carries the whole catalog document; a large one overflows
        # the uint16 length prefix of a tlog-tiles entry bundle.
        writer: AuditWriter = audit_app.state.audit_writer
        big = make_entry(action="catalog-change", citizen_id=None, document="x" * 70_000)
        await writer.append_many([make_entry(request_id="small"), big])
        async with audit_app.state.database.engine.connect() as conn:
            stored = (await conn.execute(select(func.count()).select_from(AuditEntryRow))).scalar_one()
        act_as(audit_app, "audit-office", "auditor")
        verifier = NoteVerifier.parse((await audit_client.get("/v1/audit/verifier-key")).text)

        async def size() -> int:
            note = await audit_client.get("/v1/audit/checkpoint")
            signed = verifier.open_checkpoint(note.text).size if note.status_code == 200 else 0
            return signed if signed >= stored else 0

        tree_size = await poll(size)
        assert tree_size < 256
        response = await audit_client.get(f"/v1/audit/tile/{tile_path(None, 0, tree_size)}")
        assert response.status_code == 501
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["title"] == "Entry bundle cannot be served"
        assert "65535 bytes" in body["detail"]
        assert "x" * 100 not in response.text
        # The hash tile over the same leaves is served as ever.
        assert (await audit_client.get(f"/v1/audit/tile/{tile_path(0, 0, tree_size)}")).status_code == 200

    async def test_malformed_path_is_400(self, audit_app: FastAPI, audit_client: httpx.AsyncClient) -> None:
        act_as(audit_app, "audit-office", "auditor")
        response = await audit_client.get("/v1/audit/tile/0/1")
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"


def _leaf_hashes(bundle: bytes) -> bytes:
    """The level-0 tile an entry bundle's entries hash to."""
    offset, hashes = 0, []
    while offset < len(bundle):
        (length,) = struct.unpack(">H", bundle[offset : offset + 2])
        hashes.append(merkle.leaf_hash(bundle[offset + 2 : offset + 2 + length]))
        offset += 2 + length
    return b"".join(hashes)


async def _raw(client: httpx.AsyncClient, path: str, accept_encoding: str) -> tuple[httpx.Headers, bytes]:
    """A 200's headers and its body as sent, not decoded by httpx."""
    async with client.stream("GET", path, headers={"Accept-Encoding": accept_encoding}) as response:
        assert response.status_code == 200
        return response.headers, b"".join([chunk async for chunk in response.aiter_raw()])


def _public(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = app.state.audit_settings.model_copy(update={"public_checkpoint": True})
    monkeypatch.setattr(app.state, "audit_settings", settings)


def _anonymous(app: FastAPI) -> None:
    app.dependency_overrides.pop(get_principal, None)
    app.dependency_overrides.pop(optional_principal, None)


def _with_scopes(app: FastAPI, *scopes: str) -> None:
    principal = Principal(
        client_id="audit-office-narrow",
        department="audit-office",
        roles=frozenset({"auditor"}),
        scopes=frozenset(scopes),
    )

    async def _principal() -> Principal:
        return principal

    app.dependency_overrides[get_principal] = _principal
    app.dependency_overrides[optional_principal] = _principal


class TestTileRefusals:
    @pytest.mark.parametrize("path", ["0/000", "0/000.p/1", "2/x001/000", "entries/000", "entries/000.p/7"])
    async def test_a_tile_the_tree_is_too_small_for_is_never_cached(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient, path: str
    ) -> None:
        """It will be there once the tree grows: a cache that kept the 404 would hide it."""
        act_as(audit_app, "audit-office", "auditor")
        response = await audit_client.get(f"/v1/audit/tile/{path}")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["cache-control"] == "no-store"

    async def test_public_hash_tiles_need_no_token_but_entry_bundles_do(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _public(audit_app, monkeypatch)
        _anonymous(audit_app)
        assert (await audit_client.get("/v1/audit/tile/0/000")).status_code == 404  # the tree is empty
        bundle = await audit_client.get("/v1/audit/tile/entries/000")
        assert bundle.status_code == 401
        assert bundle.headers["content-type"] == "application/problem+json"
        assert bundle.headers["www-authenticate"] == "Bearer"

    @pytest.mark.parametrize("public", [False, True])
    async def test_an_entry_bundle_needs_audit_export_and_only_that(
        self,
        audit_app: FastAPI,
        audit_client: httpx.AsyncClient,
        monkeypatch: pytest.MonkeyPatch,
        public: bool,
    ) -> None:
        """Whether or not the checkpoint is public: audit:verify is the checkpoint's scope,
        not the entries'."""
        if public:
            _public(audit_app, monkeypatch)
        _with_scopes(audit_app, "audit:export")
        assert (await audit_client.get("/v1/audit/tile/entries/000")).status_code == 404  # allowed
        _with_scopes(audit_app, "audit:verify")
        refused = await audit_client.get("/v1/audit/tile/entries/000")
        assert refused.status_code == 403
        assert "audit:export" in refused.json()["detail"]

    async def test_private_hash_tiles_need_the_checkpoints_scope(
        self, audit_app: FastAPI, audit_client: httpx.AsyncClient
    ) -> None:
        _anonymous(audit_app)
        assert (await audit_client.get("/v1/audit/tile/0/000")).status_code == 401
        _with_scopes(audit_app, "audit:export")
        assert (await audit_client.get("/v1/audit/tile/0/000")).status_code == 403
