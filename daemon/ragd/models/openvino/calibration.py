"""The text static int8 is calibrated on: built in, the Python standard library's
documentation (English prose every installation has); or the user's own files
(``ragd models convert --calibration``). Samples are single paragraphs cut to
``CALIBRATION_MAX_TOKENS`` (longer ones agreed worse: docs/performance.md, "Accuracy gates")."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ragd.errors import ModelLoadError
from ragd.models.tokens import Tokens

CALIBRATION_SAMPLES = 300
CALIBRATION_MAX_TOKENS = 256

Sample = dict[str, np.ndarray]

_STDLIB_MODULES = (
    "os", "json", "re", "collections", "itertools", "functools", "pathlib", "subprocess", "threading",
    "asyncio", "sqlite3", "email", "http.client", "urllib.request", "logging", "argparse", "datetime",
    "decimal", "fractions", "statistics", "random", "string", "textwrap", "unittest", "typing",
    "dataclasses", "enum", "csv", "zipfile", "tarfile", "shutil", "tempfile", "glob", "socket", "ssl",
    "hashlib", "heapq", "bisect", "struct", "codecs", "io", "pickle", "copy", "pprint", "inspect", "ast",
    "tokenize", "traceback", "warnings", "contextlib", "abc", "numbers", "math", "operator", "calendar",
    "time", "locale", "gettext", "base64", "html", "queue", "sched", "selectors", "signal", "uuid",
    "ipaddress", "difflib", "shlex", "configparser", "tomllib", "gzip", "bz2", "lzma", "zlib",
)


def builtin_calibration_texts() -> list[str]:
    """Real prose that every Python installation has: the standard library's docstrings and
    the language reference topics, in a fixed order."""
    import warnings

    texts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases (typing.io, ...) warn when touched
        texts.extend(_docstrings())
    with contextlib.suppress(ImportError):
        from pydoc_data.topics import topics

        for key in sorted(topics):
            for para in topics[key].split("\n\n"):
                para = " ".join(para.split())
                if len(para) > 200 and not para.startswith(("def ", "class ", ">>>")):
                    texts.append(para)
    return list(dict.fromkeys(texts))


def _docstrings() -> list[str]:
    import importlib

    texts: list[str] = []
    for name in _STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # a module missing from a trimmed Python: use the others
            continue
        for obj in [module, *(getattr(module, a, None) for a in sorted(dir(module)) if not a.startswith("_"))]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200:
                texts.append(" ".join(doc.split()))
    return texts


def calibration_texts_from(paths: Sequence[Path]) -> list[str]:
    """Paragraphs (at least 100 characters) from text files or folders of them."""
    from ragd.errors import ExtractError
    from ragd.extract import extract

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(x for x in p.rglob("*") if x.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise ModelLoadError(f"calibration: no such file or folder: {p}")
    texts: list[str] = []
    for f in files:
        try:
            text = extract(f, f.read_bytes()).text
        except (OSError, ExtractError):  # unreadable or binary: not calibration text
            continue
        texts.extend(" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(p.strip()) >= 100)
    return list(dict.fromkeys(texts))


def pick_samples(texts: Sequence[str], n: int) -> list[str]:
    """``n`` texts spread evenly over ``texts`` (deterministic)."""
    if len(texts) <= n:
        return list(texts)
    step = len(texts) / n
    return [texts[int(i * step)] for i in range(n)]


def _texts(paths: Sequence[Path]) -> list[str]:
    return calibration_texts_from(paths) if paths else builtin_calibration_texts()


def _sample(ids: Sequence[int]) -> Sample:
    arr = np.asarray([ids], dtype=np.int64)
    return {"input_ids": arr, "attention_mask": np.ones_like(arr)}


def embedder_samples(tokenizer: Tokens, input_limit: int, paths: Sequence[Path] = ()) -> list[Sample]:
    """Embedder inputs: texts cut to ``CALIBRATION_MAX_TOKENS`` tokens, one per sample."""
    texts = _texts(paths)
    if not texts:
        raise ModelLoadError("calibration: no paragraphs of at least 100 characters found")
    limit = min(input_limit, CALIBRATION_MAX_TOKENS)
    return [_sample(ids) for ids in tokenizer.ids(pick_samples(texts, CALIBRATION_SAMPLES), max_length=limit)]


def reranker_samples(tokenizer: Tokens, max_length: int, paths: Sequence[Path] = ()) -> list[Sample]:
    """Reranker pairs built the way ``score`` builds its inputs: a question-like first sentence
    of one text with its own text (relevant) or another text (not relevant)."""
    texts = _texts(paths)
    if len(texts) < 2:
        raise ModelLoadError("calibration: fewer than two paragraphs of at least 100 characters found")
    picked = pick_samples(texts, CALIBRATION_SAMPLES)
    samples = []
    for n, text in enumerate(picked):
        query = " ".join(re.split(r"(?<=[.!?。！？])\s*", text, maxsplit=1)[0].split()[:24])
        passage = text if n % 2 == 0 else picked[(n + len(picked) // 2) % len(picked)]
        ids = tokenizer.pairs(query, [passage], min(max_length, CALIBRATION_MAX_TOKENS))[0]
        samples.append(_sample(ids))
    return samples
