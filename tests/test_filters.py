"""Search filters and the path filter compile their patterns once, not once per file
(issue 25 #10: 64 globs over 400 files took 0.59 s instead of 0.02 s, linear in the files),
and still decide as before."""

from __future__ import annotations

from typing import Any

import pathspec
import pytest

from ragd import filters as filters_module
from ragd.filters import Filters, matches, normalise_filters
from ragd.paths import PathFilter

pytestmark = pytest.mark.models("fake")

GLOBS = (*(f"**/topic{i}/*.md" for i in range(63)), "notes/*.txt")


@pytest.fixture
def compilations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every compilation of a pattern list."""
    count: list[int] = []
    real = pathspec.GitIgnoreSpec.from_lines.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, lines: Any, *args: Any, **kwargs: Any) -> Any:
        count.append(1)
        return real(cls, lines, *args, **kwargs)

    monkeypatch.setattr(pathspec.GitIgnoreSpec, "from_lines", classmethod(counting))
    cached = getattr(filters_module, "glob_spec", None)
    if cached is not None:
        cached.cache_clear()
    return count


def test_globs_are_compiled_once_for_all_the_files_of_a_search(compilations: list[int]) -> None:
    f = normalise_filters(Filters(globs=GLOBS))
    files = [f"/root/topic{i % 80}/note{i}.md" for i in range(400)] + ["/root/notes/a.txt", "/root/notes/b.md"]
    kept = [p for p in files if matches(f, p, "/root", 0)]
    assert len(compilations) == 1
    assert "/root/notes/a.txt" in kept and "/root/notes/b.md" not in kept
    assert all(int(p.split("/")[2][5:]) < 63 for p in kept if p.endswith(".md"))
    assert len(kept) == sum(1 for i in range(400) if i % 80 < 63) + 1
    matches(normalise_filters(Filters(globs=GLOBS)), "/root/topic1/x.md", "/root", 0)  # the next search
    assert len(compilations) == 1


def test_the_path_filter_checks_each_folder_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file's folders were matched against every exclude pattern again for every file."""
    pf = PathFilter(exclude=("drafts/",))
    checked: list[str] = []
    spec = pf._exclude
    real = spec.match_file
    monkeypatch.setattr(spec, "match_file", lambda rel: checked.append(rel) or real(rel))
    files = [f"a/b/c/note{i}.md" for i in range(400)]
    assert all(pf.accepts(p) for p in files)
    assert sum(1 for c in checked if c.endswith("/")) == 3  # a/, a/b/, a/b/c/: once each
    assert not pf.accepts("a/drafts/x.md") and not pf.accepts(".git/config") and not pf.accepts("x/node_modules/y.js")
    assert not pf.accepts_dir("a/drafts") and pf.accepts_dir("a/b")
