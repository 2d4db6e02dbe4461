"""`hope push FOLDER REPO_ID`: upload a Hub-ready folder (from `hope convert` or `hope train`) to the Hugging Face
Hub through `huggingface_hub` (`HfApi.create_repo`, then `HfApi.upload_folder`). Log in first
(`hf auth login`) or pass --token. Exit status: 0 uploaded, 2 bad input, 1 the upload failed."""

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_folder(folder) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"{folder}: no such folder")
    if not (path / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json: not a saved model (write one with hope convert or hope train)")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise ValueError(f"{folder} has no weights (*.safetensors)")
    if any(p.name.startswith(".") and ".tmp-" in p.name for p in path.iterdir()):
        raise ValueError(f"{folder} holds an unfinished temporary folder")
    return path


def push(folder, repo_id: str, private: bool = False, token=None, revision=None, commit_message=None) -> str:
    """Create the repo if needed and upload the folder; returns the commit URL."""
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = check_folder(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"invalid REPO_ID {repo_id!r}: {err}") from None
    api = huggingface_hub.HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(path), repo_id=getattr(url, "repo_id", repo_id), repo_type="model",
                               revision=revision, commit_message=commit_message or f"Upload {path.name} with hope push")
    return str(getattr(commit, "commit_url", commit))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hope push", description=__doc__)
    p.add_argument("folder", help="the Hub-ready folder")
    p.add_argument("repo_id", help="user/name or org/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.add_argument("--revision", default=None, help="branch to push to (default: main)")
    p.add_argument("--commit-message", default=None)
    try:
        args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_BAD_INPUT
    try:
        url = push(args.folder, args.repo_id, args.private, args.token, args.revision, args.commit_message)
    except ValueError as err:
        print(f"hope push: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - network, auth, offline mode: one line, not a traceback
        print(f"hope push: upload failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"hope push: uploaded {args.folder} to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
