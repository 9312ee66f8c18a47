"""Reading the files a user points at: context files and images."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from domain.errors import FileInputError
from domain.messages import ImagePart


@dataclass(frozen=True)
class ContextFile:
    path: str
    name: str
    location: str
    size: int
    modified: float
    text: str


def context_dir(workspace: Path) -> Path:
    return workspace / "context"


def _context_candidates(workspace: Path, requested: str) -> list[tuple[Path, str]]:
    """Where a context file name may be read from. An absolute path is read as given (the
    caller chose it explicitly); a relative name is looked up in `<workspace>/context`, then
    in the workspace, and must stay inside the workspace once resolved (no "../", no symlink
    out)."""
    path = Path(requested).expanduser()
    if path.is_absolute():
        return [(path, "path")]
    root = workspace.resolve()
    candidates = []
    for base, location in ((context_dir(workspace), "workspace"), (workspace, "workspace")):
        resolved = (base / path).resolve()
        if not resolved.is_relative_to(root):
            raise FileInputError(
                f"Context file {requested!r} resolves outside the workspace {root}; relative "
                "names stay inside it. Give an absolute path to read a file elsewhere."
            )
        candidates.append((resolved, location))
    return candidates


def read_context_file(workspace: Path, requested: str | Path) -> ContextFile:
    """Reads a context file (see `_context_candidates` for where) as UTF-8 text."""
    requested = str(requested)
    if not requested.strip() or "\x00" in requested:
        raise FileInputError(f"Not a usable file name: {requested!r}.")
    for path, location in _context_candidates(workspace, requested):
        if path.is_file():
            try:
                data = path.read_bytes()
                text = data.decode("utf-8")
            except OSError as error:
                raise FileInputError(f"Cannot read context file {path}: {error}.") from error
            except UnicodeDecodeError as error:
                raise FileInputError(
                    f"Context file {path} is not UTF-8 text ({error.reason} at byte {error.start})."
                ) from error
            stat = path.stat()
            return ContextFile(
                path=str(path),
                name=path.name,
                location=location,
                size=stat.st_size,
                modified=stat.st_mtime,
                text=text,
            )
    raise FileInputError(
        f"Context file {requested!r} not found in {context_dir(workspace)} nor in {workspace}."
    )


def list_context_files(workspace: Path) -> list[dict[str, object]]:
    base = context_dir(workspace)
    if not base.is_dir():
        return []
    files = []
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        stat = path.stat()
        files.append(
            {
                "path": str(path.relative_to(base)),
                "name": path.name,
                "location": "workspace",
                "size": stat.st_size,
                "modified": stat.st_mtime,
            }
        )
    return files


def read_image(path: str | Path) -> ImagePart:
    """Checks that the file is an image Pillow can identify and describes it."""
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as error:
        raise FileInputError(f"Cannot read image {file}: {error.strerror or error}.") from error
    try:
        with Image.open(file) as image:
            image.verify()
            media_type = Image.MIME.get(image.format or "", "application/octet-stream")
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise FileInputError(f"{file} is not an image chatledger can read: {error}.") from error
    return ImagePart(
        path=str(file.resolve()),
        media_type=media_type,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        width=width,
        height=height,
    )
