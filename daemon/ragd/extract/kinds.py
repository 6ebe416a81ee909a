"""File kinds by name: markdown, rst, code or text, and the suffixes that are never text."""

from __future__ import annotations

from pathlib import Path

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx", ".mdown", ".mkd", ".mkdn", ".mdwn", ".rmd", ".qmd"})
RST_SUFFIXES = frozenset({".rst", ".rest"})

CODE_SUFFIXES = frozenset(
    f".{s}"
    for s in (
        # Python, JavaScript and friends.
        "py pyi pyx pxd ipynb js mjs cjs jsx ts mts cts tsx vue svelte astro coffee elm "
        # Systems and compiled languages.
        "c h cc cpp cxx c++ hh hpp hxx h++ inl ipp m mm cu cuh go rs zig nim d v sv svh vhd vhdl "
        "java kt kts scala sc groovy gradle clj cljs cljc edn cs fs fsi fsx vb swift dart "
        "hs lhs ml mli ocaml erl hrl ex exs elixir lisp el scm rkt jl r f f90 f95 f03 for pas ada adb ads "
        # Scripting and shells.
        "rb rake gemspec php phtml pl pm t lua tcl sh bash zsh fish ksh csh ps1 psm1 psd1 bat cmd awk sed "
        # Data, configuration and build files.
        "toml yaml yml json jsonc json5 jsonl ndjson xml xsd xsl xslt plist ini cfg conf cnf properties env "
        "proto thrift avsc graphql gql sql prisma tf tfvars hcl nix bzl bazel cmake mk mak make ninja "
        "dockerfile containerfile lock "
        # Web.
        "html htm xhtml svg css scss sass less styl hbs handlebars mustache jinja j2 njk ejs erb twig liquid "
        # Other markup and notebooks treated as code.
        "tex sty cls bib latex sol asm s vim patch diff"
    ).split()
)

#: File names (lower case) that are code without a telling suffix.
CODE_NAMES = frozenset({
    "makefile", "gnumakefile", "dockerfile", "containerfile", "jenkinsfile", "vagrantfile", "gemfile",
    "rakefile", "podfile", "brewfile", "procfile", "justfile", "cmakelists.txt", "build", "workspace",
    ".bashrc", ".bash_profile", ".zshrc", ".profile", ".vimrc", ".gitconfig", ".gitignore",
    ".gitattributes", ".dockerignore", ".editorconfig", ".env",
})

BINARY_SUFFIXES = frozenset(
    f".{s}"
    for s in (
        # Images.
        "png jpg jpeg jpe gif bmp tif tiff webp ico icns heic heif avif psd xcf raw cr2 nef arw dng svgz "
        # Audio and video.
        "mp3 wav flac ogg oga opus m4a aac wma aiff aif mid midi mp4 m4v mov avi mkv webm wmv flv mpg mpeg 3gp "
        # Archives and compressed data.
        "zip tar gz tgz bz2 tbz2 xz txz zst lz lz4 lzma 7z rar cab arj z jar war ear apk aab ipa deb rpm "
        "dmg iso img msi msix pkg snap whl egg "
        # Documents: the formats with an extractor (registry.py) are claimed before the text path.
        "pdf doc docx xls xlsx xlsm ppt pptx odt ods odp odg rtf epub mobi azw azw3 djvu pages numbers "
        # Executables, objects and bytecode.
        "exe dll so dylib a lib o obj ko elf bin com class pyc pyo pyd wasm dex beam elc "
        # Fonts.
        "ttf otf woff woff2 eot pfb "
        # Databases, models and other binary data.
        "sqlite sqlite3 db db3 mdb accdb dbf parquet feather arrow orc avro npy npz pkl pickle h5 hdf5 "
        "pt pth ckpt safetensors onnx tflite pb gguf ggml faiss idx pack lmdb mat sav "
        "blend fbx glb 3ds stl dwg swf fla sketch fig"
    ).split()
)


def detect_kind(path: Path) -> str:
    """"markdown", "rst", "code" or "text", by the file's suffix or name."""
    name = path.name.lower()
    suffix = path.suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if suffix in RST_SUFFIXES:
        return "rst"
    if suffix in CODE_SUFFIXES or name in CODE_NAMES:
        return "code"
    return "text"
