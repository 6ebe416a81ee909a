"""Documents through the indexer and the daemon: a folder of every format indexes fully, each
file is found by a sentence of its own (PDF hits on the right page), failures are recorded with
their reason and retried only when the file changes, an index from before pages is upgraded in
place without re-embedding, and searches answer while an extraction hangs."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docfiles
import extract_fakes  # noqa: F401  (registers the misbehaving extractors)
import pytest
from test_daemon import daemon_factory, top_path, wait_for  # noqa: F401  (daemon_factory is a fixture)

from conftest import write_tree
from ragd.engine import Engine
from ragd.indexer import index_paths
from ragd.search import SearchOptions, search

pytestmark = pytest.mark.models("fake")

LEXICAL = SearchOptions(k=3, rerank=False, mode="lexical")

# One sentence per file, with words no other file has, and where it must be found.
SENTENCES = {
    "paper.pdf": "Quokkas photograph remarkably well near Rottnest jetties.",
    "report.docx": "Narwhal tusks sense salinity gradients underwater.",
    "deck.pptx": "Axolotls regenerate entire limbs within weeks.",
    "budget.xlsx": "Pangolin conservation grant renewal",
    "letter.odt": "Capybaras tolerate unusual companions peacefully.",
    "inventory.ods": "Wombat cubes puzzle visiting zoologists",
    "memo.rtf": "Tardigrades survive vacuum exposure repeatedly.",
    "article.html": "Okapis hide deep within Congolese rainforests.",
    "book.epub": "Platypus venom spurs appear seasonally.",
    "mail.eml": "Kakapo breeding depends on rimu fruiting.",
    "archive.mbox": "Aye-aye fingers tap hollow branches rhythmically.",
    "analysis.ipynb": "Dugongs graze seagrass meadows overnight.",
}


def document_folder(root: Path) -> None:
    s = SENTENCES
    filler = [f"Filler line {i} about nothing in particular." for i in range(50)]
    write_tree(root, {
        "paper.pdf": docfiles.pdf([filler, [*filler[:20], s["paper.pdf"]], filler]),
        "report.docx": docfiles.docx("Report", [("Findings", 1, [s["report.docx"]])]),
        "deck.pptx": docfiles.pptx([("Intro", ["hello"], ""), ("Biology", [s["deck.pptx"]], "notes")]),
        "budget.xlsx": docfiles.xlsx([("Grants", [["name", "amount"], [s["budget.xlsx"], 1200]])]),
        "letter.odt": docfiles.odt([("Letter", 1, [s["letter.odt"]])]),
        "inventory.ods": docfiles.ods([("Stock", [[s["inventory.ods"], "3"]])]),
        "memo.rtf": docfiles.rtf([s["memo.rtf"]]),
        "article.html": docfiles.html("Article", "Forests", [s["article.html"]]),
        "book.epub": docfiles.epub("Book", [("One", ["Intro text."]), ("Two", [s["book.epub"]])]),
        "mail.eml": docfiles.eml("Birds", "ann@example.org", "See attached.",
                                 [("notes.docx", docfiles.docx("N", [("H", 1, [s["mail.eml"]])]))]),
        "archive.mbox": docfiles.mbox([docfiles.eml("Primates", "bob@example.org", s["archive.mbox"])]),
        "analysis.ipynb": docfiles.ipynb([("markdown", f"# Notes\n\n{s['analysis.ipynb']}"), ("code", "x = 1")]),
        "plain.md": "# Plain\n\nOrdinary markdown still works.\n",
    })


@pytest.mark.models("tiny")  # page spans depend on where the real tokenizer cuts the chunks
def test_every_format_indexes_and_is_found(tmp_path: Path, engine_factory: Callable[..., Engine]) -> None:
    root = tmp_path / "docs"
    document_folder(root)
    engine = engine_factory(chunking={"max_tokens": 64, "overlap_tokens": 0})
    report = index_paths(engine, [root])
    assert report.failures == []
    assert report.files_indexed == len(SENTENCES) + 1
    for name, sentence in SENTENCES.items():
        hits = search(engine, sentence, LEXICAL).hits
        assert hits and Path(hits[0].path).name == name, (name, [h.path for h in hits])
        if name == "paper.pdf":
            assert (hits[0].page, hits[0].end_page) == (2, 2)  # small chunks: this one lies within page 2
        elif name == "deck.pptx":
            assert hits[0].page == 2 and hits[0].heading == ["Biology"]
        else:
            assert hits[0].page == 0


def test_hit_lines_match_the_extracted_text(tmp_path: Path, engine_factory: Callable[..., Engine]) -> None:
    """What ReadFile serves (``extract(path, data).text``) has the lines the hits point to."""
    from ragd.extract import extract

    root = tmp_path / "docs"
    document_folder(root)
    engine = engine_factory()
    index_paths(engine, [root])
    for name in ("paper.pdf", "deck.pptx", "report.docx", "article.html"):
        hit = search(engine, SENTENCES[name], LEXICAL).hits[0]
        path = Path(hit.path)
        lines = extract(path, path.read_bytes()).text.split("\n")
        assert SENTENCES[name] in "\n".join(lines[hit.start_line - 1 : hit.end_line])


def noise_pages(n: int) -> list[list[str]]:
    """Pages of random hex: a PDF that compresses little, so it is large."""
    rng = random.Random(7)
    return [[f"{rng.getrandbits(320):080x}" for _ in range(50)] for _ in range(n)]


FAILURES: dict[str, tuple[bytes, str]] = {
    "truncated.pdf": (docfiles.pdf([["Some text here."] * 40] * 4)[:3000], "truncated PDF"),
    "fake.pdf": (b"just a text file with a .pdf name\n", "not a PDF, although named .pdf: the content is text"),
    "bomb.docx": (docfiles.zip_bomb_docx(24 << 20), "zip bomb?"),
    "locked.pdf": (docfiles.encrypted_pdf([["secret"]]), "encrypted PDF"),
    "scan.pdf": (docfiles.scanned_pdf(), "no text layer"),
    "stuck.hang": (b"never ends", "extraction timed out after 1.5 s"),
    "bad.crash": (b"x", "extractor crashed (SIGSEGV"),
}


def test_failures_are_recorded_and_retried_only_when_changed(
    tmp_path: Path, engine_factory: Callable[..., Engine]
) -> None:
    root = tmp_path / "docs"
    write_tree(root, {name: data for name, (data, _) in FAILURES.items()})
    write_tree(root, {"good.md": "# Good\n\nThis file is fine.\n", "huge.pdf": docfiles.pdf(noise_pages(100))})
    assert (root / "huge.pdf").stat().st_size > 150_000
    engine = engine_factory(extract={"timeout_s": 1.5}, indexing={"max_file_bytes": 150_000})
    started = time.monotonic()
    report = index_paths(engine, [root])
    assert time.monotonic() - started < 30
    assert report.files_indexed == 1
    got = {Path(p).name: (status, reason) for p, status, reason in report.failures}
    for name, (_, reason) in FAILURES.items():
        assert got[name][0] == "failed" and reason in got[name][1], (name, got[name])
    assert got["huge.pdf"][0] == "skipped" and "file too large" in got["huge.pdf"][1]
    assert report.files_failed == len(FAILURES)

    again = index_paths(engine, [root])  # nothing changed: nothing is read again (the hang costs nothing)
    assert again.files_unchanged == again.files_seen and again.seconds < 5

    fixed = root / "fake.pdf"
    fixed.write_bytes(docfiles.pdf([["Now a real PDF about lemurs."]]))
    third = index_paths(engine, [root])
    assert third.files_indexed == 1 and third.files_unchanged == third.files_seen - 1
    assert Path(search(engine, "lemurs", LEXICAL).hits[0].path).name == "fake.pdf"


def test_stopping_cuts_a_hanging_extraction_and_records_nothing(
    tmp_path: Path, engine_factory: Callable[..., Engine]
) -> None:
    """A daemon told to stop does not wait out extract.timeout_s; the file is read next time."""
    from ragd.indexer import Indexer

    root = tmp_path / "docs"
    write_tree(root, {"a.md": "# A\n\nfine\n", "stuck.hang": "never"})
    engine = engine_factory(extract={"timeout_s": 60.0})
    stop_at = time.monotonic() + 2.0
    started = time.monotonic()
    report = Indexer(engine, should_stop=lambda: time.monotonic() > stop_at).run([root])
    assert time.monotonic() - started < 10
    assert engine.catalog.file_row(str(root / "stuck.hang")) is None
    assert report.failures == []


def test_file_changed_during_extraction_is_read_again(tmp_path: Path, engine_factory: Callable[..., Engine]) -> None:
    root = tmp_path / "docs"
    write_tree(root, {"doc.rewrite": "the first version\n"})
    engine = engine_factory()
    report = index_paths(engine, [root])
    assert report.files_indexed == 1
    texts = [r[0] for r in engine.catalog.db.execute("SELECT text FROM chunks")]
    assert texts == ["the second version of the rewritten file"]
    st = (root / "doc.rewrite").stat()
    row = engine.catalog.file_row(str(root / "doc.rewrite"))
    assert row is not None and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_index_from_before_pages_upgrades_without_reembedding(
    tmp_path: Path, engine_factory: Callable[..., Engine]
) -> None:
    root = tmp_path / "docs"
    write_tree(root, {
        "a.md": "# A\n\nGlaciers carve valleys slowly.\n",
        "b.txt": "Sourdough needs a starter.\n",
        "page.html": "<html><body><nav>menu</nav><p>Raw markup was indexed before.</p></body></html>",
        "paper.pdf": docfiles.pdf([["Old releases skipped this PDF entirely."]]),
    })
    engine = engine_factory()
    index_paths(engine, [root])
    engine.close()
    # Make it what the previous release left: schema 1, no page columns, the PDF skipped as binary.
    from ragd.store.catalog import Catalog

    old = Catalog(tmp_path / "data" / "catalog.db")
    db = old.db
    pdf_path = str(root / "paper.pdf")
    db.execute("DELETE FROM chunks WHERE file_id = (SELECT id FROM files WHERE path = ?)", [pdf_path])
    db.execute("UPDATE files SET status = 'skipped', error = 'binary file type (.pdf)', kind = NULL "
               "WHERE path = ?", [pdf_path])
    db.execute("ALTER TABLE chunks DROP COLUMN page")
    db.execute("ALTER TABLE chunks DROP COLUMN end_page")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.conn.commit()
    embeddings_before = db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    old.close()

    engine = engine_factory()
    catalog = engine.catalog
    assert catalog.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    columns = {r[1] for r in catalog.db.execute("PRAGMA table_info(chunks)")}
    assert {"page", "end_page"} <= columns
    report = index_paths(engine, [root])
    assert report.chunks_embedded == 0  # the PDF's and the HTML's text was embedded before: nothing new
    assert report.files_indexed == 2  # the PDF (skipped before) and the HTML (raw markup before)
    assert catalog.db.execute("SELECT count(*) FROM embeddings").fetchone()[0] <= embeddings_before
    hit = search(engine, "skipped this PDF entirely", LEXICAL).hits[0]
    assert Path(hit.path).name == "paper.pdf" and hit.page == 1
    assert report.files_unchanged == 2  # a.md and b.txt: not read again


def _pdf_hit(client: Any, notes: Path) -> Any:
    """Index a PDF through the daemon and return the hit for its sentence on page 2."""
    filler = [f"Filler line {i} about nothing in particular." for i in range(50)]
    (notes / "paper.pdf").write_bytes(docfiles.pdf([filler, [*filler[:20], SENTENCES["paper.pdf"]], filler]))

    def hit() -> Any:
        try:
            hits = client.search(SENTENCES["paper.pdf"], k=1, rerank=False, mode="lexical").hits
        except Exception:  # nothing indexed yet
            return None
        return hits[0] if hits and hits[0].path.endswith("paper.pdf") else None

    return wait_for(hit, what="the PDF to be indexed")


def test_daemon_serves_document_lines(daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    """Through gRPC: a PDF hit's lines are the lines ReadFile returns, and GetChunk's text."""
    _daemon, client, notes = daemon_factory()
    found = _pdf_hit(client, notes)
    lines = client.read_file(found.path, found.start_line, found.end_line - found.start_line + 1).lines
    assert any(SENTENCES["paper.pdf"] in line for line in lines)
    assert SENTENCES["paper.pdf"] in client.get_chunk(found.chunk_id).text


def test_daemon_hits_carry_pages(daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    _daemon, client, notes = daemon_factory()
    found = _pdf_hit(client, notes)
    assert found.page is not None and found.page <= 2 <= (found.end_page or 0)
    chunk = client.get_chunk(found.chunk_id)
    assert (chunk.page, chunk.end_page) == (found.page, found.end_page)


def test_searches_answer_while_an_extraction_hangs(daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    _daemon, client, notes = daemon_factory(extract={"timeout_s": 6.0})
    wait_for(lambda: top_path(client, "glaciers Iceland"), what="the first index")
    (notes / "stuck.hang").write_bytes(b"this extraction never returns")
    written = time.monotonic()
    time.sleep(0.5)  # the watcher's debounce, then the writer starts the extraction
    latencies = []
    while time.monotonic() - written < 4.0:
        t = time.monotonic()
        hits = client.search("sourdough starter flour", k=1, rerank=False).hits
        latencies.append(time.monotonic() - t)
        assert hits and hits[0].path.endswith("beta.txt")
    assert len(latencies) >= 3 and max(latencies) < 2.0, latencies  # none waited for the 6 s hang

    def failed() -> Any:
        return [f for r in client.status().roots for f in r.failures if f.path.endswith("stuck.hang")]

    failure = wait_for(failed, timeout=20, what="the hang to be recorded")[0]
    assert failure.status == "failed" and "timed out after 6 s" in failure.reason
    assert time.monotonic() - written >= 5.5
    (notes / "gamma.md").write_text("Kiwis forage at night in New Zealand forests.\n")
    wait_for(lambda: (h := client.search("kiwis forage night", k=1, rerank=False).hits)
             and h[0].path.endswith("gamma.md"), what="indexing to go on")


@pytest.fixture(autouse=True)
def _fresh_pool() -> Any:
    """Each test starts and ends with no idle extraction workers of another test's limits."""
    from ragd.extract.isolate import POOL

    POOL.close()
    yield
    POOL.close()
