"""Configuration: one frozen ``Config``, loaded from TOML and validated in one place.

The file is ``--config FILE``, else ``$RAGD_CONFIG``, else ``$XDG_CONFIG_HOME/ragd/config.toml``
(missing -> defaults). Every key is optional; see ``config.example.toml``. Sections are validated
generically from the dataclass fields and their types, plus the per-key ``RULES`` table, and every
problem is a one-line ``ConfigError``: ``<file>: <key>: <what is expected>, got <what was found>``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from ragd.errors import ConfigError
from ragd.requests import FUSIONS, MAX_CANDIDATES, MAX_K, MODES

DEFAULTS_NAME = "<defaults>"
"""The file name errors use when no file was read."""


@dataclass(frozen=True)
class RootConfig:
    """A folder to index."""

    path: Path
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelsConfig:
    """Which models run, where and how."""

    embedder: str = "BAAI/bge-m3"
    reranker: str = "BAAI/bge-reranker-v2-m3"
    fallback: str = "minilm"
    device: str = "auto"
    precision: str = "auto"
    reranker_precision: str = ""  # "" = as ``precision``
    batch_size: int = 16
    multi_vector: bool = False
    backend: str = "auto"
    cache_dir: str = ""

    @property
    def reranker_runs_in(self) -> str:
        """The reranker's precision setting: its own where set, else the shared one."""
        return self.reranker_precision or self.precision

    def with_precision(self, precision: str) -> ModelsConfig:
        """Both models in ``precision`` (a command's ``--precision``)."""
        return replace(self, precision=precision, reranker_precision="")


@dataclass(frozen=True)
class ChunkingConfig:
    """How documents are cut into chunks."""

    max_tokens: int = 512
    overlap_tokens: int = 64


@dataclass(frozen=True)
class SearchConfig:
    """Search defaults: result count, candidate pools, fusion weights, snippets."""

    k: int = 10
    candidates: int = 30
    retrieve: int = 100
    rerank: bool = True
    mode: str = "hybrid"
    dense_weight: float = 1.0
    sparse_weight: float = 0.3
    lexical_weight: float = 1.2
    fusion: str = "weighted"
    rrf_k: int = 60
    snippet_chars: int = 300
    rerank_max_tokens: int = 352
    rerank_min_tokens: int = 128
    colbert_weight: float = 1.0
    colbert_candidates: int = 100

    @property
    def rerank_floor(self) -> int:
        """The narrowest rerank window a deadline may use: ``rerank_min_tokens``, but never
        above ``rerank_max_tokens`` (a floor at or above it turns narrowing off)."""
        return min(self.rerank_min_tokens, self.rerank_max_tokens)


@dataclass(frozen=True)
class IndexingConfig:
    """Indexing limits and batching."""

    max_file_bytes: int = 20_000_000
    batch_chunks: int = 256


@dataclass(frozen=True)
class ExtractConfig:
    """Limits on reading documents (PDF, Office, EPUB, e-mail, ...), each in a worker process."""

    timeout_s: float = 60.0
    memory_mb: int = 2048
    max_unzipped_bytes: int = 500_000_000
    max_zip_ratio: float = 200.0


@dataclass(frozen=True)
class ServerConfig:
    """How ``ragd serve`` listens: a Unix socket always, TCP only when configured."""

    socket: str = ""
    tcp: str = ""
    allow_remote: bool = False
    token_file: str = ""
    max_concurrent_rpcs: int = 32
    max_streams: int = 8
    max_message_bytes: int = 4_194_304
    shutdown_grace_s: float = 10.0
    tcp_manage_roots: bool = False
    tcp_root_folders: tuple[str, ...] = ("~",)


@dataclass(frozen=True)
class McpConfig:
    """``ragd mcp``: the search deadline every tool call gets, and where ``--http`` listens."""

    deadline_ms: int = 5000
    max_results: int = 50
    host: str = "127.0.0.1"
    port: int = 8765
    allow_remote: bool = False


@dataclass(frozen=True)
class WatchConfig:
    """Watching roots for changes (``ragd serve``): debounce, reconcile scans, batch sizes."""

    enabled: bool = True
    debounce_ms: int = 500
    reconcile_interval_s: int = 3600
    max_batch_paths: int = 1000


@dataclass(frozen=True)
class StoreConfig:
    """Where the dense vectors and lexical weights live: ``faiss`` (FAISS and in-memory
    postings, snapshot in the data folder) or ``milvus`` (a Milvus Lite file or a server);
    ``mirrors``: the search mirrors' postings in memory, mapped from files, or by size."""

    backend: str = "faiss"
    mirrors: str = "auto"
    uri: str = ""
    token: str = ""
    collection: str = "ragd"
    # This daemon's name for its rows in a shared collection; "" derives one once per data
    # folder (host name + a random tag, kept in data_dir/origin).
    origin: str = ""
    # Milvus's index of the dense vectors: FLAT is exact; the others are approximate, for
    # collections of millions of chunks on a Milvus server.
    milvus_index: str = "FLAT"
    # FAISS (docs/architecture.md, Vector stores): exact search up to ``exact_limit`` chunks, an
    # IVF index trained in the background past it, searched over ``nprobe`` lists (0: 1/16 of
    # them); ``vectors`` is how the approximate index stores them.
    exact_limit: int = 50_000
    nprobe: int = 0
    vectors: str = "float32"


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (None for defaults)."""

    data_dir: Path
    roots: tuple[RootConfig, ...] = ()
    models: ModelsConfig = ModelsConfig()  # frozen, hence safe to share
    chunking: ChunkingConfig = ChunkingConfig()
    search: SearchConfig = SearchConfig()
    indexing: IndexingConfig = IndexingConfig()
    extract: ExtractConfig = ExtractConfig()
    server: ServerConfig = ServerConfig()
    watch: WatchConfig = WatchConfig()
    mcp: McpConfig = McpConfig()
    store: StoreConfig = StoreConfig()
    source: Path | None = None


NOT_IN_FILE: frozenset[str] = frozenset({"source"})
"""``Config`` fields that are not keys of the file."""


@dataclass(frozen=True)
class Rule:
    """Constraints on one key beyond its type: an inclusive range, allowed values, and checks."""

    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    half_of: str | None = None  # at most half of this sibling key (integer division)
    folder: bool = False  # a path that must be an existing folder
    unique: str | None = None  # in an array of tables: this field must differ between tables
    empty_ok: bool = False  # a string key where "" means "the default" (e.g. server.socket)
    zero_ok: bool = False  # a number key where 0 means "off", outside low..high (e.g. watch.reconcile_interval_s)


RULES: Mapping[str, Rule] = {
    "roots": Rule(unique="path"),
    "roots.path": Rule(folder=True),
    "models.fallback": Rule(choices=("minilm", "none")),
    "models.device": Rule(choices=("auto", "cpu", "cuda")),
    "models.precision": Rule(choices=("auto", "fp32", "fp16", "bf16", "int8", "int8-dynamic")),
    "models.reranker_precision": Rule(choices=("", "auto", "fp32", "fp16", "bf16", "int8")),
    "models.backend": Rule(choices=("auto", "torch", "openvino")),
    "models.cache_dir": Rule(empty_ok=True),
    "models.batch_size": Rule(low=1, high=1024),
    "chunking.max_tokens": Rule(low=16, high=8192),
    "chunking.overlap_tokens": Rule(low=0, half_of="max_tokens"),
    "search.k": Rule(low=1, high=MAX_K),  # a default k must pass the request checks too
    "search.candidates": Rule(low=1, high=MAX_CANDIDATES),
    "search.retrieve": Rule(low=1, high=10000),
    "search.dense_weight": Rule(low=0),
    "search.sparse_weight": Rule(low=0),
    "search.mode": Rule(choices=MODES),
    "search.lexical_weight": Rule(low=0),
    "search.fusion": Rule(choices=FUSIONS),
    "search.rrf_k": Rule(low=1, high=10000),
    "search.snippet_chars": Rule(low=20, high=10000),
    "search.rerank_max_tokens": Rule(low=16, high=8192),
    "search.rerank_min_tokens": Rule(low=16, high=8192),
    "search.colbert_weight": Rule(low=0),
    "search.colbert_candidates": Rule(low=1, high=1000),
    "indexing.max_file_bytes": Rule(low=1),
    "indexing.batch_chunks": Rule(low=1, high=100000),
    "extract.timeout_s": Rule(low=0.1, high=86400),
    "extract.memory_mb": Rule(low=256, high=1 << 20, zero_ok=True),
    "extract.max_unzipped_bytes": Rule(low=1_000_000),
    "extract.max_zip_ratio": Rule(low=10),
    "server.socket": Rule(empty_ok=True),
    "server.tcp": Rule(empty_ok=True),
    "server.token_file": Rule(empty_ok=True),
    "server.max_concurrent_rpcs": Rule(low=1, high=10000),
    "server.max_streams": Rule(low=1, high=1000),
    "server.max_message_bytes": Rule(low=1024, high=1 << 30),
    "server.shutdown_grace_s": Rule(low=0, high=3600),
    "watch.debounce_ms": Rule(low=0, high=60000),
    "watch.reconcile_interval_s": Rule(low=60, high=604800, zero_ok=True),
    "watch.max_batch_paths": Rule(low=1, high=100000),
    "mcp.deadline_ms": Rule(low=100, high=600000),
    "mcp.max_results": Rule(low=1, high=MAX_K),
    "mcp.port": Rule(low=1, high=65535),
    "store.backend": Rule(choices=("faiss", "milvus")),
    "store.mirrors": Rule(choices=("auto", "memory", "mapped")),
    "store.uri": Rule(empty_ok=True),
    "store.token": Rule(empty_ok=True),
    "store.origin": Rule(empty_ok=True),
    "store.milvus_index": Rule(choices=("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "AUTOINDEX")),
    "store.exact_limit": Rule(low=100, high=1 << 40),
    "store.nprobe": Rule(low=1, high=65536, zero_ok=True),
    "store.vectors": Rule(choices=("float32", "float16", "int8")),
}
"""Per-key constraints, keyed by the dotted key with array indexes dropped (``roots.path``)."""

_NO_RULE = Rule()
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def find_config_file(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Path | None, bool]:
    """Which file to read: --config FILE, else $RAGD_CONFIG, else $XDG_CONFIG_HOME/ragd/config.toml.

    Returns ``(path, required)``: a required file (the first two) must exist; the XDG default may not.
    """
    path, origin = _locate(explicit, os.environ if environ is None else environ)
    return path, origin is not None


def load_config(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Find, read and validate the config file; defaults when the XDG default file is missing."""
    env = os.environ if environ is None else environ
    path, origin = _locate(explicit, env)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if origin is None:
            return parse_config({}, None, env)
        raise ConfigError(_one_line(f"{path}: config file not found (from {origin})")) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_one_line(f"{path}: invalid TOML: {exc}")) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(_one_line(f"{path}: invalid TOML: not UTF-8 text (byte {exc.start})")) from None
    except OSError as exc:
        raise ConfigError(_one_line(f"{path}: cannot read file: {exc.strerror or exc}")) from None
    return parse_config(data, path, env)


def parse_config(
    data: Mapping[str, Any], source: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed TOML mapping; relative paths are relative to ``source``'s folder."""
    env = os.environ if environ is None else environ
    if source is not None:
        source = Path(os.path.abspath(source))
    ctx = _Context(
        file=str(source) if source is not None else DEFAULTS_NAME,
        base=source.parent if source is not None else Path.cwd(),
        environ=env,
    )
    if not isinstance(data, Mapping):
        ctx.fail("", f"expected a table of keys, got {_describe(data)}")
    config = _build(Config, data, ctx, prefix="", where="top-level keys",
                    fill={"data_dir": default_data_dir(env), "source": source})
    assert isinstance(config, Config)
    return replace(config, store=_check_store(config.store, ctx))


COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
"""What Milvus accepts as a collection name."""
ORIGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A daemon's origin in a shared collection: safe inside a Milvus string literal and before
the ``:`` of a row's key."""


def _check_store(store: StoreConfig, ctx: _Context) -> StoreConfig:
    """The ``[store]`` keys that depend on each other; a Milvus Lite path is anchored at the
    config file's folder like any other path."""
    if not COLLECTION_NAME.fullmatch(store.collection):
        ctx.fail("store.collection", "expected a Milvus collection name (a letter or _, then letters, digits "
                                     f"or _, at most 255), got {_describe(store.collection)}")
    if store.origin and not ORIGIN_NAME.fullmatch(store.origin):
        ctx.fail("store.origin", "expected a name of letters, digits, '.', '_' or '-' (starting with a letter or "
                                 f"digit, at most 64), got {_describe(store.origin)}")
    if store.backend != "milvus":
        return store
    uri = store.uri.strip()
    if not uri:
        ctx.fail("store.uri", 'backend "milvus" needs a uri: a file path ending in .db for Milvus Lite '
                              '(e.g. "~/.local/share/ragd/milvus.db") or a server address such as '
                              '"http://localhost:19530"')
    if "://" in uri:
        if not uri.startswith(("http://", "https://", "tcp://", "unix:")):
            ctx.fail("store.uri", f"expected a server address starting http://, https:// or tcp://, got {uri!r}")
        return store
    if not uri.endswith(".db"):
        ctx.fail("store.uri", f"expected a Milvus Lite file path ending in .db, or a server address "
                              f"(http://host:19530), got {uri!r}")
    path = Path(_expand_user(uri, ctx.environ))
    return replace(store, uri=str(path if path.is_absolute() else ctx.base / path))


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/ragd``, else ``~/.local/share/ragd``; absolute and resolved."""
    env = os.environ if environ is None else environ
    return (_xdg_home(env, "XDG_DATA_HOME", ".local/share") / "ragd").resolve()


@dataclass(frozen=True)
class _Context:
    """Where values come from: the file name for errors, the folder for relative paths, the environment."""

    file: str
    base: Path
    environ: Mapping[str, str]

    def fail(self, key: str, message: str) -> NoReturn:
        """Raise the one-line ``ConfigError`` for ``key``."""
        raise ConfigError(_one_line(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}"))


def _build(cls: Any, table: Mapping[str, Any], ctx: _Context, prefix: str, where: str,
           fill: Mapping[str, Any] | None = None) -> Any:
    """Validate ``table`` against dataclass ``cls`` and construct it; ``fill`` supplies computed values."""
    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and not (cls is Config and f.name in NOT_IN_FILE)]
    known = {f.name for f in fields}
    for key in table:
        if key not in known:
            ctx.fail(prefix + str(key), f"unknown key (known {where}: {', '.join(f.name for f in fields)})")
    kwargs: dict[str, Any] = dict(fill or {})
    for f in fields:
        label = prefix + f.name
        if f.name in table:
            kwargs[f.name] = _convert(table[f.name], hints[f.name], label, ctx)
        elif f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            ctx.fail(label, f"required key is missing from {where.removeprefix('keys in ')}")
    for f in fields:
        rule = _rule(prefix + f.name)
        if rule.half_of is None:
            continue
        value = kwargs.get(f.name, f.default)
        whole = kwargs.get(rule.half_of, _default(cls, rule.half_of))
        if value > whole // 2:
            got = str(value) if f.name in table else f"{value} (the default)"
            ctx.fail(prefix + f.name, f"expected an integer from {_num(rule.low)} to {whole // 2} "
                                      f"(half of {prefix}{rule.half_of} = {whole}), got {got}")
    return cls(**kwargs)


def _convert(value: Any, tp: Any, label: str, ctx: _Context, header: str | None = None) -> Any:
    """Check ``value`` against type ``tp`` and the rule for ``label``; return it in its final form."""
    rule = _rule(label)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            ctx.fail(label, f"expected a table, got {_describe(value)}")
        return _build(tp, value, ctx, prefix=label + ".", where=f"keys in {header or f'[{label}]'}")
    if typing.get_origin(tp) is tuple:
        (item_type, _) = typing.get_args(tp)
        if not isinstance(value, list):
            ctx.fail(label, f"{_expected(tp, rule, label)}, got {_describe(value)}")
        items = tuple(_convert(v, item_type, f"{label}[{i}]", ctx, header=f"[[{label}]]") for i, v in enumerate(value))
        if rule.unique is not None:
            seen: dict[Any, int] = {}
            for i, item in enumerate(items):
                key = getattr(item, rule.unique)
                if key in seen:
                    ctx.fail(f"{label}[{i}].{rule.unique}", f"duplicate of {label}[{seen[key]}]: {key}")
                seen[key] = i
        return items
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and _in_range(value, rule)
    elif tp is float:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and _in_range(value, rule))
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str) and (value in rule.choices if rule.choices else (value != "" or rule.empty_ok))
    elif tp is Path:
        ok = isinstance(value, str) and value != ""
        if ok:
            return _path(value, label, rule, ctx)
    else:  # pragma: no cover - a dataclass field with a type this module does not know
        raise TypeError(f"config field {label} has an unsupported type {tp!r}")
    if not ok:
        ctx.fail(label, f"{_expected(tp, rule, label)}, got {_describe(value)}")
    return value


def _path(raw: str, label: str, rule: Rule, ctx: _Context) -> Path:
    """Expand ``~``, anchor a relative path at the config file's folder, resolve; check folders."""
    path = Path(_expand_user(raw, ctx.environ))
    if not path.is_absolute():
        path = ctx.base / path
    try:
        path = path.resolve()
    except (OSError, RuntimeError) as exc:
        ctx.fail(label, f"cannot resolve path {path}: {exc}")
    if rule.folder:
        if not path.exists():
            ctx.fail(label, f"folder does not exist: {path}")
        if not path.is_dir():
            ctx.fail(label, f"not a folder: {path}")
    return path


def _expected(tp: Any, rule: Rule, label: str) -> str:
    """What a key takes, in words: ``expected an integer from 16 to 8192``."""
    if rule.choices:
        return "expected one of " + ", ".join(json.dumps(c) for c in rule.choices)
    if tp is bool:
        return "expected true or false"
    if tp is int or tp is float:
        noun = "an integer" if tp is int else "a number"
        if rule.zero_ok:
            noun = f"0 (off) or {noun}"
        if rule.low is not None and rule.high is not None:
            return f"expected {noun} from {_num(rule.low)} to {_num(rule.high)}"
        if rule.low is not None:
            return f"expected {noun} >= {_num(rule.low)}"
        if rule.high is not None:
            return f"expected {noun} <= {_num(rule.high)}"
        return f"expected {noun}"
    if tp is str:
        return "expected a string" if rule.empty_ok else "expected a non-empty string"
    if tp is Path:
        return "expected a folder path (a non-empty string)" if rule.folder else "expected a path (a non-empty string)"
    if typing.get_origin(tp) is tuple:
        item_type = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(item_type):
            return f"expected an array of tables ([[{label}]])"
        return "expected an array of non-empty strings"
    return f"expected {tp!r}"  # pragma: no cover


def _describe(value: object) -> str:
    """A found value, short and on one line: ``"big"``, ``3``, ``true``, ``a table``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, Mapping):
        return "a table"
    elif isinstance(value, list):
        text = "an array " + json.dumps(value, ensure_ascii=False, default=str)
    else:  # TOML dates and times
        text = f"a date/time ({value})"
    return text if len(text) <= 80 else text[:77] + "..."


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


def _in_range(value: float, rule: Rule) -> bool:
    if rule.zero_ok and value == 0:
        return True
    return (rule.low is None or value >= rule.low) and (rule.high is None or value <= rule.high)


def _rule(label: str) -> Rule:
    return RULES.get(re.sub(r"\[\d+\]", "", label), _NO_RULE)


def _default(cls: Any, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _one_line(message: str) -> str:
    """Escape line breaks so a message stays on one line."""
    return message.translate({ord(c): c.encode("unicode_escape").decode("ascii") for c in _LINE_BREAKS})


def _locate(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> tuple[Path, str | None]:
    """The config file and what named it: ``--config``, ``$RAGD_CONFIG`` or None (the XDG default)."""
    if explicit is not None:
        raw = os.fspath(explicit)
        if not raw:
            raise ConfigError('--config: expected a file path, got ""')
        return Path(os.path.abspath(_expand_user(raw, environ))), "--config"
    raw = environ.get("RAGD_CONFIG", "")
    if raw:
        return Path(os.path.abspath(_expand_user(raw, environ))), "$RAGD_CONFIG"
    return _xdg_home(environ, "XDG_CONFIG_HOME", ".config") / "ragd" / "config.toml", None


def _xdg_home(environ: Mapping[str, str], var: str, fallback: str) -> Path:
    """An XDG base folder: ``$var`` when set and absolute (as the spec asks), else ``~/fallback``."""
    raw = environ.get(var, "")
    if raw:
        path = Path(_expand_user(raw, environ))
        if path.is_absolute():
            return path
    return _home(environ) / fallback


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME", "")
    return Path(home) if home else Path.home()


def _expand_user(raw: str, environ: Mapping[str, str]) -> str:
    """``~`` and ``~/x`` from ``environ``'s HOME; ``~user`` as the OS does."""
    if raw == "~" or raw.startswith("~/"):
        return str(_home(environ)) + raw[1:]
    return os.path.expanduser(raw) if raw.startswith("~") else raw
