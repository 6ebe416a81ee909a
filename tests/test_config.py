"""ragd.config: file lookup, defaults, validation messages, path handling, and the example file."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from ragd.config import (
    ChunkingConfig,
    Config,
    IndexingConfig,
    ModelsConfig,
    RootConfig,
    SearchConfig,
    default_data_dir,
    find_config_file,
    load_config,
    parse_config,
)
from ragd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
def _sections() -> dict[str, type]:
    """Every table of the file, derived from Config so a new section is covered at once."""
    out: dict[str, type] = {"": Config}
    for f in dataclasses.fields(Config):
        tp = typing.get_type_hints(Config)[f.name]
        if typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(tp):
            out[f.name] = tp  # type: ignore[assignment]
    return out


SECTIONS: dict[str, type] = _sections()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A clean environment with HOME in tmp_path; also applied to os.environ."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("RAGD_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return {"HOME": str(home)}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(fn: Any, *args: Any, **kwargs: Any) -> str:
    """Call ``fn``, expect a ConfigError, check it is one line, and return its message."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and len(message.splitlines()) == 1, message
    assert info.value.exit_code == 2
    return message


# --- lookup and defaults -------------------------------------------------------------------------


def test_defaults_when_no_file(env: dict[str, str]) -> None:
    cfg = load_config(environ=env)
    home = Path(env["HOME"])
    assert cfg == Config(data_dir=(home / ".local/share/ragd").resolve())
    assert cfg.source is None and cfg.roots == ()
    assert cfg.models == ModelsConfig() and cfg.search.k == 10 and cfg.chunking.max_tokens == 512
    assert find_config_file(environ=env) == (home / ".config/ragd/config.toml", False)


def test_default_data_dir_follows_xdg(tmp_path: Path, env: dict[str, str]) -> None:
    assert default_data_dir({**env, "XDG_DATA_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg" / "ragd"
    # A relative XDG_DATA_HOME is ignored, as the XDG spec says.
    assert default_data_dir({**env, "XDG_DATA_HOME": "rel"}) == Path(env["HOME"]) / ".local/share/ragd"
    # os.environ is the default environment.
    assert default_data_dir() == Path(env["HOME"]) / ".local/share/ragd"


def test_precedence_explicit_then_env_then_xdg(tmp_path: Path, env: dict[str, str]) -> None:
    xdg = write(tmp_path / "xdg/ragd/config.toml", "[search]\nk = 1\n")
    from_env = write(tmp_path / "env.toml", "[search]\nk = 2\n")
    explicit = write(tmp_path / "explicit.toml", "[search]\nk = 3\n")
    environ = {**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert find_config_file(environ=environ) == (xdg, False)
    assert load_config(environ=environ).search.k == 1
    environ["RAGD_CONFIG"] = str(from_env)
    assert find_config_file(environ=environ) == (from_env, True)
    assert load_config(environ=environ).search.k == 2
    assert find_config_file(explicit, environ=environ) == (explicit, True)
    cfg = load_config(explicit, environ=environ)
    assert cfg.search.k == 3 and cfg.source == explicit


def test_os_environ_is_the_default(tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "env.toml", "[search]\nk = 7\n")
    monkeypatch.setenv("RAGD_CONFIG", str(path))
    assert load_config().search.k == 7
    assert find_config_file() == (path, True)


def test_empty_ragd_config_means_unset(tmp_path: Path, env: dict[str, str]) -> None:
    environ = {**env, "RAGD_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert find_config_file(environ=environ) == (tmp_path / "xdg/ragd/config.toml", False)


def test_missing_required_file(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope.toml"
    assert config_error(load_config, missing, env) == f"{missing}: config file not found (from --config)"
    message = config_error(load_config, environ={**env, "RAGD_CONFIG": str(missing)})
    assert message == f"{missing}: config file not found (from $RAGD_CONFIG)"


def test_explicit_path_tilde_and_relative(tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(Path(env["HOME"]) / "my.toml", "[search]\nk = 4\n")
    assert find_config_file("~/my.toml", env) == (path, True)
    monkeypatch.chdir(path.parent)
    assert load_config("my.toml", env).source == path


# --- file-level errors ---------------------------------------------------------------------------


def test_invalid_toml(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "bad.toml", "[search]\nk = = 3\n")
    message = config_error(load_config, path, env)
    assert message.startswith(f"{path}: invalid TOML: ") and "line 2" in message


def test_not_utf8(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[models]\nembedder = "caf\xe9"\n')
    assert config_error(load_config, path, env).startswith(f"{path}: invalid TOML: not UTF-8 text")


def test_unreadable_file(tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    assert config_error(load_config, folder, env) == f"{folder}: cannot read file: Is a directory"
    path = write(tmp_path / "secret.toml", "")

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # chmod 0 does not stop root, so fake the refusal
    assert config_error(load_config, path, env) == f"{path}: cannot read file: Permission denied"


# --- key-level errors ----------------------------------------------------------------------------


def load_text(tmp_path: Path, env: dict[str, str], text: str) -> Config:
    return load_config(write(tmp_path / "cfg" / "config.toml", text), env)


def error_for(tmp_path: Path, env: dict[str, str], text: str) -> str:
    """The message for ``text`` as a config file, with the file name checked and stripped."""
    path = tmp_path / "cfg" / "config.toml"
    message = config_error(load_text, tmp_path, env, text)
    assert message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[chunking]\nmax_tokens = "big"', 'chunking.max_tokens: expected an integer from 16 to 8192, got "big"'),
        ("[chunking]\nmax_tokens = 8193", "chunking.max_tokens: expected an integer from 16 to 8192, got 8193"),
        ("[chunking]\nmax_tokens = 15", "chunking.max_tokens: expected an integer from 16 to 8192, got 15"),
        ("[chunking]\nmax_tokens = 512.0", "chunking.max_tokens: expected an integer from 16 to 8192, got 512.0"),
        ("[models]\nbatch_size = true", "models.batch_size: expected an integer from 1 to 1024, got true"),
        ("[indexing]\nmax_file_bytes = 0", "indexing.max_file_bytes: expected an integer >= 1, got 0"),
        ("[indexing]\nbatch_chunks = 100001",
         "indexing.batch_chunks: expected an integer from 1 to 100000, got 100001"),
        ("[search]\nk = 0", "search.k: expected an integer from 1 to 1000, got 0"),
        ("[search]\ncandidates = 1001", "search.candidates: expected an integer from 1 to 1000, got 1001"),
        ("[search]\nretrieve = 10001", "search.retrieve: expected an integer from 1 to 10000, got 10001"),
        ("[search]\nsnippet_chars = 19", "search.snippet_chars: expected an integer from 20 to 10000, got 19"),
        ("[search]\ndense_weight = -0.5", "search.dense_weight: expected a number >= 0, got -0.5"),
        ("[search]\nsparse_weight = true", "search.sparse_weight: expected a number >= 0, got true"),
        ("[search]\nsparse_weight = nan", "search.sparse_weight: expected a number >= 0, got nan"),
        ('[search]\nrerank = "yes"', 'search.rerank: expected true or false, got "yes"'),
        ("[search]\nrerank = 1", "search.rerank: expected true or false, got 1"),
        ('[models]\ndevice = "gpu"', 'models.device: expected one of "auto", "cpu", "cuda", got "gpu"'),
        ('[models]\nprecision = "fp8"',
         'models.precision: expected one of "auto", "fp32", "fp16", "bf16", "int8", "int8-dynamic", got "fp8"'),
        ('[models]\nfallback = "bge"', 'models.fallback: expected one of "minilm", "none", got "bge"'),
        ('[store]\nmirrors = "disk"', 'store.mirrors: expected one of "auto", "memory", "mapped", got "disk"'),
        ("[models]\nembedder = 3", "models.embedder: expected a non-empty string, got 3"),
        ('[models]\nreranker = ""', 'models.reranker: expected a non-empty string, got ""'),
        ("[models]\nmulti_vector = 0", "models.multi_vector: expected true or false, got 0"),
        ("data_dir = 5", "data_dir: expected a path (a non-empty string), got 5"),
        ("[chunking]\nmax_tokens = 100\noverlap_tokens = 51",
         "chunking.overlap_tokens: expected an integer from 0 to 50 (half of chunking.max_tokens = 100), got 51"),
        ("[chunking]\nmax_tokens = 100",
         "chunking.overlap_tokens: expected an integer from 0 to 50 (half of chunking.max_tokens = 100), "
         "got 64 (the default)"),
        ("[chunking]\noverlap_tokens = -1", "chunking.overlap_tokens: expected an integer >= 0, got -1"),
        ('models = "x"', 'models: expected a table, got "x"'),
        ("[search.k]\nx = 1", "search.k: expected an integer from 1 to 1000, got a table"),
        ("[models]\ncolour = 1",
         "models.colour: unknown key (known keys in [models]: embedder, reranker, fallback, device, precision, "
         "reranker_precision, batch_size, multi_vector, backend, cache_dir)"),
        ("colour = 1",
         "colour: unknown key (known top-level keys: data_dir, roots, models, chunking, search, indexing, extract, "
         "server, watch, mcp, store)"),
        ("source = 'x'",
         "source: unknown key (known top-level keys: data_dir, roots, models, chunking, search, indexing, extract, "
         "server, watch, mcp, store)"),
        ("[retrieval]\nk = 1",
         "retrieval: unknown key (known top-level keys: data_dir, roots, models, chunking, search, indexing, extract, "
         "server, watch, mcp, store)"),
        ("[indexing]\nmax_bytes = 1",
         "indexing.max_bytes: unknown key (known keys in [indexing]: max_file_bytes, batch_chunks)"),
        ("[roots]\npath = '.'", "roots: expected an array of tables ([[roots]]), got a table"),
        ('roots = "."', 'roots: expected an array of tables ([[roots]]), got "."'),
        ('roots = ["."]', 'roots[0]: expected a table, got "."'),
        ("[[roots]]\ninclude = []", "roots[0].path: required key is missing from [[roots]]"),
        ("[[roots]]\npath = '.'\n[[roots]]\npath = '.'\ncolour = 1",
         "roots[1].colour: unknown key (known keys in [[roots]]: path, include, exclude)"),
        ("[[roots]]\npath = '.'\ninclude = '*.md'",
         'roots[0].include: expected an array of non-empty strings, got "*.md"'),
        ("[[roots]]\npath = '.'\nexclude = ['a', 3]", "roots[0].exclude[1]: expected a non-empty string, got 3"),
        ("[[roots]]\npath = 3", "roots[0].path: expected a folder path (a non-empty string), got 3"),
    ],
)
def test_key_errors(tmp_path: Path, env: dict[str, str], text: str, expected: str) -> None:
    assert error_for(tmp_path, env, text) == expected


def test_missing_root_folder(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "a").mkdir()
    text = "[[roots]]\npath = '/no/such/ragd-root'\n"
    assert error_for(tmp_path, env, text) == "roots[0].path: folder does not exist: /no/such/ragd-root"
    text = f"[[roots]]\npath = '{tmp_path / 'a'}'\n[[roots]]\npath = '../missing'\n"
    assert error_for(tmp_path, env, text) == f"roots[1].path: folder does not exist: {tmp_path / 'missing'}"


def test_root_must_be_a_folder(tmp_path: Path, env: dict[str, str]) -> None:
    write(tmp_path / "file.txt", "x")
    message = error_for(tmp_path, env, "[[roots]]\npath = '../file.txt'")
    assert message == f"roots[0].path: not a folder: {tmp_path / 'file.txt'}"


def test_duplicate_roots(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "docs").mkdir()
    text = f"[[roots]]\npath = '{tmp_path / 'docs'}'\n[[roots]]\npath = '../docs/'\n"
    assert error_for(tmp_path, env, text) == f"roots[1].path: duplicate of roots[0]: {tmp_path / 'docs'}"


def test_errors_without_a_file_say_defaults() -> None:
    message = config_error(parse_config, {"search": {"k": "ten"}})
    assert message == '<defaults>: search.k: expected an integer from 1 to 1000, got "ten"'


def test_messages_stay_on_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    message = error_for(tmp_path, env, '[models]\ndevice = "a\\nb\\u2028c"')
    assert message == r'models.device: expected one of "auto", "cpu", "cuda", got "a\nb\u2028c"'


# --- values and paths ----------------------------------------------------------------------------


def test_values_are_read(tmp_path: Path, env: dict[str, str]) -> None:
    cfg = load_text(tmp_path, env, """
data_dir = "index"
[models]
embedder = "minilm"
reranker = "none"
fallback = "none"
device = "cpu"
precision = "fp16"
batch_size = 1024
multi_vector = true
[chunking]
max_tokens = 16
overlap_tokens = 8
[search]
k = 1000
rerank = false
dense_weight = 2
sparse_weight = 0
[indexing]
max_file_bytes = 1
batch_chunks = 100000
""")
    assert cfg.data_dir == tmp_path / "cfg" / "index"
    assert cfg.models == ModelsConfig("minilm", "none", "none", "cpu", "fp16", batch_size=1024, multi_vector=True)
    assert cfg.chunking == ChunkingConfig(16, 8)
    assert cfg.search == SearchConfig(k=1000, rerank=False, dense_weight=2.0, sparse_weight=0.0)
    assert isinstance(cfg.search.dense_weight, float)
    assert cfg.indexing == IndexingConfig(1, 100000)


def test_relative_roots_resolve_against_the_config_folder(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cfg" / "notes").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_text(tmp_path, env, "[[roots]]\npath = 'notes'\ninclude = ['**/*.md']\nexclude = ['drafts/']\n"
                                   "[[roots]]\npath = '../elsewhere/./'\n")
    assert cfg.roots == (
        RootConfig(tmp_path / "cfg" / "notes", include=("**/*.md",), exclude=("drafts/",)),
        RootConfig(tmp_path / "elsewhere"),
    )
    assert all(r.path.is_absolute() for r in cfg.roots)


def test_tilde_expansion(tmp_path: Path, env: dict[str, str]) -> None:
    (Path(env["HOME"]) / "notes").mkdir()
    cfg = load_text(tmp_path, env, "data_dir = '~/ragd-data'\n[[roots]]\npath = '~/notes'\n")
    assert cfg.data_dir == Path(env["HOME"]) / "ragd-data"
    assert cfg.roots == (RootConfig(Path(env["HOME"]) / "notes"),)


def test_symlinked_root_is_resolved(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    cfg = load_text(tmp_path, env, f"[[roots]]\npath = '{tmp_path / 'link'}'\n")
    assert cfg.roots[0].path == tmp_path / "real"
    message = error_for(tmp_path, env, f"[[roots]]\npath = '{tmp_path / 'link'}'\n[[roots]]\npath = '../real'\n")
    assert message == f"roots[1].path: duplicate of roots[0]: {tmp_path / 'real'}"


def test_frozen(env: dict[str, str]) -> None:
    cfg = load_config(environ=env)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data_dir = Path("/x")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.search.k = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RootConfig(Path("/x")).include = ("*",)  # type: ignore[misc]
    hash(cfg)


# --- the example file ----------------------------------------------------------------------------


def test_example_parses_to_the_defaults(env: dict[str, str]) -> None:
    cfg = parse_config(tomllib.loads(EXAMPLE.read_text(encoding="utf-8")), source=EXAMPLE, environ=env)
    assert cfg == Config(data_dir=default_data_dir(env), source=EXAMPLE)
    assert load_config(EXAMPLE, env) == cfg


def test_example_commented_keys_are_valid(tmp_path: Path, env: dict[str, str]) -> None:
    """Uncommenting data_dir and the [[roots]] example gives the documented default and a root."""
    (Path(env["HOME"]) / "notes").mkdir()
    text = re.sub(r"^# (\[\[roots\]\]|[a-z_]+ = .*)$", r"\1", EXAMPLE.read_text(encoding="utf-8"), flags=re.M)
    cfg = parse_config(tomllib.loads(text), source=EXAMPLE, environ=env)
    assert cfg == Config(data_dir=default_data_dir(env), roots=(RootConfig(Path(env["HOME"]) / "notes"),),
                         source=EXAMPLE)


def test_example_documents_every_field_in_order() -> None:
    """Every dataclass field appears in config.example.toml, in its section, in order, with a comment."""
    documented: dict[str, list[str]] = {"": []}
    section = ""
    previous = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        header = re.fullmatch(r"#? ?\[\[?([a-z_]+)\]\]?", line)
        key = re.fullmatch(r"#? ?([a-z_]+) = .+", line)
        if header:
            section = header[1]
            assert section not in documented, f"[{section}] twice"
            documented[section] = []
        elif key:
            documented[section].append(key[1])
            assert previous.startswith("# ") and not re.fullmatch(r"# ?[a-z_]+ = .+", previous), (
                f"{key[1]} has no comment line above it")
        previous = line
    config_keys = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
    expected = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
    expected[""] = [name for name in config_keys if name not in SECTIONS]
    assert documented == expected
    assert list(documented) == ["", *[name for name in config_keys if name in SECTIONS]]


def test_example_shows_the_default_values(env: dict[str, str]) -> None:
    """Each uncommented value in the example equals the dataclass default."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for name, cls in SECTIONS.items():
        if name in ("", "roots"):
            continue
        defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cls()).items()}
        assert data[name] == defaults, name  # TOML arrays are lists; tuple defaults compare as lists
