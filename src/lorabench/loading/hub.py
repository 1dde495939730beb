"""Where hub repositories come from: a local snapshot folder, or a download from the Hugging Face hub when no
snapshot folder is configured."""

from __future__ import annotations

import os


class HubUnreachable(RuntimeError):
    """The hub could not be reached and no snapshot was configured."""


def download_repo(repo: str, repo_type: str, gguf_file: str | None = None) -> str:
    """Download a repo into the hub cache and return its local folder; fail fast with a fix when offline."""
    # Short timeouts: on a machine without internet the failure must come in seconds, not minutes.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from huggingface_hub import snapshot_download

    patterns = None
    if repo_type == "model":
        patterns = [gguf_file] if gguf_file else ["*.json", "*.txt", "*.model", "*.safetensors"]
    try:
        return snapshot_download(repo, repo_type=repo_type, allow_patterns=patterns)
    except Exception as exc:  # every hub failure ends the same way: say which repo and how to go offline
        kind = "datasets" if repo_type == "dataset" else "models"
        raise HubUnreachable(
            f"cannot download {repo_type} '{repo}' from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Offline? Put a snapshot at SNAPSHOTS/{kind}/{repo} (hf download {repo} "
            f"{'--repo-type dataset ' if repo_type == 'dataset' else ''}--local-dir SNAPSHOTS/{kind}/{repo} "
            "where the hub is reachable) and run with --config snapshots=SNAPSHOTS."
        ) from None
