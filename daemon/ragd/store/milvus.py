"""The Milvus backend (``store.backend = "milvus"``): one collection holds each chunk's dense
vector (FLOAT_VECTOR, inner product; an exact FLAT index, or the approximate one
``store.milvus_index`` names) and BGE-M3's lexical weights
(SPARSE_FLOAT_VECTOR, inner product), with its content hash. ``store.uri`` is a file path
ending in ``.db`` (Milvus Lite, in this process) or a server address; pymilvus's
``MilvusClient`` speaks to both.

Several daemons may share the collection: each writes its rows under its own origin
(``store.origin``), keyed ``"<origin>:<chunk id>"``, with what another daemon needs to show
and rerank them (path, lines, heading, text, root, mtime). Searches return every origin's
rows: this daemon's under their chunk ids, the others' under negative ids (``foreign_id``)
that ``foreign_rows`` turns into rows.

Like FAISS it is a cache of the catalog for this daemon's own rows: at open, and whenever
its count disagrees after an indexing run, the own rows' (chunk id, hash) pairs are compared
with the catalog's, rows the catalog no longer has (or has with another hash) are deleted and
missing ones added, so a crash between a SQLite commit and the collection's write never
serves a stale vector. Other origins' rows are never deleted or rewritten by a daemon: only
``forget_origin`` (``ragd store forget``, for a machine that left the team) deletes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragd.errors import NotFoundError, RagdError, StoreError, StoreUnavailable
from ragd.models.base import FloatArray, SparseWeights
from ragd.store.base import EVERY_CHUNK, ChunkFilter, DenseStore, SparseStore, StoreContext, VectorStore
from ragd.store.catalog import BatchResult, Catalog, ChunkRow, NewEmbedding
from ragd.store.codec import decode, encode
from ragd.store.private import atomic_write
from ragd.store.vectors import IndexPlan

if TYPE_CHECKING:
    from ragd.config import StoreConfig
    from ragd.filters import Filters

log = logging.getLogger(__name__)

LAYOUT = 2
"""Version of the collection's fields (2: rows of several origins, with their hits' fields).
A collection of another layout, model or dimension is made again from the catalog, unless it
holds other origins' rows: then opening stops with a StoreError (they are not ours to drop)."""
EMPTY_TOKEN = 2**32 - 2
"""Milvus refuses an empty sparse vector: a chunk without lexical weights holds this token,
which no query has, with a weight too small to matter."""
WRITE_BATCH = 1000
ID_WINDOW = 10_000
"""Chunk ids per query when the rows are read back (Milvus answers at most 16,384 rows)."""
CONNECT_TIMEOUT_S = 10.0
IVF_LISTS = 1024
"""Lists per sealed segment of an IVF index; a search scans ``store.nprobe`` of them (0: a
share, as FAISS does: ``IndexPlan.probes``)."""
INDEX_PARAMS: dict[str, dict[str, int]] = {
    "FLAT": {}, "IVF_FLAT": {"nlist": IVF_LISTS}, "IVF_SQ8": {"nlist": IVF_LISTS},
    "HNSW": {"M": 16, "efConstruction": 128}, "AUTOINDEX": {},
}
"""``store.milvus_index``: the dense index and how it is built (lists per segment, graph degree)."""
VARCHAR_BYTES = 65_535
"""Milvus's VARCHAR limit: a longer chunk text is cut there (on a UTF-8 boundary; ``cut``
says so), a heading loses its last levels."""
LABEL_PROPERTY = "ragd.label"
"""The collection property holding ``MilvusStore._label()`` as JSON."""
ORIGIN_FILE = "origin"
"""In the data folder: the origin this folder's rows are written under."""
META_FIELDS = ("origin", "gid", "path", "root", "mtime", "ordinal", "tokens", "hash", "start_line", "end_line",
               "heading", "page", "end_page", "text", "cut")
"""What ``foreign_rows`` reads back to build another daemon's hit."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


class _LiteFailure(logging.Filter):
    """Keeps the reason Milvus Lite logged (with a traceback) for not opening a file, which
    pymilvus then reports only as "Open local milvus failed"."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.reason = record.exc_info[1]
            return False
        return True


def _held_elsewhere(exc: BaseException) -> bool:
    """Whether Milvus Lite failed because another process has the file open (its lock)."""
    try:
        from milvus_lite.exceptions import DataDirLockedError
    except ImportError:
        return False
    return isinstance(exc, DataDirLockedError)


def connect(config: StoreConfig) -> Any:
    """A ``MilvusClient`` for ``store.uri``; a one-line ``StoreError`` naming the setting when
    pymilvus is missing, the Lite file cannot be made, another process (a daemon) has the
    Lite file open, or the server does not answer."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise StoreError('store.backend "milvus" needs pymilvus and milvus-lite: pip install "ragd[milvus]"') from None
    uri = config.uri
    lite = "://" not in uri and not uri.startswith("unix:")
    if lite:
        try:
            Path(uri).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store.uri: cannot make the folder of the Milvus Lite file {uri}: "
                             f"{exc.strerror or exc}") from None
    lite_log = logging.getLogger("milvus_lite.server_manager")
    failure = _LiteFailure()
    lite_log.addFilter(failure)
    try:
        return MilvusClient(uri=uri, token=config.token, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # pymilvus raises its own exceptions and grpc's
        if lite:
            reason = failure.reason or exc
            if _held_elsewhere(reason):
                raise StoreError(f"store.uri: the Milvus Lite file {uri} is open in another process, most likely a "
                                 "running ragd daemon (Milvus Lite serves one process): stop that daemon first, "
                                 "or use a Milvus server") from None
            raise StoreError(f"store.uri: cannot open the Milvus Lite file {uri} ({_one_line(reason)}); "
                             "check store.uri") from None
        raise StoreUnavailable(f"store.uri: cannot reach the Milvus server at {uri} ({_one_line(exc)}); "
                               "check store.uri and store.token, and that the server runs") from None
    finally:
        lite_log.removeFilter(failure)


@contextmanager
def shared_collection(config: StoreConfig) -> Iterator[Any]:
    """A client of ``store.collection``, closed after, for what reads or deletes every origin's
    rows (``ragd store``) outside any daemon: a ``NotFoundError`` when the collection does not
    exist, a ``StoreError`` when it is not a ragd collection of this layout (no origins)."""
    client = connect(config)
    name = config.collection
    try:
        try:
            if not client.has_collection(name):
                raise NotFoundError(f"store.collection: there is no Milvus collection {name!r} at {config.uri} "
                                    "(a daemon makes it when it first opens the store)")
            label = _read_label(client.describe_collection(name))
            if label.get("ragd") != LAYOUT:
                raise StoreError(f"store.collection: Milvus collection {name!r} at {config.uri} is not a shared ragd "
                                 f"collection (layout {LAYOUT}; its label: {json.dumps(label)[:200]}): it has no "
                                 "origins")
            client.load_collection(name)
        except RagdError:
            raise
        except Exception as exc:
            raise StoreError(f"store.collection: cannot use Milvus collection {name!r} at {config.uri} "
                             f"({_one_line(exc)})") from None
        yield client
    finally:
        _close(client)


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception as exc:  # closing is best effort: the process may be ending
        log.debug("closing the Milvus client: %s", exc)


def _count(client: Any, collection: str, expr: str, **query: Any) -> int:
    """Rows matching ``expr`` (``query``: more arguments of ``MilvusClient.query``)."""
    rows = client.query(collection, filter=expr, output_fields=["count(*)"], **query)
    return int(rows[0]["count(*)"]) if rows else 0


def origin_counts(client: Any, collection: str) -> dict[str, int]:
    """Rows per origin in the collection, by origin name. One query finds an origin not seen
    yet (``limit=1``) and one counts its rows (``count(*)``, over the INVERTED index), so the
    answer holds for any number of rows (a query returns at most 16,384) at two queries per
    origin. A ``StoreError`` when Milvus fails."""
    counts: dict[str, int] = {}
    try:
        while True:
            unseen = f"origin not in [{','.join(map(_quoted, counts))}]" if counts else ""
            rows = client.query(collection, filter=unseen, output_fields=["origin"], limit=1,
                                consistency_level="Strong")
            if not rows:
                break
            origin = str(rows[0]["origin"])
            counts[origin] = _count(client, collection, f"origin == {_quoted(origin)}", consistency_level="Strong")
    except Exception as exc:
        raise StoreError(f"store.collection: cannot count the rows of Milvus collection {collection!r} "
                         f"({_one_line(exc)})") from None
    return {origin: n for origin, n in sorted(counts.items()) if n}


def forget_origin(client: Any, collection: str, origin: str) -> int:
    """Delete every row of ``origin`` from the collection, and flush; how many there were. Only
    for an origin whose daemon is gone: a daemon of that origin that starts again writes its
    rows back. A ``StoreError`` when Milvus fails."""
    expr = f"origin == {_quoted(origin)}"
    try:
        rows = _count(client, collection, expr, consistency_level="Strong")
        if rows:
            client.delete(collection, filter=expr)
            client.flush(collection)
    except Exception as exc:
        raise StoreError(f"store.collection: cannot delete the rows of origin {origin} from Milvus collection "
                         f"{collection!r} ({_one_line(exc)})") from None
    return rows


def resolve_origin(config: StoreConfig, data_dir: Path) -> tuple[str, str | None]:
    """This data folder's origin and the one recorded in ``data_dir/origin`` (what its rows
    are under; None before the first open). Without ``store.origin`` the name is made once:
    the host name and a random tag, so two data folders on one host differ."""
    from ragd.config import ORIGIN_NAME

    path = data_dir / ORIGIN_FILE
    try:
        recorded: str | None = path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        recorded = None
    except OSError as exc:
        raise StoreError(f"store.origin: cannot read {path} ({exc.strerror or exc})") from None
    if recorded is not None and not ORIGIN_NAME.fullmatch(recorded):
        raise StoreError(f"store.origin: {path} holds {recorded[:80]!r}, not an origin name: set store.origin "
                         "to the name this data folder's rows are under, or delete the file")
    return config.origin or recorded or _new_origin(), recorded


def record_origin(data_dir: Path, origin: str) -> None:
    """Keep ``origin`` in ``data_dir/origin``: written before any row is, and after a renamed
    origin's old rows are deleted, so rows never lie under a name the folder forgot."""
    path = data_dir / ORIGIN_FILE
    try:
        atomic_write(path, lambda tmp: _write_text(tmp, origin + "\n"))
    except OSError as exc:
        raise StoreError(f"store.origin: cannot record the origin in {path} ({exc.strerror or exc})") from None


def _write_text(path: str, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


def _new_origin() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname()).strip("-._")[:48] or "ragd"
    return f"{host}-{secrets.token_hex(3)}"


def foreign_id(origin: str, chunk: int) -> int:
    """The stable 62-bit number a row is known by to other daemons (the ``gid`` field); their
    searches carry it negated, apart from their own chunk ids."""
    digest = hashlib.blake2b(f"{origin}:{chunk}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 2) or 1


def _quoted(text: str) -> str:
    """A Milvus string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cut(text: str, limit: int = VARCHAR_BYTES) -> tuple[str, bool]:
    """``text`` within ``limit`` UTF-8 bytes, cut on a character boundary; whether it was cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def _heading(levels: Sequence[str]) -> str:
    """The heading path as JSON, dropping its last levels until it fits a VARCHAR."""
    levels = list(levels)
    while True:
        text = json.dumps(levels, ensure_ascii=False)
        if len(text.encode("utf-8", "surrogatepass")) <= VARCHAR_BYTES or not levels:
            return text
        levels.pop()


def scope_expression(scope: Filters) -> str | None:
    """The filters as an expression over the stored fields of other daemons' rows, or None
    when one of them cannot be written as one (globs; a path prefix with a backslash or a
    control character, which LIKE's escapes cannot carry exactly)."""
    parts: list[str] = []
    if scope.globs:
        return None
    if scope.path_prefixes:
        either = []
        for prefix in scope.path_prefixes:
            if any(c == "\\" or ord(c) < 32 for c in prefix):
                return None
            pattern = prefix.replace("%", "\\%").replace("_", "\\_")
            either.append(f'path like "{_quoted(pattern)[1:-1]}%" or path == {_quoted(prefix.rstrip("/"))}')
        parts.append("(" + " or ".join(either) + ")")
    if scope.root:
        parts.append(f"root == {_quoted(scope.root)}")
    if scope.extensions:
        parts.append(f"ext in [{','.join(_quoted(e) for e in scope.extensions)}]")
    if scope.modified_after is not None:
        parts.append(f"mtime >= {math.ceil(scope.modified_after * 1e9)}")
    if scope.modified_before is not None:
        parts.append(f"mtime < {math.ceil(scope.modified_before * 1e9)}")
    return " and ".join(parts) if parts else ""


class MilvusDense:
    """The dense side of the collection."""

    def __init__(self, store: MilvusStore) -> None:
        self._store = store

    @property
    def count(self) -> int:
        return self._store.count

    def ids(self) -> np.ndarray:
        return np.array(sorted(self._store.held()), dtype=np.int64)

    def search(self, query: FloatArray, n: int, where: ChunkFilter = EVERY_CHUNK) -> list[tuple[int, float]]:
        vector = np.asarray(query, dtype=np.float32).reshape(-1).tolist()
        return self._store.search("dense", vector, n, where)


class MilvusSparse:
    """The lexical-weights side of the collection."""

    def __init__(self, store: MilvusStore) -> None:
        self._store = store

    @property
    def count(self) -> int:
        return self._store.count

    def search_chunks(self, weights: SparseWeights, n: int, where: ChunkFilter,
                      catalog: Catalog) -> list[tuple[int, float]]:
        query = {int(t): float(w) for t, w in weights.items() if w > 0}
        return self._store.search("sparse", query, n, where) if query else []


def expression(where: ChunkFilter, origin: str) -> str | None:
    """The filter as a Milvus boolean expression: this origin's rows by chunk id (``where.ids``),
    the other origins' by ``where.scope`` on their stored fields; "" for every row, None for
    none."""
    mine = f"origin == {_quoted(origin)}"
    others = "" if where.scope is None else scope_expression(where.scope)
    if where.ids is None and not others:
        return "" if others == "" else mine
    own = None if where.nothing else mine
    if where.ids is not None and own is not None:
        own = f"({mine} and chunk in [{','.join(map(str, np.asarray(where.ids, dtype=np.int64).tolist()))}])"
    theirs = None if others is None else f"(origin != {_quoted(origin)}" + (f" and {others})" if others else ")")
    either = [part for part in (own, theirs) if part is not None]
    return " or ".join(either) if either else None


class MilvusStore(VectorStore):
    name = "milvus"

    def __init__(self, ctx: StoreContext, client: Any, collection: str, origin: str = "local",
                 index_type: str = "FLAT", nprobe: int = 0) -> None:
        super().__init__(ctx)
        self.client = client
        self.collection = collection
        self.origin = origin
        self._mine = f"origin == {_quoted(origin)}"
        self._theirs = f"origin != {_quoted(origin)}"
        self._dense = MilvusDense(self)
        self._sparse = MilvusSparse(self) if ctx.has_sparse else None
        self._count = 0
        self._flushed: int | None = None
        self.index_type = index_type  # the dense index the collection has (``store.milvus_index`` when made here)
        self.nprobe = IndexPlan(nprobe=nprobe).probes(IVF_LISTS)  # IVF lists a search scans

    @classmethod
    def open(cls, config: StoreConfig, ctx: StoreContext) -> MilvusStore:
        origin, recorded = resolve_origin(config, ctx.data_dir)
        store = cls(ctx, connect(config), config.collection, origin, config.milvus_index, config.nprobe)
        try:
            store._ensure_collection()
            store._settle_index(config.milvus_index)
            if recorded not in (None, origin):  # store.origin renamed this folder's rows: the old ones go
                log.info("store.origin is now %s: deleting this data folder's rows under %s", origin, recorded)
                store.client.delete(store.collection, filter=f"origin == {_quoted(str(recorded))}")
            if recorded != origin:
                record_origin(ctx.data_dir, origin)
            if store.reconcile():
                store.client.flush(store.collection)  # Milvus Lite scans unflushed rows one by one
        except StoreError:
            store.close()
            raise
        except Exception as exc:
            store.close()
            raise StoreError(f"store.collection: cannot use Milvus collection {config.collection!r} at "
                             f"{config.uri} ({_one_line(exc)})") from None
        store._flushed = ctx.catalog.generation()
        return store

    # -- the collection -----------------------------------------------------------------
    def _label(self) -> dict[str, Any]:
        """What the collection's description records: rows of another label cannot mix. The
        embedder is compared by its fingerprint (``vectors``), not by the folder it was
        loaded from, which differs between machines."""
        model = self.ctx.model_id
        return {"ragd": LAYOUT, "model": model, "vectors": model.split("@", 1)[-1], "dim": self.ctx.dim,
                "sparse": self.ctx.has_sparse}

    def _fits(self, label: dict[str, Any]) -> bool:
        mine = self._label()
        return all(label.get(key) == mine[key] for key in ("ragd", "vectors", "dim", "sparse"))

    def _ensure_collection(self) -> None:
        """The collection, made when missing. One of another layout or embedder is dropped and
        made again, since the catalog can fill it, unless other origins' rows live in it:
        those are other daemons' index, so this daemon stops instead."""
        client, name = self.client, self.collection
        if client.has_collection(name):
            label = _read_label(client.describe_collection(name))
            if self._fits(label):
                client.load_collection(name)
                return
            if label.get("ragd") == LAYOUT and self._others_in(label):
                raise StoreError(
                    f"store.collection: Milvus collection {name!r} is shared with other ragd daemons whose vectors "
                    f"are from {label.get('model')} (dimension {label.get('dim')}, lexical weights "
                    f"{bool(label.get('sparse'))}), not this daemon's {self.ctx.model_id} (dimension {self.ctx.dim}, "
                    f"lexical weights {self.ctx.has_sparse}): use their embedder or another store.collection")
            log.warning("Milvus collection %s holds %s, not %s: it is made again from the catalog",
                        name, label or "something else", self._label())
            client.drop_collection(name)
        self._create()

    def _settle_index(self, wanted: str) -> None:
        """Give the dense vectors the ``wanted`` index unless they have it; a collection shared
        with other daemons keeps the index it has (daemons set differently would otherwise
        rebuild it at each other's every start), and searches use that one's parameters."""
        client, name = self.client, self.collection
        have = str(client.describe_index(name, "dense").get("index_type", ""))
        if have == wanted:
            self.index_type = have
            return
        if self._others_in(self._label()):
            log.warning("Milvus collection %s is shared and keeps its %s index (store.milvus_index asks for %s)",
                        name, have, wanted)
            self.index_type = have
            return
        log.info("Milvus collection %s: replacing its %s index of the dense vectors with %s", name, have, wanted)
        client.release_collection(name)
        client.drop_index(name, "dense")
        index = client.prepare_index_params()
        index.add_index(field_name="dense", index_type=wanted, metric_type="IP", params=INDEX_PARAMS[wanted])
        client.create_index(name, index)
        client.load_collection(name)
        self.index_type = wanted

    def _search_params(self, field: str, n: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if field == "dense" and self.index_type.startswith("IVF"):
            params = {"nprobe": self.nprobe}
        elif field == "dense" and self.index_type == "HNSW":
            params = {"ef": max(64, n)}  # Milvus wants ef >= the number of hits
        return {"metric_type": "IP", "params": params}

    def _others_in(self, label: dict[str, Any]) -> bool:
        """Whether a collection of this layout holds rows of another origin."""
        self.client.load_collection(self.collection)
        return bool(self.client.query(self.collection, filter=self._theirs, output_fields=["pk"], limit=1))

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        client, name = self.client, self.collection
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description=json.dumps(self._label()))
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=128)  # "<origin>:<chunk id>"
        schema.add_field("origin", DataType.VARCHAR, max_length=64)
        schema.add_field("chunk", DataType.INT64)  # the chunk id in its origin's catalog
        schema.add_field("gid", DataType.INT64)  # foreign_id(origin, chunk)
        schema.add_field("hash", DataType.VARCHAR, max_length=128)
        for text_field in ("path", "root", "heading", "text"):
            schema.add_field(text_field, DataType.VARCHAR, max_length=VARCHAR_BYTES)
        schema.add_field("ext", DataType.VARCHAR, max_length=1024)  # lower-case suffix, for extension filters
        for number in ("mtime", "ordinal", "tokens", "start_line", "end_line", "page", "end_page"):
            schema.add_field(number, DataType.INT64)
        schema.add_field("cut", DataType.BOOL)  # the text was cut to VARCHAR_BYTES
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.ctx.dim)
        index = client.prepare_index_params()
        index.add_index(field_name="dense", index_type=self.index_type, metric_type="IP",
                        params=INDEX_PARAMS[self.index_type])
        index.add_index(field_name="origin", index_type="INVERTED")
        index.add_index(field_name="gid", index_type="INVERTED")
        if self.ctx.has_sparse:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        # Indexes after the collection, without waiting: pymilvus's wait asks for a timestamp
        # Milvus Lite does not serve, then polls every 0.5 s.
        try:
            client.create_collection(name, schema=schema, properties={LABEL_PROPERTY: json.dumps(self._label())})
        except Exception:
            if not client.has_collection(name):
                raise
            self._ensure_collection()  # another daemon made it meanwhile: check its label
            return
        client.create_index(name, index, sync=False)
        client.load_collection(name)

    def held(self, above: int = 0) -> dict[int, str]:
        """Chunk id -> content hash of this origin's rows, read in windows of chunk ids up to
        ``above`` and on until no row lies beyond (a query returns at most 16,384 rows, and
        Milvus Lite has no query iterator's timestamps)."""
        out: dict[int, str] = {}
        start = 0
        while start <= above or self._query(f"{self._mine} and chunk >= {start}", 1):
            rows = self._query(f"{self._mine} and chunk >= {start} and chunk < {start + ID_WINDOW}", ID_WINDOW)
            out.update((int(r["chunk"]), str(r["hash"])) for r in rows)
            start += ID_WINDOW
        return out

    def _query(self, expr: str, limit: int) -> list[dict[str, Any]]:
        return list(self.client.query(self.collection, filter=expr, output_fields=["chunk", "hash"], limit=limit))

    def reconcile(self) -> bool:
        """Make this origin's rows agree with the catalog's chunks of this embedder (by id and
        hash); whether anything changed."""
        want = self.ctx.catalog.embedded_chunks(self.ctx.model_key)
        have = self.held(max(want, default=0))
        stale = [cid for cid, h in have.items() if want.get(cid) != h]
        missing = [(cid, h) for cid, h in want.items() if have.get(cid) != h]
        if stale:
            self._delete(stale)
        if missing:
            self._write(missing, {})
        self._count = len(want)
        return bool(stale or missing)

    def _rows(self, chunks: Sequence[tuple[int, str]],
              fresh: dict[str, tuple[FloatArray, bytes | None]]) -> Iterator[dict[str, Any]]:
        """Each chunk's row: its vectors and the fields another daemon shows its hit by."""
        vectors = dict(fresh)
        vectors.update(self.ctx.catalog.vectors_by_hash(self.ctx.model_key, [h for _, h in chunks if h not in fresh]))
        sources = self.ctx.catalog.chunk_sources([cid for cid, _ in chunks])
        for cid, h in chunks:
            if cid not in sources:  # gone from the catalog since: the next reconcile agrees
                continue
            chunk, root, mtime = sources[cid]
            dense, sparse = vectors[h]
            text, cut = _cut(chunk.text)
            row: dict[str, Any] = {
                "pk": f"{self.origin}:{cid}", "origin": self.origin, "chunk": cid, "gid": foreign_id(self.origin, cid),
                "hash": h, "path": _cut(chunk.path)[0], "root": _cut(root)[0],
                "ext": _cut(os.path.splitext(chunk.path)[1].lower(), 1024)[0], "heading": _heading(chunk.heading),
                "text": text, "cut": cut, "mtime": mtime, "ordinal": chunk.ordinal, "tokens": chunk.token_count,
                "start_line": chunk.start_line, "end_line": chunk.end_line, "page": chunk.page,
                "end_page": chunk.end_page, "dense": np.asarray(dense, dtype=np.float32).tolist(),
            }
            if self.ctx.has_sparse:
                row["sparse"] = _sparse_row(sparse)
            yield row

    def _write(self, chunks: Sequence[tuple[int, str]], fresh: dict[str, tuple[FloatArray, bytes | None]]) -> None:
        for i in range(0, len(chunks), WRITE_BATCH):
            rows = list(self._rows(chunks[i : i + WRITE_BATCH], fresh))
            if rows:
                self.client.upsert(self.collection, rows)

    def _delete(self, ids: Iterable[int]) -> None:
        keys = [f"{self.origin}:{cid}" for cid in ids]
        for i in range(0, len(keys), WRITE_BATCH):
            self.client.delete(self.collection, ids=keys[i : i + WRITE_BATCH])

    def search(self, field: str, query: Any, n: int, where: ChunkFilter) -> list[tuple[int, float]]:
        """Every origin's best ``n`` rows within ``where``: this origin's by chunk id, the
        others' by their negated ``gid``."""
        expr = expression(where, self.origin)
        if n <= 0 or expr is None:
            return []
        found = self.client.search(self.collection, data=[query], anns_field=field, limit=min(n, 16384),
                                   filter=expr, output_fields=["origin", "chunk", "gid"],
                                   search_params=self._search_params(field, n))
        out = []
        for hit in found[0]:
            row = hit["entity"]
            own = row["origin"] == self.origin
            out.append((int(row["chunk"]) if own else -int(row["gid"]), float(hit["distance"])))
        return out

    @property
    def count(self) -> int:
        """This origin's rows (what the catalog says it holds); ``shared_count`` has the rest."""
        return self._count

    def shared_count(self) -> int:
        """Rows of the other origins in the collection."""
        return _count(self.client, self.collection, self._theirs)

    # -- other origins' rows --------------------------------------------------------------
    def foreign_rows(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        gids = sorted({-int(i) for i in ids if i < 0})
        out: dict[int, ChunkRow] = {}
        for i in range(0, len(gids), WRITE_BATCH):
            part = ",".join(map(str, gids[i : i + WRITE_BATCH]))
            for r in self.client.query(self.collection, filter=f"gid in [{part}] and {self._theirs}",
                                       output_fields=list(META_FIELDS), limit=16384):
                cid = -int(r["gid"])
                out[cid] = ChunkRow(
                    cid, str(r["path"]), int(r["ordinal"]), str(r["text"]), int(r["start_line"]), int(r["end_line"]),
                    tuple(json.loads(r["heading"] or "[]")), int(r["tokens"]), str(r["hash"]), int(r["page"]),
                    int(r["end_page"]), origin=str(r["origin"]),
                )
        return out

    def foreign_note(self, where: ChunkFilter) -> str | None:
        if where.scope is None or scope_expression(where.scope) is not None or not self.shared_count():
            return None
        what = "globs" if where.scope.globs else "path prefix with a backslash or control character"
        return (f"other daemons' chunks in the shared collection were left out: the filter's {what} "
                "cannot be applied to them")

    def origin_of(self, path: str) -> str | None:
        rows = self.client.query(self.collection, filter=f"path == {_quoted(path)} and {self._theirs}",
                                 output_fields=["origin"], limit=1)
        return str(rows[0]["origin"]) if rows else None

    # -- the seam -----------------------------------------------------------------------
    @property
    def dense(self) -> DenseStore:
        return self._dense

    @property
    def sparse(self) -> SparseStore | None:
        return self._sparse

    def add(self, embeddings: Sequence[NewEmbedding], result: BatchResult) -> None:
        self.remove(result.removed_ids)
        if result.added:
            fresh = {e.chunk_hash: (e.dense, None if e.sparse is None else encode(e.sparse)) for e in embeddings}
            self._write(result.added, fresh)
            self._count += len(result.added)

    def remove(self, ids: Sequence[int]) -> None:
        if len(ids):
            self._delete(ids)
            self._count = max(0, self._count - len(ids))

    def collected(self, hashes: Sequence[str]) -> None:
        """Rows are chunks, gone with them: nothing to do."""

    def check(self) -> list[str]:
        """The running count can drift (a chunk removed twice, a write that failed): the ids
        are compared with the catalog when the count disagrees with it."""
        if self._count == self.ctx.catalog.count_embedded_chunks(self.ctx.model_key):
            return []
        return ["vectors"] if self.reconcile() else []

    def rebuild(self) -> None:
        """This origin's rows again from the catalog; the other origins' stay."""
        self.client.delete(self.collection, filter=self._mine)
        self.reconcile()

    def unsaved(self, generation: int) -> list[str]:
        return ["vectors"] if self._flushed != generation else []

    def save(self, names: Sequence[str], generation: int) -> None:
        if "vectors" not in names:
            return
        try:
            self.client.flush(self.collection)
        except Exception as exc:  # the rows are written; a flush only seals them
            log.warning("cannot flush the Milvus collection %s (%s)", self.collection, _one_line(exc))
            return
        self._flushed = generation

    def describe(self) -> str:
        return f"milvus {self.index_type}"

    def close(self) -> None:
        _close(self.client)


def _read_label(described: dict[str, Any]) -> dict[str, Any]:
    """The label a collection was made with: its ``ragd.label`` property (Milvus Lite 3.2
    does not keep a collection's description), else its description (older collections)."""
    text = (described.get("properties") or {}).get(LABEL_PROPERTY) or described.get("description") or "{}"
    try:
        label = json.loads(text)
    except ValueError:
        return {}
    return label if isinstance(label, dict) else {}


def _sparse_row(blob: bytes | None) -> dict[int, float]:
    """Lexical weights as Milvus takes them (token -> weight, zeros dropped; never empty)."""
    if blob is not None:
        tokens, weights = decode(blob)
        row = {int(t): float(w) for t, w in zip(tokens.tolist(), weights.tolist(), strict=True) if w > 0}
        if row:
            return row
    return {EMPTY_TOKEN: 1e-30}
