"""The Milvus backend (``store.backend = "milvus"``): one collection, keyed by chunk id, holds
each chunk's dense vector (FLOAT_VECTOR, inner product, exact FLAT index) and BGE-M3's lexical
weights (SPARSE_FLOAT_VECTOR, inner product), with its content hash. ``store.uri`` is a file
path ending in ``.db`` (Milvus Lite, in this process) or a server address; pymilvus's
``MilvusClient`` speaks to both.

Like FAISS it is a cache of the catalog: at open, and whenever its count disagrees after an
indexing run, the collection's (chunk id, hash) pairs are compared with the catalog's, rows
the catalog no longer has (or has with another hash) are deleted and missing ones added, so a
crash between a SQLite commit and the collection's write never serves a stale vector.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragd.errors import StoreError, StoreUnavailable
from ragd.models.base import FloatArray, SparseWeights
from ragd.store.base import EVERY_CHUNK, ChunkFilter, DenseStore, SparseStore, StoreContext, VectorStore
from ragd.store.catalog import BatchResult, Catalog, NewEmbedding
from ragd.store.codec import decode, encode

if TYPE_CHECKING:
    from ragd.config import StoreConfig

log = logging.getLogger(__name__)

LAYOUT = 1
"""Version of the collection's fields; a collection of another layout, model or dimension is
made again from the catalog."""
EMPTY_TOKEN = 2**32 - 2
"""Milvus refuses an empty sparse vector: a chunk without lexical weights holds this token,
which no query has, with a weight too small to matter."""
WRITE_BATCH = 1000
ID_WINDOW = 10_000
"""Chunk ids per query when the rows are read back (Milvus answers at most 16,384 rows)."""
CONNECT_TIMEOUT_S = 10.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def connect(config: StoreConfig) -> Any:
    """A ``MilvusClient`` for ``store.uri``; a one-line ``StoreError`` naming the setting when
    pymilvus is missing, the Lite file cannot be made or the server does not answer."""
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
    try:
        return MilvusClient(uri=uri, token=config.token, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # pymilvus raises its own exceptions and grpc's
        if lite:
            raise StoreError(f"store.uri: cannot open the Milvus Lite file {uri} ({_one_line(exc)}); "
                             "check store.uri") from None
        raise StoreUnavailable(f"store.uri: cannot reach the Milvus server at {uri} ({_one_line(exc)}); "
                               "check store.uri and store.token, and that the server runs") from None


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


def expression(where: ChunkFilter) -> str:
    """The filter as a Milvus boolean expression over the primary key ("" for every chunk)."""
    if where.ids is None:
        return ""
    return f"id in [{','.join(map(str, np.asarray(where.ids, dtype=np.int64).tolist()))}]"


class MilvusStore(VectorStore):
    name = "milvus"

    def __init__(self, ctx: StoreContext, client: Any, collection: str) -> None:
        super().__init__(ctx)
        self.client = client
        self.collection = collection
        self._dense = MilvusDense(self)
        self._sparse = MilvusSparse(self) if ctx.has_sparse else None
        self._count = 0
        self._flushed: int | None = None

    @classmethod
    def open(cls, config: StoreConfig, ctx: StoreContext) -> MilvusStore:
        store = cls(ctx, connect(config), config.collection)
        try:
            store._ensure_collection()
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
        return {"ragd": LAYOUT, "model": self.ctx.model_id, "dim": self.ctx.dim, "sparse": self.ctx.has_sparse}

    def _ensure_collection(self) -> None:
        """The collection, made when missing; one holding another model's vectors (or another
        layout) is dropped and made again, since the catalog can fill it."""
        client, name = self.client, self.collection
        if client.has_collection(name):
            try:
                label = json.loads(client.describe_collection(name).get("description") or "{}")
            except ValueError:
                label = {}
            if label == self._label():
                client.load_collection(name)
                return
            log.warning("Milvus collection %s holds %s, not %s: it is made again from the catalog",
                        name, label or "something else", self._label())
            client.drop_collection(name)
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description=json.dumps(self._label()))
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("hash", DataType.VARCHAR, max_length=128)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.ctx.dim)
        index = client.prepare_index_params()
        index.add_index(field_name="dense", index_type="FLAT", metric_type="IP")
        if self.ctx.has_sparse:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        # Indexes after the collection, without waiting: pymilvus's wait asks for a timestamp
        # Milvus Lite does not serve, then polls every 0.5 s.
        client.create_collection(name, schema=schema)
        client.create_index(name, index, sync=False)
        client.load_collection(name)

    def held(self, above: int = 0) -> dict[int, str]:
        """Chunk id -> content hash of every row of the collection, read in windows of chunk
        ids up to ``above`` and on until no row lies beyond (a query returns at most
        16,384 rows, and Milvus Lite has no query iterator's timestamps)."""
        out: dict[int, str] = {}
        start = 0
        while start <= above or self._query(f"id >= {start}", 1):
            rows = self._query(f"id >= {start} and id < {start + ID_WINDOW}", ID_WINDOW)
            out.update((int(r["id"]), str(r["hash"])) for r in rows)
            start += ID_WINDOW
        return out

    def _query(self, expr: str, limit: int) -> list[dict[str, Any]]:
        return list(self.client.query(self.collection, filter=expr, output_fields=["id", "hash"], limit=limit))

    def reconcile(self) -> bool:
        """Make the rows agree with the catalog's chunks of this embedder (by id and hash);
        whether anything changed."""
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
        vectors = dict(fresh)
        vectors.update(self.ctx.catalog.vectors_by_hash(self.ctx.model_key, [h for _, h in chunks if h not in fresh]))
        for cid, h in chunks:
            dense, sparse = vectors[h]
            row: dict[str, Any] = {"id": cid, "hash": h, "dense": np.asarray(dense, dtype=np.float32).tolist()}
            if self.ctx.has_sparse:
                row["sparse"] = _sparse_row(sparse)
            yield row

    def _write(self, chunks: Sequence[tuple[int, str]], fresh: dict[str, tuple[FloatArray, bytes | None]]) -> None:
        for i in range(0, len(chunks), WRITE_BATCH):
            self.client.upsert(self.collection, list(self._rows(chunks[i : i + WRITE_BATCH], fresh)))

    def _delete(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        for i in range(0, len(ids), WRITE_BATCH):
            self.client.delete(self.collection, ids=ids[i : i + WRITE_BATCH])

    def search(self, field: str, query: Any, n: int, where: ChunkFilter) -> list[tuple[int, float]]:
        if n <= 0 or where.nothing or self._count == 0:
            return []
        found = self.client.search(self.collection, data=[query], anns_field=field, limit=min(n, 16384),
                                   filter=expression(where), output_fields=["id"],
                                   search_params={"metric_type": "IP"})
        return [(int(hit["id"]), float(hit["distance"])) for hit in found[0]]

    @property
    def count(self) -> int:
        return self._count

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
        self._delete(self.held())
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

    def close(self) -> None:
        try:
            self.client.close()
        except Exception as exc:  # closing is best effort: the process may be ending
            log.debug("closing the Milvus client: %s", exc)


def _sparse_row(blob: bytes | None) -> dict[int, float]:
    """Lexical weights as Milvus takes them (token -> weight, zeros dropped; never empty)."""
    if blob is not None:
        tokens, weights = decode(blob)
        row = {int(t): float(w) for t, w in zip(tokens.tolist(), weights.tolist(), strict=True) if w > 0}
        if row:
            return row
    return {EMPTY_TOKEN: 1e-30}
