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
from ragd.errors import RagdError

F = TypeVar("F", bound=Callable[..., Any])


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _fail(exc: RagdError) -> None:
    click.echo(f"ragd: error: {exc}", err=True)
    sys.exit(exc.exit_code)


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


# -- search -----------------------------------------------------------------------------
@main.command()
@click.argument("query")
@click.option("-k", "k", type=int, default=None, help="Number of results (default: search.k).")
@click.option(
    "--candidates", type=int, default=None, help="Candidates passed to the reranker (default: search.candidates)."
)
@click.option("--no-rerank", is_flag=True, help="Skip the reranker; rank by retrieval score.")
@click.option("--path", "path_prefix", default=None, help="Only files whose path starts with this prefix.")
@config_option
@json_option
def search(
    query: str, k: int | None, candidates: int | None, no_rerank: bool, path_prefix: str | None,
    config_file: str | None, as_json: bool,
) -> None:
    """Search the index for QUERY."""
    try:
        cfg = _load(config_file)
        from ragd.engine import Engine
        from ragd.search import SearchOptions, validate
        from ragd.search import search as run_search

        validate(query, cfg.search.k if k is None else k, cfg.search.candidates if candidates is None else candidates)
        rerank = cfg.search.rerank and not no_rerank
        with Engine(cfg, rerank=rerank) as engine:
            result = run_search(
                engine, query, SearchOptions(k=k, candidates=candidates, rerank=rerank, path_prefix=path_prefix)
            )
    except RagdError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json(result.to_json())
        return
    for reason in result.degraded:
        click.echo(f"ragd: degraded: {reason}", err=True)
    if not result.hits:
        click.echo("no results")
    for rank, hit in enumerate(result.hits, 1):
        heading = f"  [{' > '.join(hit.heading)}]" if hit.heading else ""
        scores = f"retrieval {hit.retrieval_score:.3f}"
        if hit.rerank_score is not None:
            scores += f", rerank {hit.rerank_score:.3f}"
        click.secho(f"{rank}. {hit.path}:{hit.start_line}-{hit.end_line}{heading}", bold=True)
        click.echo(f"   {scores}")
        click.echo(f"   {hit.snippet}")
    t = result.timings
    click.echo(
        f"({len(result.hits)} hits, {result.reranked} reranked, {t.get('total_ms', 0):.0f} ms: "
        + ", ".join(f"{k_[:-3]} {v:.0f}" for k_, v in t.items() if k_ != "total_ms") + ")",
        err=True,
    )


# -- models -----------------------------------------------------------------------------
@main.group()
def models() -> None:
    """Show or download the configured models."""


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


if __name__ == "__main__":
    main()
