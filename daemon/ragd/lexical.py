"""Text -> full-text terms, the same for documents and queries, for BM25 in SQLite FTS5.

FTS5's own tokenisers either treat a run of Chinese characters as one token (``unicode61``)
or know no language at all (``trigram``), so the language work happens here and FTS5 only
splits the result on spaces:

- NFKC normalisation (full-width letters and digits become ASCII) and lower case;
- words are runs of letters and digits (``_`` and punctuation separate them, so
  ``parse_config`` and ``parse-config`` both give ``pars`` + ``config``);
- English: NLTK's stopwords are dropped, the rest stemmed with Snowball English
  (PyStemmer); accents on Latin letters are folded (``café`` = ``cafe``); other
  alphabetic scripts pass through unstemmed;
- Chinese, Japanese (kana and kanji) and Korean (Hangul): overlapping character bigrams;
  a run of one character is kept as a unigram.

The measurements behind each choice: docs/quality.md, "Choices, and the numbers that made them".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import Stemmer

TOKENIZER_VERSION = "2"
"""Stored in the catalog; a different value makes the catalog rebuild its full-text rows."""

STOPWORDS = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself they them their theirs themselves what which who whom this that these those am is are "
    "was were be been being have has had having do does did doing a an the and but if or because as until while "
    "of at by for with about against between into through during before after above below to from up down in "
    "out on off over under again further then once here there when where why how all any both each few more "
    "most other some such no nor not only own same so than too very s t can will just don should now d ll m o "
    "re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren won "
    "wouldn".split()
)
"""NLTK's English stop list (its forms with an apostrophe split as the tokeniser splits them).
On SciFact chunks it beats Lucene's 33-word list (nDCG@10 0.681 vs 0.677) and no list (0.674)."""

_CJK = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0002fa1f"  # CJK extensions B-F, compatibility supplement
)
_RUN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")
_ASCII_WORD = re.compile(r"[a-z0-9]+")

_stemmer = Stemmer.Stemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    """Snowball English for ASCII words; Latin letters with accents are folded first
    (``café`` -> ``cafe``); other scripts pass through."""
    if not word.isascii():
        folded = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
        if not folded.isascii():
            return word
        word = folded
    return str(_stemmer.stemWord(word)) if _ASCII_WORD.fullmatch(word) else word


def terms(text: str) -> list[str]:
    """The terms of ``text`` in order (repeats kept: BM25 counts them)."""
    out: list[str] = []
    for match in _RUN.finditer(unicodedata.normalize("NFKC", text).lower()):
        run = match.group()
        if _IS_CJK.match(run):
            if len(run) == 1:
                out.append(run)
            else:
                out.extend(run[i : i + 2] for i in range(len(run) - 1))
        elif run not in STOPWORDS:
            out.append(_stem(run))
    return out


def document_terms(text: str) -> str:
    """What is stored in the FTS5 table for a chunk: its terms joined by spaces."""
    return " ".join(terms(text))


def query_expression(text: str) -> str | None:
    """An FTS5 MATCH expression: any of the query's terms (OR), each quoted; None when the
    query has no searchable term (only stopwords or punctuation)."""
    return terms_expression(terms(text))


def terms_expression(chosen: Iterable[str]) -> str | None:
    """An FTS5 MATCH expression for any of ``chosen`` terms (as ``terms`` gives them)."""
    unique = dict.fromkeys(chosen)
    if not unique:
        return None
    return " OR ".join(f'"{t}"' for t in unique)
