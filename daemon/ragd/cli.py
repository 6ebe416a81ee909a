"""The ``ragd`` command line: parses arguments, calls the library, prints (rich) or --json.

Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ragd import __version__
from ragd.errors import NotFoundError, RagdError, UsageError, outcome_for, outcome_for_code

F = TypeVar("F", bound=Callable[..., Any])


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _fail(exc: RagdError) -> None:
    click.echo(f"ragd: error: {exc}", err=True)
    sys.exit(outcome_for(exc).exit_status)


def config_option(fn: F) -> F:
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), default=None,
        help="Config file (default: $RAGD_CONFIG, else $XDG_CONFIG_HOME/ragd/config.toml).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(fn)


def _load(config_file: str | None) -> Any:
    from ragd.config import load_config

    return load_config(config_file)


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ragd")
def main() -> None:
    """ragd: a local retrieval daemon. Index folders, then search them."""


# -- index ------------------------------------------------------------------------------
class _RichProgress:
    """Progress bar on stderr: files, chunks embedded and tokens per second."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.started = time.monotonic()
        self.chunks = 0
        self.tokens = 0
        self.bar = Progress(
            TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
            TextColumn("{task.fields[chunks]} chunks"), TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(), TextColumn("{task.fields[current]}", style="dim"),
            console=_stderr(), transient=True,
        )
        self.task = self.bar.add_task("index", total=None, chunks=0, rate="-", current="")

    def __enter__(self) -> _RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def total(self, files: int) -> None:
        task = self.bar.tasks[0]
        self.bar.update(self.task, total=(task.total or 0) + files)

    def advance(self, files: int = 0, chunks: int = 0, tokens: int = 0, current: str | None = None) -> None:
        self.chunks += chunks
        self.tokens += tokens
        elapsed = max(1e-6, time.monotonic() - self.started)
        fields: dict[str, Any] = {"chunks": self.chunks, "rate": f"{self.tokens / elapsed:,.0f}"}
        if current is not None:
            fields["current"] = Path(current).name[-40:]
        self.bar.update(self.task, advance=files, **fields)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@config_option
@json_option
def index(paths: tuple[Path, ...], config_file: str | None, as_json: bool) -> None:
    """Index PATHS (default: every configured root): new and changed files are embedded,
    removed files leave the index. Safe to run again at any time."""
    try:
        cfg = _load(config_file)
        from ragd.engine import Engine
        from ragd.indexer import index_paths

        with Engine(cfg, rerank=False) as engine:
            with _RichProgress() as progress:
                report = index_paths(engine, paths, progress)
            models = engine.models
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        data = {
            "files_seen": report.files_seen,
            "files_indexed": report.files_indexed,
            "files_unchanged": report.files_unchanged,
            "files_removed": report.files_removed,
            "files_skipped": report.files_skipped,
            "files_failed": report.files_failed,
            "chunks_embedded": report.chunks_embedded,
            "chunks_reused": report.chunks_reused,
            "tokens_embedded": report.tokens_embedded,
            "seconds": report.seconds,
            "failures": [{"path": p, "status": s, "reason": r} for p, s, r in report.failures],
            "suspended": report.suspended,
            "models": {"embedder": models.embedder.model_id},
            "degraded": models.degraded,
        }
        _print_json(data)
        return
    rate = report.tokens_embedded / report.seconds if report.seconds else 0.0
    click.echo(
        f"indexed {report.files_indexed} files ({report.files_unchanged} unchanged, {report.files_removed} removed, "
        f"{report.files_skipped} skipped, {report.files_failed} failed): {report.chunks_embedded} chunks embedded, "
        f"{report.chunks_reused} reused, {rate:,.0f} tokens/s, {report.seconds:.1f} s"
    )
    for path, status, reason in report.failures:
        click.echo(f"  {status}: {path}: {reason}", err=True)
    for root, reason in report.suspended.items():
        click.echo(f"  suspended: {root}: {reason}; its files are kept, not searched, until it is back "
                   "(`ragd roots rm` drops them)", err=True)


# -- search -----------------------------------------------------------------------------
@main.command()
@click.argument("query", required=False)
@click.option("-k", "k", type=int, default=None, help="Number of results (default: search.k).")
@click.option(
    "--candidates", type=int, default=None, help="Candidates passed to the reranker (default: search.candidates)."
)
@click.option("--no-rerank", is_flag=True, help="Skip the reranker; rank by retrieval score.")
@click.option("--path", "path_prefix", default=None, help="Only files whose path starts with this prefix.")
@click.option("--daemon", "need_daemon", is_flag=True, help="Only ask the running daemon; exit 1 without one.")
@click.option("--like", "like", default=None, metavar="PATH[:LINE]",
              help="More like this: search with an indexed file's text, or with its chunk at LINE "
                   "(its stored vectors: nothing is embedded). The file itself is left out of the hits.")
@click.option("--same-file", is_flag=True, help="With --like PATH:LINE: keep the file's other chunks among the hits.")
@click.option(
    "--deadline", type=click.FloatRange(min=0, min_open=True, max=3600), default=None, metavar="SECONDS",
    help="Answer within SECONDS: rerank as many candidates as fit (narrowing the window first). "
         "Without a daemon the time counts from when the models are loaded.",
)
@config_option
@json_option
def search(
    query: str | None, k: int | None, candidates: int | None, no_rerank: bool, path_prefix: str | None,
    need_daemon: bool, like: str | None, same_file: bool, deadline: float | None, config_file: str | None,
    as_json: bool,
) -> None:
    """Search the index for QUERY (``-``: read it from standard input), or with --like for
    what resembles a file or one of its chunks: through the running daemon, else in this process."""
    try:
        cfg = _load(config_file)
        query, like_at = _query_source(query, like, same_file)
        if like_at is None:
            _check_request(query, cfg.search.k if k is None else k,
                           cfg.search.candidates if candidates is None else candidates)
        rerank = cfg.search.rerank and not no_rerank
        prefix = _absolute_prefix(path_prefix)
        data = _search_daemon(cfg, query, k, candidates, rerank, prefix, deadline, like_at, required=need_daemon)
        local = data is None
        if data is None:
            click.echo("ragd: no daemon answered; searching in this process (loads the models, slower)", err=True)
            data = _search_local(cfg, query, k, candidates, rerank, prefix, deadline, like_at)
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json(data)
        return
    if not local:  # loading the models in this process already said so
        for reason in data["degraded"]:
            click.echo(f"ragd: degraded: {reason}", err=True)
    if not data["hits"]:
        click.echo("no results")
    for rank, hit in enumerate(data["hits"], 1):
        heading = f"  [{' > '.join(hit['heading'])}]" if hit["heading"] else ""
        scores = f"retrieval {hit['retrieval_score']:.3f}"
        if hit["rerank_score"] is not None:
            scores += f", rerank {hit['rerank_score']:.3f}"
        pages = ""
        if hit.get("page"):
            last = hit.get("end_page") or hit["page"]
            pages = f" (p. {hit['page']})" if last == hit["page"] else f" (pp. {hit['page']}-{last})"
        origin = f"  (on {hit['origin']})" if hit.get("origin") else ""  # another daemon's, in a shared index
        click.secho(f"{rank}. {hit['path']}:{hit['start_line']}-{hit['end_line']}{pages}{heading}{origin}", bold=True)
        click.echo(f"   {scores}")
        click.echo(f"   {hit['snippet']}")
    t = data["timings"]
    window = f" in {data['rerank_window']}-token windows" if data["rerank_window"] else ""
    click.echo(
        f"({len(data['hits'])} hits, {data['reranked']} reranked{window}, {t.get('total_ms', 0):.0f} ms: "
        + ", ".join(f"{k_[:-3]} {v:.0f}" for k_, v in t.items() if k_ != "total_ms") + ")",
        err=True,
    )


def _check_request(query: str, k: int, candidates: int) -> None:
    """The checks the daemon makes, before the daemon is asked (``ragd.requests`` is light)."""
    from ragd.requests import check_counts, check_query

    check_query(query)
    check_counts(k, candidates)


def _text_arg(name: str, value: str) -> str:
    """A command-line argument that must be valid UTF-8 (a path the daemon is told about)."""
    from ragd.requests import check_text

    check_text(name, value)
    return value


def _client_failure(cfg: Any, exc: Any) -> RagdError:
    """A ragd_client error as the CLI reports it: its exit status from the daemon's error table."""
    from ragd_client import DaemonUnavailable, DeadlineExceeded, InvalidArgument

    if isinstance(exc, InvalidArgument):  # also raised by the client itself, before any call
        return UsageError(exc.details)
    if isinstance(exc, DaemonUnavailable):
        return RagdError(f"no daemon answered on {_socket_for(cfg)}: start it with `ragd serve`")
    if isinstance(exc, DeadlineExceeded):
        return RagdError(_late(cfg, exc.details))
    if outcome_for_code(exc.code_name).exit_status == 2:
        return UsageError(exc.details)
    return RagdError(exc.details)


def _absolute_prefix(prefix: str | None) -> str | None:
    import os

    if not prefix:
        return None
    expanded = os.path.expanduser(prefix)
    absolute = os.path.abspath(expanded)
    return absolute + "/" if expanded.endswith("/") and not absolute.endswith("/") else absolute


def _client(cfg: Any, timeout: float | None = 30.0) -> Any:
    from ragd_client import Client

    return Client(address="unix://" + str(_socket_for(cfg)), timeout=timeout)


def _socket_for(cfg: Any) -> Path:
    import os

    from ragd_client import default_socket_path

    if cfg.server.socket:
        return Path(os.path.expanduser(cfg.server.socket))
    return default_socket_path(data_dir=cfg.data_dir)


def _query_source(query: str | None, like: str | None, same_file: bool) -> tuple[str, Like | None]:
    """The query text (``-`` reads standard input, which must be UTF-8), or where --like points."""
    from ragd.requests import check_text

    if like is not None:
        if query:
            raise UsageError("give a QUERY or --like, not both")
        check_text("--like", like)
        path, line = like, 0
        head, sep, tail = like.rpartition(":")
        if sep and tail.isdigit() and not Path(like).exists():
            path, line = head, int(tail)
        return "", (_absolute_prefix(path) or path, line, same_file)
    if same_file:
        raise UsageError("--same-file goes with --like PATH:LINE")
    if query is None:
        raise UsageError("give a QUERY to search for (or - to read it from standard input, or --like PATH)")
    if query == "-":
        data: bytes = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            raise UsageError(f"standard input: not valid UTF-8 (at byte {exc.start}); pass the text in UTF-8") from None
    return query, None


Like = tuple[str, int, bool]  # (absolute path, line or 0 for the whole file, keep the file's other chunks)


def _search_daemon(
    cfg: Any, query: str, k: int | None, candidates: int | None, rerank: bool, prefix: str | None,
    deadline: float | None, like: Like | None, *, required: bool,
) -> dict[str, Any] | None:
    """The daemon's answer as the --json object, or None when no daemon answers (and not required)."""
    from ragd_client import DaemonUnavailable, RagdClientError

    sock = _socket_for(cfg)
    if not sock.exists() and not required:
        return None
    try:
        with _client(cfg, timeout=600.0) as client:
            path, line, same_file = like or ("", 0, False)
            result = client.search(query, k=k or 0, candidates=candidates or 0, rerank=rerank, path_prefix=prefix,
                                   deadline=deadline, like_path=path, like_line=line, like_same_file=same_file)
    except DaemonUnavailable as exc:
        if required:
            raise RagdError(f"no daemon answered on {sock}: start it with `ragd serve` ({exc.details})") from exc
        return None
    except RagdClientError as exc:
        raise _client_failure(cfg, exc) from exc
    data = result.to_dict()
    data["query"] = query.strip()
    return data


def _search_local(
    cfg: Any, query: str, k: int | None, candidates: int | None, rerank: bool, prefix: str | None,
    deadline: float | None, like: Like | None,
) -> dict[str, Any]:
    from ragd.service import search_in_process

    path, line, same_file = like or ("", 0, False)
    result = search_in_process(cfg, query, k=k, candidates=candidates, rerank=rerank, path_prefix=prefix,
                               deadline_s=deadline, like_path=path, like_line=line, like_same_file=same_file)
    return result.to_json()


# -- models -----------------------------------------------------------------------------
@main.group()
def models() -> None:
    """Show, download or convert the configured models."""


def _describe_models(cfg: Any) -> list[dict[str, Any]]:
    from ragd.models.resolve import resolve_model

    rows = []
    roles = [("embedder", cfg.models.embedder), ("reranker", cfg.models.reranker)]
    if cfg.models.fallback != "none":
        roles.append(("fallback", cfg.models.fallback))
    for role, setting in roles:
        if setting == "none":
            rows.append({"role": role, "setting": setting, "found": False, "source": None, "path": None,
                         "size_bytes": 0, "error": "turned off in the config"})
            continue
        loc = resolve_model(setting)
        rows.append({
            "role": role, "setting": setting, "name": loc.name, "found": loc.found, "source": loc.source,
            "path": str(loc.path) if loc.path else None, "size_bytes": loc.size_bytes(), "error": loc.error,
        })
    return rows


@models.command("ls")
@config_option
@json_option
def models_ls(config_file: str | None, as_json: bool) -> None:
    """List each configured model, where it was found (or why not) and its size."""
    try:
        cfg = _load(config_file)
        rows = _describe_models(cfg)
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json({"models": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("role", "model", "status", "size")
    for r in rows:
        status = f"[green]found[/] ({r['source']}: {r['path']})" if r["found"] else f"[red]missing[/]: {r['error']}"
        size = f"{r['size_bytes'] / 1e6:,.0f} MB" if r["found"] else "-"
        table.add_row(r["role"], r["setting"], status, size)
    Console().print(table)


@models.command("pull")
@config_option
def models_pull(config_file: str | None) -> None:
    """Download the configured models into the Hugging Face cache (needs the network)."""
    try:
        cfg = _load(config_file)
        from ragd.models.resolve import pull

        for setting in (cfg.models.embedder, cfg.models.reranker):
            if setting == "none":
                continue
            click.echo(f"pulling {setting} ...", err=True)
            path = pull(setting)
            click.echo(f"{setting}: {path}")
    except RagdError as exc:
        _fail(exc)


@models.command("convert")
@config_option
@click.option("--role", type=click.Choice(["embedder", "reranker", "all"]), default="all", show_default=True,
              help="Which configured model to convert.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "int8", "int8-dynamic"]), default=None,
              help="Override models.precision (and models.reranker_precision) for this conversion.")
@click.option("--calibration", type=click.Path(exists=True), multiple=True,
              help="Text files or folders to calibrate static int8 on, or to check int8-dynamic's agreement on "
                   "(repeatable); default: built-in English prose.")
@click.option("--force", is_flag=True, help="Convert again even when a current conversion is cached.")
@json_option
def models_convert(config_file: str | None, role: str, precision: str | None, calibration: tuple[str, ...],
                   force: bool, as_json: bool) -> None:
    """Convert the models for the OpenVINO backend now (otherwise done once on first use).

    int8 is static quantisation calibrated on real text; --calibration with your own documents
    (e.g. Chinese text for Chinese collections) fits it to them. int8-dynamic keeps the fastest
    of its recipes that agrees with the float model on that text. Vectors already indexed with
    another calibration stay valid but differ slightly; re-index for the best match."""
    try:
        cfg = _load(config_file)
        models_cfg = cfg.models if precision is None else cfg.models.with_precision(precision)
        from ragd.models import convert_models

        roles = ["embedder", "reranker"] if role == "all" else [role]
        say = (lambda m: None) if as_json else (lambda m: click.echo(f"ragd: {m}", err=True))
        rows = convert_models(models_cfg, roles, [Path(c) for c in calibration], force=force, progress=say)
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json({"converted": rows})
        return
    for r in rows:
        took = f"converted in {r['seconds']} s" if r["converted"] else "already converted"
        samples = f", {r['calibration_samples']} calibration samples" if r["calibration_samples"] else ""
        runtime = "ONNX Runtime" if r["precision"] == "int8-dynamic" else "OpenVINO"
        click.echo(f"{r['role']}: {r['model']} -> {runtime} {r['precision']}, float operations in {r['arithmetic']} "
                   f"({took}{samples}): {r['folder']}")
        if r["note"]:
            click.echo(f"ragd: note: {r['note']}", err=True)


# -- eval -------------------------------------------------------------------------------
def _parse_weights(values: tuple[str, ...]) -> dict[str, float] | None:
    from ragd.errors import UsageError

    out: dict[str, float] = {}
    for item in values:
        name, sep, raw = item.partition("=")
        try:
            out[name.strip()] = float(raw)
        except ValueError:
            sep = ""
        if not sep:
            raise UsageError(f"--weight takes SIGNAL=NUMBER (dense, sparse, lexical, colbert), got {item!r}")
    return out or None


@main.command("eval")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--embedder", default=None, help="Embedder to evaluate (default: models.embedder).")
@click.option("--reranker", default=None, help="Reranker for --rerank (default: models.reranker).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16", "int8", "int8-dynamic"]),
              default=None,
              help="Both models' precision (default: models.precision, and models.reranker_precision where "
                   "set); the cached index keeps what it was built with.")
@click.option("--backend", type=click.Choice(["auto", "torch", "openvino"]), default=None,
              help="What runs the models (default: models.backend).")
@click.option("--mode", type=click.Choice(["dense", "sparse", "lexical", "hybrid"]), default=None,
              help="Retrievers to use (default: search.mode).")
@click.option("--fusion", type=click.Choice(["weighted", "rrf"]), default=None,
              help="How hybrid signals are combined (default: search.fusion).")
@click.option("--weight", "weights", multiple=True, metavar="SIGNAL=W",
              help="Fusion weight of dense, sparse, lexical or colbert for this run; repeatable.")
@click.option("--rerank", is_flag=True, help="Rerank the candidates with the cross-encoder.")
@click.option("--deadline", type=click.FloatRange(min=0, min_open=True, max=3600), default=None, metavar="SECONDS",
              help="With --rerank: give every search this deadline, as a client would (the quality a deadline keeps).")
@click.option("--rerank-min-tokens", type=click.IntRange(16, 8192), default=None, metavar="N",
              help="Narrowest rerank window a deadline may use (default: search.rerank_min_tokens).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where indexes are kept between runs (default: data_dir/eval).")
@click.option("--long-queries", is_flag=True,
              help="Score long queries instead: each document's judged questions joined into one query.")
@config_option
@json_option
def eval_command(
    dataset: Path, embedder: str | None, reranker: str | None, precision: str | None, backend: str | None,
    mode: str | None, fusion: str | None, weights: tuple[str, ...], rerank: bool, deadline: float | None,
    rerank_min_tokens: int | None, cache_dir: Path | None, long_queries: bool, config_file: str | None,
    as_json: bool,
) -> None:
    """Score retrieval on DATASET, a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv):
    nDCG@10, Recall@100, MRR@10 and query latency, through the daemon's search code. The
    index is cached per dataset and embedder, so a re-run embeds nothing."""
    import dataclasses

    try:
        cfg = _load(config_file)
        from ragd.evaluate import load_beir, open_eval, score_queries

        if deadline is not None and not rerank:
            from ragd.errors import UsageError

            raise UsageError("--deadline bounds the reranking: add --rerank")
        load_beir(dataset)  # a clear usage error before any model loads
        overrides: dict[str, Any] = {}
        if embedder is not None:
            overrides["embedder"] = embedder
        if reranker is not None:
            overrides["reranker"] = reranker
        if backend is not None:
            overrides["backend"] = backend
        models_cfg = cfg.models if precision is None else cfg.models.with_precision(precision)
        cfg = dataclasses.replace(cfg, models=dataclasses.replace(models_cfg, **overrides))
        if rerank_min_tokens is not None:
            cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, rerank_min_tokens=rerank_min_tokens))
        parsed = _parse_weights(weights)
        cache = cache_dir if cache_dir is not None else cfg.data_dir / "eval"
        with _RichProgress() as progress:
            index = open_eval(dataset, cfg, cache, rerank=rerank, progress=progress)
        if long_queries:
            from ragd.evaluate import long_queries as joined

            index = dataclasses.replace(index, dataset=joined(index.dataset))
        try:
            report = score_queries(index, rerank=rerank, mode=mode, weights=parsed, fusion=fusion, deadline=deadline)
        finally:
            index.close()
    except RagdError as exc:
        _fail(exc)
        return
    data = report.to_json()
    if as_json:
        _print_json(data)
        return
    for reason in report.degraded:
        click.echo(f"ragd: degraded: {reason}", err=True)
    lat = report.latency_ms
    click.echo(f"{report.dataset}: {report.queries} queries, {report.chunks} chunks, mode {report.mode}"
               + (f" ({report.fusion}: " + ", ".join(f"{k} {v:g}" for k, v in report.weights.items()) + ")"
                  if report.mode == "hybrid" else "")
               + f", embedder {report.embedder}" + (f", reranker {report.reranker}" if report.reranker else ""))
    click.echo(f"  nDCG@10 {report.metrics['ndcg@10']:.4f}  Recall@100 {report.metrics['recall@100']:.4f}  "
               f"MRR@10 {report.metrics['mrr@10']:.4f}")
    if report.chunk_metrics is not None:
        cm = report.chunk_metrics
        click.echo(f"  chunk level ({cm['queries']:.0f} queries with answer text): nDCG@10 {cm['ndcg@10']:.4f}  "
                   f"Recall@100 {cm['recall@100']:.4f}  MRR@10 {cm['mrr@10']:.4f}")
    click.echo(f"  latency ms: p50 {lat.get('p50', 0):.1f}  p95 {lat.get('p95', 0):.1f}  max {lat.get('max', 0):.1f}"
               + (f" (deadline {report.deadline_s:g} s)" if report.deadline_s is not None else ""))
    if report.reranked is not None:
        rr = report.reranked
        click.echo(f"  reranked per query: mean {rr['mean']:g}, min {rr['min']:g}"
                   + (f"; {rr['windowed_queries']:g} queries read through windows (narrowest {rr['narrowest_window']:g}"
                      " tokens)" if rr["windowed_queries"] else ""))
    qu = report.query_use
    if qu.get("windowed_queries"):
        click.echo(f"  long queries: {qu['windowed_queries']:g} read in several windows (mean {qu['mean_tokens']:g} "
                   f"tokens, at most {qu['max_tokens']:g}; mean {qu['mean_windows']:g} windows)")
    click.echo(f"  index: {report.index_seconds:.1f} s, {report.tokens_embedded} tokens embedded, "
               f"{report.tokens_per_second:,.0f} tokens/s")


# -- mcp ------------------------------------------------------------------------------
@main.command("mcp")
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP at /mcp instead of stdio.")
@click.option("--host", default=None, help="With --http: the address to bind (default: mcp.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="With --http: the port (default: mcp.port, 8765).")
@click.option("--address", default=None,
              help="The daemon's address (default: server.socket, else the default socket).")
@config_option
def mcp_command(use_http: bool, host: str | None, port: int | None, address: str | None,
                config_file: str | None) -> None:
    """Serve ragd to MCP clients (assistants): search, get, multi_get, similar and status, over stdio or --http."""

    from ragd.errors import ConfigError, UsageError

    try:
        cfg = _load(config_file)
        if not use_http and (host is not None or port is not None):
            raise UsageError("--host and --port need --http")
        from ragd_client import normalize_address
        from ragd_mcp import Settings, build_server, is_loopback, run_http

        try:
            target = normalize_address(address) if address is not None else "unix://" + str(_socket_for(cfg))
        except ValueError as exc:
            raise UsageError(f"--address: {exc}") from None
        server = build_server(Settings(address=target, deadline_ms=cfg.mcp.deadline_ms,
                                       max_results=cfg.mcp.max_results))
        if not use_http:
            try:
                server.run("stdio")
            except KeyboardInterrupt:
                pass
            return
        bind = host or cfg.mcp.host
        token = None
        if not is_loopback(bind):
            if not cfg.mcp.allow_remote:
                raise ConfigError(f"{'--host' if host else 'mcp.host'}: {bind} is not a loopback address; set "
                                  "mcp.allow_remote = true to serve MCP there (with the token of server.token_file)")
            from ragd.auth import load_or_create_token, token_path

            token = load_or_create_token(token_path(cfg))
        try:
            run_http(server, bind, port or cfg.mcp.port, token)
        except OSError as exc:
            raise RagdError(f"cannot listen on {bind}:{port or cfg.mcp.port}: {exc.strerror or exc}") from None
    except RagdError as exc:
        _fail(exc)


# -- daemon ---------------------------------------------------------------------------
@main.command()
@config_option
def serve(config_file: str | None) -> None:
    """Run the daemon: watch the roots, keep the index live, answer gRPC calls."""
    try:
        cfg = _load(config_file)
        from ragd.server import serve as run_server

        code = run_server(cfg)
    except RagdError as exc:
        _fail(exc)
        return
    sys.exit(code)


def _late(cfg: Any, details: str) -> str:
    """Why a call to the daemon ran out of time: a daemon still loading its models says so."""
    from ragd_client import RagdClientError

    try:
        with _client(cfg, timeout=5.0) as client:
            loading = not client.status().serving
    except RagdClientError:
        loading = False
    if loading:
        return ("the daemon is still loading its models (a first start converts them, which takes "
                "minutes): `ragd status --watch` shows when it serves; try again then")
    return f"the daemon did not answer in time ({details})"


def _daemon_call(cfg: Any, call: Callable[[Any], Any]) -> Any:
    """Run ``call(client)`` against the daemon; no daemon is a one-line error, exit 1."""
    from ragd_client import RagdClientError

    try:
        with _client(cfg) as client:
            return call(client)
    except RagdClientError as exc:
        raise _client_failure(cfg, exc) from exc


def _print_status(st: dict[str, Any]) -> None:
    state = "serving" if st["serving"] else "not serving (loading or rebuilding)"
    click.echo(f"ragd {st.get('version', '')}: {state}")
    click.echo(f"  files: {st['files_indexed']} indexed, {st['files_pending']} pending, "
               f"{st['files_failed']} not indexed; {st.get('chunks', 0)} chunks"
               + (f" (+ {st['shared_chunks']} of other daemons in the shared collection)"
                  if st.get("shared_chunks") else ""))
    models = st.get("models") or {}
    click.echo(f"  models: embedder {models.get('embedder') or '-'}, reranker {models.get('reranker') or 'off'}")
    if st.get("vector_index"):
        click.echo(f"  vectors: {st['vector_index']}")
    for reason in st.get("degraded", []):
        click.echo(f"  degraded: {reason}")
    if st.get("writer_error"):
        click.echo(f"  writer: {st['writer_error']}")
    for r in st.get("roots", []):
        watching = "watching" if r.get("watching") else "not watching"
        click.echo(f"  {r['path']}: {r['files_indexed']} indexed, {r['files_pending']} pending, "
                   f"{r['files_failed']} not indexed ({watching})")
        if r.get("suspended"):
            click.echo(f"    suspended: {r['suspended']} (its files are kept, not searched, until it is back)")
        if r.get("watch_problem"):
            click.echo(f"    scanned instead of watched: {r['watch_problem']}")
        for f in r.get("failures", [])[:5]:
            click.echo(f"    {f['status']}: {f['path']}: {f['reason']}")
    if st.get("current_file"):
        eta = st.get("eta")
        click.echo(f"  now: {st['current_file']} ({st.get('tokens_per_second', 0):,.0f} tok/s"
                   + (f", about {eta:,.0f} s left)" if eta and eta > 0 else ")"))


@main.command()
@click.option("--watch", "follow", is_flag=True, help="Keep showing progress until interrupted.")
@config_option
@json_option
def status(follow: bool, config_file: str | None, as_json: bool) -> None:
    """Show what the daemon is doing: files indexed, pending and failed per root, models."""
    try:
        cfg = _load(config_file)
        if not follow:
            st = _daemon_call(cfg, lambda c: c.status().to_dict())
            if as_json:
                _print_json(st)
            else:
                _print_status(st)
            return
        _follow_status(cfg, as_json)
    except RagdError as exc:
        _fail(exc)


def _follow_status(cfg: Any, as_json: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    def run(client: Any) -> None:
        if as_json:
            for st in client.watch_status():
                click.echo(json.dumps(st.to_dict(), ensure_ascii=False))
            return
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), console=_stderr()) as bar:
            task = bar.add_task("indexed", total=None, info="")
            for st in client.watch_status():
                d = st.to_dict()
                done = d["files_indexed"]
                total = done + d["files_pending"]
                current = Path(d["current_file"]).name if d["current_file"] else ""
                info = f"{d['tokens_per_second']:,.0f} tok/s {current}"
                bar.update(task, completed=done, total=total or None, info=info)

    try:
        _daemon_call(cfg, run)
    except KeyboardInterrupt:
        pass


@main.group()
def roots() -> None:
    """Add, remove or list the daemon's roots."""


@roots.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@config_option
@json_option
def roots_add(path: Path, config_file: str | None, as_json: bool) -> None:
    """Register PATH with the daemon; it is indexed in the background."""
    try:
        cfg = _load(config_file)
        absolute = _text_arg("PATH", str(path.expanduser().resolve()))
        root = _daemon_call(cfg, lambda c: c.add_root(absolute))
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json(root.to_dict())
    else:
        click.echo(f"added {root.path}; indexing in the background (see `ragd status`)")


@roots.command("rm")
@click.argument("path", type=click.Path(path_type=Path))
@config_option
@json_option
def roots_rm(path: Path, config_file: str | None, as_json: bool) -> None:
    """Remove PATH from the daemon's roots; its files leave the index."""
    try:
        cfg = _load(config_file)
        absolute = _text_arg("PATH", str(path.expanduser().absolute()))
        removed = _daemon_call(cfg, lambda c: c.remove_root(absolute))
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json({"path": absolute, "files_removed": removed})
    else:
        click.echo(f"removed {absolute} ({removed} files left the index)")


@roots.command("ls")
@config_option
@json_option
def roots_ls(config_file: str | None, as_json: bool) -> None:
    """List the daemon's roots."""
    try:
        cfg = _load(config_file)
        listed = _daemon_call(cfg, lambda c: [r.to_dict() for r in c.roots()])
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json({"roots": listed})
        return
    for r in listed:
        click.echo(r["path"] + ("  (config)" if r.get("configured") else ""))


# -- store ------------------------------------------------------------------------------
@main.group()
def store() -> None:
    """List or forget the origins (daemons) whose rows share a Milvus collection."""


def _origins_of(cfg: Any) -> tuple[str | None, set[str]]:
    """This data folder's origin (None before its first open) and every name its rows may be
    under (with one a new store.origin renamed, whose rows its daemon deletes at its next start)."""
    if cfg.store.backend != "milvus":
        raise UsageError(f'origins exist only with store.backend = "milvus" (a collection several daemons share); '
                         f'this config has store.backend = "{cfg.store.backend}"')
    from ragd.store.milvus import resolve_origin

    _, recorded = resolve_origin(cfg.store, cfg.data_dir)
    own = cfg.store.origin or recorded
    return own, {o for o in (own, recorded) if o}


def _interactive() -> bool:
    return sys.stdin.isatty()


@store.command("origins")
@config_option
@json_option
def store_origins(config_file: str | None, as_json: bool) -> None:
    """List the origins in the configured Milvus collection with their rows, this data folder's
    marked. Opens the store directly: a daemon holding a Milvus Lite file must be stopped first."""
    try:
        cfg = _load(config_file)
        own, ours = _origins_of(cfg)
        from ragd.store.milvus import origin_counts, shared_collection

        with shared_collection(cfg.store) as client:
            counts = origin_counts(client, cfg.store.collection)
    except RagdError as exc:
        _fail(exc)
        return
    rows: list[dict[str, Any]] = [{"origin": o, "rows": n, "own": o in ours} for o, n in counts.items()]
    if as_json:
        _print_json({"collection": cfg.store.collection, "origin": own, "origins": rows})
        return
    click.echo(f"Milvus collection {cfg.store.collection!r}: {len(rows)} origin{'s' if len(rows) != 1 else ''}, "
               f"{sum(counts.values())} rows")
    width = max((len(r["origin"]) for r in rows), default=0)
    for r in rows:
        mark = ""
        if r["origin"] == own:
            mark = "  (this data folder)"
        elif r["own"]:
            mark = "  (this data folder's former origin: its daemon deletes these rows at its next start)"
        click.echo(f"  {r['origin']:<{width}}  {r['rows']:>9,} rows{mark}")
    if own is not None and own not in counts:
        click.echo(f"  (this data folder's origin {own} has no rows)")


@store.command("forget")
@click.argument("origin")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed when standard input is not a terminal).")
@config_option
@json_option
def store_forget(origin: str, yes: bool, config_file: str | None, as_json: bool) -> None:
    """Delete every row of ORIGIN from the configured Milvus collection: for a machine that left
    the team (a daemon of that origin that starts again writes its rows back). This data
    folder's own origin is refused: its daemon manages those rows."""
    try:
        cfg = _load(config_file)
        _text_arg("ORIGIN", origin)
        _, ours = _origins_of(cfg)
        if origin in ours:
            raise UsageError(f"{origin} is this data folder's origin ({cfg.data_dir}): its rows are managed by its "
                             "daemon, which adds and deletes them with its files (`ragd roots rm` drops a root's)")
        from ragd.store.milvus import forget_origin, origin_counts, shared_collection

        with shared_collection(cfg.store) as client:
            counts = origin_counts(client, cfg.store.collection)
            if origin not in counts:
                there = ", ".join(f"{o} ({n} rows)" for o, n in counts.items()) or "none"
                raise NotFoundError(f"origin {origin} has no rows in Milvus collection {cfg.store.collection!r}; "
                                    f"its origins: {there}")
            if not yes:
                if not _interactive():
                    raise UsageError(f"forgetting origin {origin} deletes its {counts[origin]} rows: pass --yes to "
                                     "confirm (standard input is not a terminal)")
                if not click.confirm(f"delete the {counts[origin]} rows of origin {origin} from Milvus collection "
                                     f"{cfg.store.collection!r}?", default=False, err=True):
                    raise RagdError("not confirmed: nothing was deleted")
            deleted = forget_origin(client, cfg.store.collection, origin)
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json({"collection": cfg.store.collection, "origin": origin, "rows_deleted": deleted})
    else:
        click.echo(f"deleted {deleted} rows of origin {origin} from Milvus collection {cfg.store.collection!r}")


@main.command()
@click.argument("root", required=False)
@config_option
@json_option
def reindex(root: str | None, config_file: str | None, as_json: bool) -> None:
    """Ask the daemon for a reconcile scan of ROOT (default: every root)."""
    try:
        cfg = _load(config_file)
        target = _text_arg("ROOT", str(Path(root).expanduser().absolute())) if root else None
        queued = _daemon_call(cfg, lambda c: c.reindex(target))
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json({"queued": queued})
    else:
        click.echo(f"queued {queued} scan(s)")


if __name__ == "__main__":
    main()
