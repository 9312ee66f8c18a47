"""Reading the files a user points at: context files and images.

Every read here takes a regular file only (a device may never end, a FIFO may never open, a
directory or socket has nothing to read) and at most one byte more than the caller's limit,
in one bounded read: the file may grow between a look at its size and the read."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from domain.errors import FileInputError
from domain.messages import ImagePart

#: Largest image file read: OpenAI's per-image limit (Anthropic's is lower, 5 MB).
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Most pixels an image may have. Checking an image decodes it, up to 4 bytes a pixel; this
#: is Anthropic's largest image (8000 pixels a side), and OpenAI scales larger ones down.
MAX_IMAGE_PIXELS = 8000 * 8000

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str:
    kind = next((name for is_kind, name in _KINDS if is_kind(mode)), "something else")
    return f"it is {kind}, not a regular file"


def _read_at_most(path: Path, limit: int, what: str) -> tuple[bytes, os.stat_result]:
    """Up to `limit` + 1 bytes of a regular file, and its status as read."""
    try:
        status = os.stat(path)
        if stat.S_ISREG(status.st_mode):
            # Anything else is never opened: opening a FIFO waits for a writer, opening a
            # device may do something of its own. Should one replace the file after the look,
            # O_NONBLOCK keeps the open from waiting and fstat finds it out.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                status = os.fstat(fd)
                if stat.S_ISREG(status.st_mode):
                    with os.fdopen(fd, "rb", closefd=False) as file:
                        return file.read(limit + 1), status
            finally:
                os.close(fd)
        reason = _not_regular(status.st_mode)
    except OSError as error:
        reason = error.strerror or str(error)
    raise FileInputError(f"Cannot read {what} {path}: {reason}.")


def read_within(path: Path, limit: int, what: str, setting: str) -> tuple[bytes, os.stat_result]:
    data, status = _read_at_most(path, limit, what)
    if len(data) > limit:
        raise FileInputError(
            f"Cannot read {what} {path}: it is over the limit of {limit:,} bytes ({setting}). "
            f"Use a smaller file, or raise {setting}."
        )
    return data, status


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


def _file_name(requested: str) -> Path:
    """The path a name gives, or FileInputError for a name no file can have (blank, with a NUL
    or a lone surrogate) or a "~user" for no such user."""
    if not requested.strip() or "\x00" in requested:
        raise FileInputError(f"Not a usable file name: {requested!r}.")
    try:
        os.fsencode(requested)
        return Path(requested).expanduser()
    except (UnicodeEncodeError, RuntimeError) as error:
        raise FileInputError(f"Not a usable file name: {requested!r} ({error}).") from None


def _exists(path: Path, what: str) -> bool:
    try:
        return path.exists()
    except OSError as error:  # a name too long for the file system, ...
        raise FileInputError(f"Cannot read {what} {path}: {error.strerror or error}.") from None


def read_context_file(
    workspace: Path, requested: str | os.PathLike[str], max_bytes: int
) -> ContextFile:
    """Reads a context file (see `_context_candidates` for where) as UTF-8 text."""
    requested = str(requested)
    _file_name(requested)
    for path, location in _context_candidates(workspace, requested):
        # The first name that exists is the file meant, whatever it is: a device or FIFO is
        # refused as such rather than passed over as "not found".
        if _exists(path, "context file"):
            data, status = read_within(path, max_bytes, "context file", "max_context_file_bytes")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise FileInputError(
                    f"Context file {path} is not UTF-8 text ({error.reason} at byte {error.start})."
                ) from error
            return ContextFile(
                path=str(path),
                name=path.name,
                location=location,
                size=len(data),
                modified=status.st_mtime,
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


def read_image(path: str | os.PathLike[str], max_bytes: int) -> ImagePart:
    """Reads an image file, checks that Pillow can decode it safely, and describes it."""
    file = _file_name(os.fsdecode(path))
    data, _ = read_within(file, max_bytes, "image", "max_image_bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            media_type = Image.MIME.get(image.format or "", "application/octet-stream")
            width, height = image.size
    except Image.DecompressionBombError as error:
        raise FileInputError(f"Cannot read image {file}: {error} Scale it down first.") from None
    except Exception as error:
        raise _unreadable(file, error) from error
    if width * height > MAX_IMAGE_PIXELS:
        raise FileInputError(
            f"Cannot read image {file}: {width}x{height} is {width * height:,} pixels, more than "
            f"the {MAX_IMAGE_PIXELS:,} chatledger decodes. Scale it down first."
        )
    try:
        # verify() checks a file's structure only; decoding finds damaged pixel data too.
        # A JPEG decodes at an eighth of its size, which still reads all of its data.
        with Image.open(io.BytesIO(data)) as image:
            image.draft(image.mode, (1, 1))
            image.load()
    except Exception as error:
        raise _unreadable(file, error) from error
    return ImagePart(
        path=str(file.resolve()),
        media_type=media_type,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        width=width,
        height=height,
    )


def _unreadable(file: Path, error: Exception) -> FileInputError:
    # Pillow's decoders report damaged input in many ways (OSError, SyntaxError, ValueError,
    # struct.error, ...): whichever it is, the file is no image to send.
    detail = "not a format it knows" if isinstance(error, UnidentifiedImageError) else error
    return FileInputError(f"{file} is not an image chatledger can read: {detail}.")


def recorded_image(part: Mapping[str, Any]) -> bytes:
    """The bytes of a request's image part, exactly as recorded: its file is read again (at
    most the recorded size, when the part says) and must still have the recorded sha256, so a
    model is only ever sent the image the log names."""
    path = Path(part["path"])
    data, _ = _read_at_most(path, part.get("size", DEFAULT_MAX_IMAGE_BYTES), "image")
    expected = part["sha256"]
    if hashlib.sha256(data).hexdigest() != expected:
        raise FileInputError(
            f"Cannot send image {path}: the file changed since it was added to the conversation "
            f"(its sha256 was {expected[:12]}...). Put the original back, or send the new "
            "image in a new message."
        )
    return data


def image_data_url(part: Mapping[str, Any]) -> str:
    """A request's image part as a data URL (see `recorded_image`)."""
    encoded = base64.b64encode(recorded_image(part)).decode("ascii")
    return f"data:{part['media_type']};base64,{encoded}"
