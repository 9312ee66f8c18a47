"""Fuzzing the public surface: ConversationManager, Ledger and the command line, on each store.

Whatever the arguments (wrong types, empty or huge text, NUL bytes, lone surrogates, control
and bidi characters, ids that are malformed, unknown or of the wrong kind, negative or huge
numbers, paths to folders, devices, FIFOs, symlink loops and missing files, deep or odd
metadata and settings), a call gives a result or raises a ChatledgerError, never another
exception. A refused call (a typed error, or a Penguin wrapper's False/None) leaves the store
exactly as it was: no row of any table (the log, the projections, their tracking, the search
index's own tables) was inserted, updated or deleted, the active conversation has not moved
and, checked now and then with test_bad_input's helpers, the log's raw rows are the same and
the next good append lands at the next position. Reading calls leave the store unchanged even
when they succeed. On the command line any argument list ends with exit status 0 or 2 (a
refusal said on stderr), never a traceback.

Two halves, on one store per test (not per example; each call is compared with the store
right before it, so whatever earlier calls wrote is part of the baseline):
- hypothesis draws calls with none, one or two bad arguments (tests ..._gives_..., opening
  and the command line);
- the sweep tries every listed bad value of every kind of argument once, and a short list on
  every argument of every method (tests test_every_listed_...), reporting every failure.

Reproducing: the default profile (chatledger-fuzz-ci) is derandomized and keeps no example
database, so every run tries the same examples; a failure prints the falsifying call and a
@reproduce_failure blob. CHATLEDGER_FUZZ_PROFILE=chatledger-fuzz-random explores new examples
(pass --hypothesis-seed=N to repeat one); CHATLEDGER_FUZZ_EXAMPLES=2 doubles every count."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import inspect
import itertools
import math
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import event as _event
from hypothesis import note as _note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from chatledger import (
    ChatledgerError,
    CheckpointConfig,
    CheckpointType,
    ConversationManager,
)
from chatledger import cli as cli_module
from chatledger.ledger import Ledger
from infrastructure.sqlite_store import DB_FILE
from infrastructure.stores import DATABASE_URL_VARIABLE
from tests.integration.test_bad_input import (
    UNKNOWN_CHECKPOINT,
    UNKNOWN_SNAPSHOT,
    UNKNOWN_UUID,
    Before,
    Ctx,
    _sample_files,
    assert_unchanged,
    before,
)
from tests.stores import Store

#: Models the fuzz names at random are unknown to the tokenizer, as they should be.
pytestmark = pytest.mark.filterwarnings(
    "ignore::infrastructure.token_counting.TokenCountingWarning"
)

# -- hypothesis profiles ------------------------------------------------------------------
_COMMON: dict[str, Any] = {
    "deadline": None,
    "print_blob": True,
    "stateful_step_count": 10,
    # One store per run is the point: fixtures are set up once, examples share them.
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
}
settings.register_profile("chatledger-fuzz-ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("chatledger-fuzz-random", **_COMMON)
PROFILE = settings.get_profile(os.environ.get("CHATLEDGER_FUZZ_PROFILE", "chatledger-fuzz-ci"))
SCALE = float(os.environ.get("CHATLEDGER_FUZZ_EXAMPLES", "1"))


def note(text: str) -> None:
    """hypothesis.note, and nothing in the sweep (which runs outside hypothesis)."""
    if currently_in_test_context():
        _note(text)


def event(text: str) -> None:
    if currently_in_test_context():
        _event(text)


class Skipped(Exception):
    """A case the sweep leaves out (see `skip`)."""


def skip() -> None:
    """Leaves out a call on a never-ending special file not yet refused promptly: hypothesis
    draws another example, the sweep goes on to the next case."""
    if currently_in_test_context():
        reject()
    raise Skipped


def fuzz_settings(examples: int) -> settings:
    return settings(PROFILE, max_examples=max(1, int(examples * SCALE)))


# -- values that only exist in the test's store ---------------------------------------------
class Ref:
    """A value made when the call is made: an id or a file of the store under test, or a value
    too big to show (its name is what a falsifying example shows)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


#: Values too big to show in a falsifying example, built when the call is made.
BIG: dict[str, Callable[[], Any]] = {}


def big(name: str, make: Callable[[], Any]) -> Ref:
    BIG[name] = make
    return Ref(name)


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int = 1


#: Special files that a reader may never finish with; each is used (as an image or context
#: file, or as an anchor) only once the probe below has seen it refused promptly so (until
#: then the fuzz rejects the example, and the probe's own test fails naming it).
NEVER_ENDING = ("dev-zero", "fifo", "dev-urandom")
#: What the probe reads a special file as, and the Ref kinds that read it so.
READ_AS = {"image": ("file", "path"), "context file": ("file", "path"), "anchor": ("anchor",)}


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def make_files(root: Path, workspace: Path) -> dict[str, Path]:
    """The sample files of test_bad_input, and nastier ones next to them."""
    files = _sample_files(root, workspace)
    (files / "nul.txt").write_bytes(b"before\x00after\n")
    (files / "huge.txt").write_text("lorem ipsum " * 25_000)  # 300 KB
    (files / "bidi.txt").write_text("\u202eevil\u202c and \x1b[31mred\x1b[0m\n")
    (files / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    (files / "cut.png").write_bytes((files / "real.png").read_bytes()[:40])
    Image.new("RGB", (1, 1)).save(files / "real.gif")
    (files / "loop").symlink_to(files / "loop")
    (files / "dangling").symlink_to(files / "nowhere")
    os.mkfifo(files / "fifo")
    (workspace / "context" / "sub").mkdir()
    (workspace / "context" / "sub" / "deep.md").write_text("deeper context")
    (workspace / "context" / "dir.md").mkdir()
    (workspace / "context" / "link-to-fifo").symlink_to(files / "fifo")
    (workspace / "context" / "link-to-zero").symlink_to("/dev/zero")
    return {
        "real.png": files / "real.png",
        "real.gif": files / "real.gif",
        "notes.txt": files / "notes.txt",
        "fake.png": files / "fake.png",
        "cut.png": files / "cut.png",
        "bomb.png": files / "bomb.png",
        "latin1.txt": files / "latin1.txt",
        "empty.txt": files / "empty.txt",
        "nul.txt": files / "nul.txt",
        "huge.txt": files / "huge.txt",
        "bidi.txt": files / "bidi.txt",
        "files-dir": files,
        "missing": files / "missing.png",
        "missing-dir": files / "no" / "such" / "dir.txt",
        "loop": files / "loop",
        "dangling": files / "dangling",
        "fifo": files / "fifo",
        "dev-zero": Path("/dev/zero"),
        "dev-urandom": Path("/dev/urandom"),
        "dev-null": Path("/dev/null"),
        "proc-self": Path("/proc/self/status"),
    }


# -- hostile values ------------------------------------------------------------------------
HUGE_TEXT = (
    big("300 KB of x", lambda: "x" * 300_000),
    big("200 KB of é", lambda: "é" * 100_000),
    big("300 KB of words", lambda: "word " * 60_000),
)
TEXTS = (
    "",
    " ",
    "\t\n\r\x0b\x0c",
    "\u3000\u00a0",
    "\x00",
    "a\x00b",
    "\ud800",
    "ok \udfff",
    "\udcff",
    "\u202eevil\u202c",
    "\u200b",
    "\ufeff",
    "\x1b[2J\x1b[31m",
    "\x7f\x01",
    "\uffff\U0010ffff",
    "😀👩‍👩‍👧",
    "' OR '1'='1' --",
    '"; DROP TABLE conversations; --',
    "%",
    "_",
    "%_%\\",
    "[red]markup[/red]",
    "[/]",
    "[bold",
    "NULL",
    "None",
    "-1",
    "1e309",
    "nan",
    "~",
    "../../../../etc/passwd",
    "\n" * 50,
    big("5000 a", lambda: "a" * 5000),
    *HUGE_TEXT,
    "١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠١٢",  # Arabic-Indic digits: int() reads them
)
SCALARS: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    3,
    2**63,
    2**64,
    2**70,
    -(2**70),
    10**400,
    0.0,
    -0.5,
    1.5,
    math.nan,
    math.inf,
    -math.inf,
    complex(1, 2),
    Decimal("1.5"),
    b"bytes",
    b"\xff\xfe\x00",
    bytearray(b"ba"),
    memoryview(b"mv"),
    [],
    [None],
    ["a", 1],
    (),
    {},
    {"k": "v"},
    {1: 2},
    set(),
    frozenset({1}),
    object(),
    object,
    Path("."),
    UUID(int=0),
    Color.RED,
    CheckpointType.MANUAL,
    dt.datetime(2024, 1, 1),
    Point(),
    print,
)
SCALAR_STRATEGY = st.sampled_from(SCALARS)
RANDOM_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)  # surrogates too
HOSTILE = st.one_of(
    SCALAR_STRATEGY,
    st.sampled_from(TEXTS),
    RANDOM_TEXT,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=10),
)


#: One value of each kind that breaks naive code, swept once per kind of argument.
CORE: tuple[Any, ...] = (
    None,
    True,
    -1,
    2**64,
    math.nan,
    b"\xff",
    [],
    {"k": "v"},
    object(),
    "",
    " \n",
    "a\x00b",
    "\ud800",
)
#: What the sweep tries on every argument of every method.
LITE: tuple[Any, ...] = (None, 5, 2**64, "", "a\x00b", "\ud800")
_FIRST = object()
_KINDS = itertools.count()


@dataclass(frozen=True)
class Arg:
    """What an argument may be: good values, and bad ones. Hypothesis draws a call with none,
    one or (less often) two of its arguments bad and the others good (see `calls`), so a bad
    value meets every check, not only the first one on its way; the sweep tries each value
    of `sweep` once, with every other argument at its `default`."""

    good: st.SearchStrategy[Any]
    bad: st.SearchStrategy[Any]
    default: Any
    sweep: tuple[Any, ...]
    #: Arguments of one kind (or_none, map of another) share it: see `sweep`.
    kind: int = field(default_factory=lambda: next(_KINDS))

    @property
    def any(self) -> st.SearchStrategy[Any]:
        """Good three times in four; for arguments nested in others."""
        # (Not one_of(good, good, good, bad): one_of flattens nested one_ofs, so a bad made of
        # many alternatives would outweigh the good.)
        return st.integers(0, 3).flatmap(lambda draw: self.bad if draw == 3 else self.good)

    def map(self, function: Callable[[Any], Any]) -> Arg:
        return Arg(
            self.good.map(function),
            self.bad.map(function),
            function(self.default),
            tuple(map(function, self.sweep)),
            self.kind,
        )


def arg(
    good: tuple[Any, ...] | st.SearchStrategy[Any],
    bad: tuple[Any, ...] = (),
    *more_bad: st.SearchStrategy[Any],
    default: Any = _FIRST,
    hostile: bool = True,
) -> Arg:
    """An argument: good values (the first is its default), listed bad values (swept, and
    drawn), further bad strategies (drawn only) and, unless `hostile=False`, HOSTILE (drawn)
    and CORE (swept)."""
    if isinstance(good, tuple):
        default = good[0] if default is _FIRST else default
        good = st.sampled_from(good)
    assert default is not _FIRST, "a strategy of good values needs a default"
    bads = [st.sampled_from(bad)] if bad else []
    bads += [*more_bad, HOSTILE] if hostile else list(more_bad)
    return Arg(good, st.one_of(*bads), default, bad + (CORE if hostile else ()))


def with_hostile(*good: Any) -> Arg:
    return arg(good)


def or_none(argument: Arg) -> Arg:
    return Arg(
        st.one_of(st.none(), argument.good), argument.bad, None, argument.sweep, argument.kind
    )


def calls(args: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Arguments for one call: one bad three times in five, two bad or none bad once each."""
    names = [name for name, argument in args.items() if isinstance(argument, Arg)]

    def build(bad: frozenset[str]) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(
            {
                name: (a.bad if name in bad else a.good) if isinstance(a, Arg) else a
                for name, a in args.items()
            }
        )

    if not names:
        return build(frozenset())
    many = min(2, len(names))
    focus = st.integers(0, 4).flatmap(
        lambda draw: (
            st.just(frozenset())
            if draw == 0
            else st.frozensets(st.sampled_from(names), min_size=1, max_size=1 if draw < 4 else many)
        )
    )
    return focus.flatmap(build)


def sweep(args: dict[str, Any], seen: set[int]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Bad values one argument at a time, the other arguments at their defaults: the whole
    list of a kind of argument the first time it is met (`seen` holds the kinds met), LITE
    on every argument after that (the same kind of argument takes the same checks)."""
    defaults = {name: a.default for name, a in args.items() if isinstance(a, Arg)}
    for name, argument in args.items():
        if isinstance(argument, Arg):
            values = LITE if argument.kind in seen else argument.sweep
            seen.add(argument.kind)
            for value in values:
                yield name, {**defaults, name: value}


CONVERSATION_REFS = (
    *(
        Ref(f"conversation{suffix}")
        for suffix in ("", "-uuid", "-hex", "-urn", "-upper", "-braced", "-padded", "-nul")
    ),
    Ref("branch"),
    Ref("checkpoint"),
    Ref("snapshot"),
    Ref("session"),
)
CONVERSATION_IDS = arg(
    (*CONVERSATION_REFS[:6], Ref("branch")),
    (
        *CONVERSATION_REFS[6:],
        UNKNOWN_UUID,
        str(UUID(int=0)),
        UUID(int=2**128 - 1),
        "not-a-uuid",
        "0123456789abcdef0123456789abcde",
        "0123456789abcdef0123456789abcdef0",
        "{0123456789abcdef0123456789abcdef",
        "١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠١٢",
    ),
)
CHECKPOINT_REFS = (
    Ref("checkpoint"),
    Ref("auto-checkpoint"),
    Ref("branch-checkpoint"),
    Ref("checkpoint-upper"),
    Ref("checkpoint-padded"),
    Ref("checkpoint-nul"),
    Ref("checkpoint-prefix"),
    Ref("snapshot"),
    Ref("conversation"),
)
BAD_SOURCE_IDS = (
    *CHECKPOINT_REFS[3:],
    UNKNOWN_CHECKPOINT,
    UNKNOWN_SNAPSHOT,
    "cp_",
    "snap_",
    "cp_%",
    "snap_%",
    "%",
    "_",
)
SOURCE_IDS = arg((*CHECKPOINT_REFS[:3], Ref("snapshot")), BAD_SOURCE_IDS)
SNAPSHOT_IDS = arg(
    (Ref("snapshot"),),
    (Ref("snapshot-upper"), Ref("snapshot-nul"), Ref("checkpoint"), *BAD_SOURCE_IDS),
)
FILE_REFS = (
    "real.png",
    "real.gif",
    "notes.txt",
    "bidi.txt",
    "fake.png",
    "cut.png",
    "bomb.png",
    "latin1.txt",
    "empty.txt",
    "nul.txt",
    "huge.txt",
    "files-dir",
    "missing",
    "missing-dir",
    "loop",
    "dangling",
    "dev-null",
    "proc-self",
    *NEVER_ENDING,
)
ORDINARY_FILES = tuple(name for name in FILE_REFS if name not in NEVER_ENDING)
BAD_PATHS = (
    *(Ref(f"file:{name}") for name in FILE_REFS),
    *(Ref(f"path:{name}") for name in FILE_REFS[:4]),  # as Path objects
    "dir.md",
    "link-to-fifo",
    "link-to-zero",
    "context",
    ".",
    "..",
    "../ws/context/good.txt",
    "/",
    "/etc",
    "~/.nonexistent",
    "~nosuchuser/x",
    "/proc/self/mem",
    "chatledger.db",
    big("name of 5000 x", lambda: "x" * 5000),
    big("path of 3000 folders", lambda: "/" + "a/" * 3000),
)
IMAGES = arg((Ref("file:real.png"), Ref("path:real.gif")), BAD_PATHS)
CONTEXT_FILES = arg(
    ("good.txt", "sub/deep.md", Ref("file:notes.txt"), Ref("path:bidi.txt")), BAD_PATHS
)
ROLES = with_hostile("user", "assistant", "tool", "system", "USER")
CATEGORIES = arg((None, "DIALOG", "context", "system_output", "ERROR"), ("bogus", "DIALOG "))


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


METADATA = arg(
    (
        None,
        {},
        {"source": "fuzz", "n": 1, "f": 0.5, "ok": True, "none": None, "list": [1, "a"]},
        _nested(10),
        {"": ""},
        OrderedDict(a=1),
    ),
    (
        big("dict nested 253 deep", lambda: _nested(253)),
        big("dict nested 300 deep", lambda: _nested(300)),
        big("dict nested 3000 deep", lambda: _nested(3000)),
        big("dict holding itself", _cyclic),
        {"when": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)},
        {"day": dt.date(2024, 1, 1)},
        {"id": UUID(int=5)},
        {"color": Color.RED},
        {"point": Point()},
        {"big": 2**64},
        {"neg": -(2**63) - 1},
        {"nan": math.nan},
        {"inf": [math.inf]},
        {"bytes": b"x"},
        {"set": {1}},
        {"tuple": (1, 2)},
        {"decimal": Decimal("1.1")},
        {1: "int key"},
        {None: "none key"},
        {("a",): "tuple key"},
        {"nul": "a\x00b"},
        {"a\x00b": "nul key"},
        {"surrogate": "\ud800"},
        {"\udfff": "surrogate key"},
        {"huge": big("300 KB of x", lambda: "x" * 300_000)},
    ),
    st.dictionaries(RANDOM_TEXT, st.one_of(RANDOM_TEXT, st.integers(), st.floats()), max_size=4),
)
CONTENTS = arg(
    (
        "hello",
        "\u202eevil\u202c and \x1b[31mred",
        [{"type": "text", "text": "parts"}],
        [{"type": "tool_result", "call_id": "c1", "content": "42"}],
        [{"type": "tool_call", "call_id": "c1", "name": "f", "arguments": "{}"}],
        ({"type": "text", "text": "tuple"},),
    ),
    (
        [{"type": "text"}],
        [{"type": "text", "text": None}],
        [{"type": "text", "text": "x", "extra": 1}],
        [{"type": "image", "path": "/dev/zero", "media_type": "x", "sha256": "0", "size": -1}],
        [{"type": "image", "path": "/etc/passwd", "media_type": "", "sha256": "", "size": 2**70}],
        [{"type": "text", "text": "\x00"}],
        [{"type": "text", "text": ""}],
        [{"type": "tool_call", "call_id": "\ud800", "name": "", "arguments": "{"}],
        ["just a string in a list"],
        [None],
        [[{"type": "text", "text": "nested"}]],
        big("2000 text parts", lambda: [{"type": "text", "text": "x"}] * 2000),
        big("300 KB of x", lambda: "x" * 300_000),
        big("2 MB of x", lambda: "x" * 2_000_000),
    ),
)
LIMITS = with_hostile(1, 5, 0, 50, 100)
POSITIONS = with_hostile(1, 2, 3, Ref("head"))
SESSION_IDS = arg((None, Ref("session")), (Ref("conversation"),))
CHECKPOINT_TYPES = with_hostile(None, "manual", "auto", "branch", "rollback", "emergency")
ANCHORS = arg(
    (None, Ref("anchor-file"), Ref("anchor-dict")),
    (
        Ref("anchor-deep"),
        Ref("anchor-garbage"),
        {"format": "chatledger-anchor", "version": 1, "taken_at": "x", "conversations": {}},
        {"format": "chatledger-anchor", "version": 2**70},
        {"conversations": {"x": None}},
        *(Ref(f"file:{name}") for name in ORDINARY_FILES),
        *(Ref(f"anchor:{name}") for name in NEVER_ENDING),
        "/",
        "missing.json",
        "~nosuchuser/a.json",
        "/proc/self/mem",
    ),
)
BOOLS = with_hostile(False, True)


def _raising_callback(chunk: str) -> None:
    raise RuntimeError("callback failed")


async def _async_callback(chunk: str) -> None:
    return None


CALLBACKS = arg((None, lambda chunk: None, _async_callback), (_raising_callback, print, 42))
IMAGE_ARGS = arg(
    st.one_of(st.just(None), st.just(Ref("file:real.png")), st.lists(IMAGES.good, max_size=2)),
    (Ref("file:missing"), [Ref("file:real.png"), Ref("file:missing")], [None], b"x.png"),
    st.lists(IMAGES.any, min_size=1, max_size=3),
    default=None,
)
IMAGE_LISTS = arg(
    st.lists(IMAGES.good, max_size=2),
    ([Ref("file:missing")], [Ref("file:fake.png")], "real.png", b"real.png", {"a": 1}, [None]),
    st.lists(IMAGES.any, min_size=1, max_size=3),
    default=(),
)
CONTEXT_FILE_LISTS = arg(
    st.one_of(st.just(None), st.lists(CONTEXT_FILES.good, max_size=2)),
    (["good.txt", "missing"], [Ref("file:latin1.txt")], "good.txt", b"good.txt", [None]),
    st.lists(CONTEXT_FILES.any, min_size=1, max_size=3),
    default=None,
)


# -- the calls -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    name: str
    call: Callable[..., Any]
    args: dict[str, Arg | st.SearchStrategy[Any]] = field(default_factory=dict)
    #: Reading calls: the store is unchanged after them, whatever they return.
    reads: bool = False
    #: Penguin wrappers: these results mean "refused", so the store must be unchanged.
    refusals: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        return self.name

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.name)


MANAGER_OPS = (
    Op(
        "process_message",
        lambda m, **a: m.process_message(**a),
        {
            "message": CONTENTS,
            "conversation_id": or_none(CONVERSATION_IDS),
            "image_path": IMAGE_ARGS,
            "streaming": BOOLS,
            "stream_callback": CALLBACKS,
            "context_files": CONTEXT_FILE_LISTS,
            "idempotency_key": with_hostile(None, "key-1", "key-2"),
        },
    ),
    Op(
        "create_manual_checkpoint",
        lambda m, **a: m.create_manual_checkpoint(**a),
        {"name": with_hostile(None, "cp"), "description": with_hostile(None, "why")},
    ),
    Op(
        "rollback_to_checkpoint",
        lambda m, **a: m.rollback_to_checkpoint(**a),
        {"checkpoint_id": SOURCE_IDS},
        refusals=(False,),
    ),
    Op(
        "branch_from_checkpoint",
        lambda m, **a: m.branch_from_checkpoint(**a),
        {
            "checkpoint_id": SOURCE_IDS,
            "name": with_hostile(None, "b"),
            "description": with_hostile(None, "d"),
        },
        refusals=(None,),
    ),
    Op(
        "list_checkpoints",
        lambda m, **a: m.list_checkpoints(**a),
        {"session_id": SESSION_IDS, "checkpoint_type": CHECKPOINT_TYPES, "limit": LIMITS},
        reads=True,
    ),
    Op("create_snapshot", lambda m, **a: m.create_snapshot(**a), {"meta": METADATA}),
    Op(
        "restore_snapshot",
        lambda m, **a: m.restore_snapshot(**a),
        {"snapshot_id": SNAPSHOT_IDS},
        refusals=(False,),
    ),
    Op(
        "branch_from_snapshot",
        lambda m, **a: m.branch_from_snapshot(**a),
        {"snapshot_id": SNAPSHOT_IDS, "meta": METADATA},
        refusals=(None,),
    ),
    Op(
        "add_message",
        lambda m, **a: m.add_message(**a),
        {"role": ROLES, "content": CONTENTS, "category": CATEGORIES, "metadata": METADATA},
    ),
    Op(
        "add_context",
        lambda m, **a: m.add_context(**a),
        {"content": CONTENTS, "source": with_hostile(None, "notes.md")},
    ),
    Op(
        "load_context_file",
        lambda m, **a: m.load_context_file(**a),
        {"file_path": CONTEXT_FILES},
        refusals=(False,),
    ),
    Op("list_context_files", lambda m: m.list_context_files(), reads=True),
    Op("save", lambda m: m.save(), reads=True),
    Op("load", lambda m, **a: m.load(**a), {"conversation_id": CONVERSATION_IDS}, reads=True),
    Op("reset", lambda m: m.reset()),
    Op(
        "list_conversations",
        lambda m, **a: m.list_conversations(**a),
        {"limit": LIMITS, "offset": with_hostile(0, 1), "search_term": with_hostile(None, "hello")},
        reads=True,
    ),
    Op("get_token_usage", lambda m: m.get_token_usage(), reads=True),
    Op("get_history", lambda m: m.get_history(), reads=True),
)
LEDGER_OPS = (
    Op(
        "start_conversation",
        lambda m, **a: m.ledger.start_conversation(**a),
        {
            "title": with_hostile(None, "t"),
            "system_prompt": with_hostile("", "Be brief."),
            "reset_from": or_none(CONVERSATION_IDS),
        },
    ),
    Op(
        "append_message",
        lambda m, **a: m.ledger.append_message(**a),
        {
            "conversation_id": CONVERSATION_IDS,
            "role": ROLES,
            "content": CONTENTS,
            "category": CATEGORIES,
            "metadata": METADATA,
            "image_paths": IMAGE_LISTS,
        },
    ),
    Op(
        "create_checkpoint",
        lambda m, **a: m.ledger.create_checkpoint(**a),
        {
            "conversation_id": CONVERSATION_IDS,
            "checkpoint_type": CHECKPOINT_TYPES,
            "name": with_hostile(None, "n"),
            "description": with_hostile(None, "d"),
        },
    ),
    Op("checkpoint", lambda m, **a: m.ledger.checkpoint(**a), {"checkpoint_id": SOURCE_IDS}, True),
    Op("rollback", lambda m, **a: m.ledger.rollback(**a), {"checkpoint_id": SOURCE_IDS}),
    Op(
        "branch",
        lambda m, **a: m.ledger.branch(**a),
        {
            "source_id": SOURCE_IDS,
            "title": with_hostile(None, "t"),
            "description": with_hostile(None, "d"),
        },
    ),
    Op(
        "take_snapshot",
        lambda m, **a: m.ledger.take_snapshot(**a),
        {"conversation_id": CONVERSATION_IDS, "meta": METADATA},
    ),
    Op(
        "restore_snapshot",
        lambda m, **a: m.ledger.restore_snapshot(**a),
        {"snapshot_id": SNAPSHOT_IDS},
    ),
    Op("read_context", lambda m, **a: m.ledger.read_context(**a), {"path": CONTEXT_FILES}, True),
    Op(
        "load_context_file",
        lambda m, **a: m.ledger.load_context_file(**a),
        {"conversation_id": CONVERSATION_IDS, "path": CONTEXT_FILES},
    ),
    Op(
        "prepare_turn",
        lambda m, **a: m.ledger.prepare_turn(**a),
        {
            "conversation_id": CONVERSATION_IDS,
            "content": CONTENTS,
            "image_paths": IMAGE_LISTS,
            "context_files": CONTEXT_FILE_LISTS.map(lambda files: files or ()),
            "provider": with_hostile("offline"),
            "model": with_hostile("offline"),
            "parameters": METADATA,
            "idempotency_key": with_hostile(None, "key-1"),
        },
    ),
    Op(
        "context_at",
        lambda m, **a: m.ledger.context_at(**a),
        {"conversation_id": CONVERSATION_IDS, "position": or_none(POSITIONS)},
        True,
    ),
    Op(
        "retitle",
        lambda m, **a: m.ledger.retitle(**a),
        {"conversation_id": CONVERSATION_IDS, "title": with_hostile("new title")},
    ),
    Op(
        "conversation",
        lambda m, **a: m.ledger.conversation(**a),
        {"conversation_id": CONVERSATION_IDS},
        True,
    ),
    Op(
        "history",
        lambda m, **a: m.ledger.history(**a),
        {"conversation_id": CONVERSATION_IDS},
        True,
    ),
    Op(
        "as_of",
        lambda m, **a: m.ledger.as_of(**a),
        {"conversation_id": CONVERSATION_IDS, "position": POSITIONS},
        True,
    ),
    Op(
        "checkpoints",
        lambda m, **a: m.ledger.checkpoints(**a),
        {
            "conversation_id": or_none(CONVERSATION_IDS),
            "checkpoint_type": CHECKPOINT_TYPES,
            "limit": or_none(LIMITS),
            "session_id": SESSION_IDS,
        },
        True,
    ),
    Op(
        "list_conversations",
        lambda m, **a: m.ledger.list_conversations(**a),
        {"limit": LIMITS, "offset": with_hostile(0, 1), "search_term": with_hostile(None, "hello")},
        True,
    ),
    Op(
        "verify",
        lambda m, **a: m.ledger.verify(**a),
        {"conversation_id": or_none(CONVERSATION_IDS), "anchor": ANCHORS},
        True,
    ),
    Op("branch_tree", lambda m: m.ledger.branch_tree(), reads=True),
)


# -- the store under test -------------------------------------------------------------------
@dataclass
class Fuzz:
    ctx: Ctx
    runner: asyncio.Runner
    refs: dict[str, Any]
    files: dict[str, Path]
    #: (Ref kind, special file) pairs not yet refused promptly (see unsafe_reads()).
    unsafe: frozenset[tuple[str, str]]
    calls: int = 0

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<{self.ctx.store.name} store at {self.ctx.workspace}>")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, Ref):
            if value.name in BIG:
                return BIG[value.name]()
            if value.name == "head":
                return self.ctx.lg.conversation(self.ctx.conversation).version
            kind, _, name = value.name.partition(":")
            if kind in ("file", "path", "anchor"):
                if (kind, name) in self.unsafe:
                    skip()
                return self.files[name] if kind == "path" else str(self.files[name])
            return self.refs[value.name]
        if type(value) is list:
            return [self.resolve(item) for item in value]
        if type(value) is dict:
            return {key: self.resolve(item) for key, item in value.items()}
        return value


#: The tables of each store under test, looked up once: chatledger creates them all when it
#: opens a store, and the catalogue query costs more than the dump itself on a busy server.
_TABLES: dict[tuple[str, Path], list[str]] = {}


def table_names(store: Store) -> list[str]:
    key = (store.url, store.workspace)
    if key not in _TABLES:
        _TABLES[key] = _table_names(store)
    return _TABLES[key]


def _table_names(store: Store) -> list[str]:
    if store.name == "sqlite":
        # A virtual table (the contentless search index) cannot be scanned; its shadow tables,
        # which hold what it stores, are read instead.
        rows = store.rows(
            "SELECT name FROM sqlite_master WHERE type='table' "
            "AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name",
        )
    else:
        # pg_catalog, not information_schema: the same names, a fraction of the time.
        rows = store.rows(
            "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname=? ORDER BY tablename",
            store.schema,
        )
    return [name for (name,) in rows]


def dump(ctx: Ctx) -> dict[str, str]:
    """A fingerprint of every table of the store (the log, the projections, their tracking,
    the search index's own tables) that changes whenever a row is inserted, updated or
    deleted, read in one query on a connection of the test's own: each table's row count and
    newest row version (SQLite: its largest rowid, and the database's data_version, which
    counts commits by any other connection; PostgreSQL: its rows' largest xmin, the id of the
    transaction that wrote them). Cheap whatever the store holds, so every call is checked."""
    names = table_names(ctx.store)
    (row,) = ctx.store.rows(_query(ctx.store, "fingerprint"))
    fingerprint = dict(zip(names, map(str, row), strict=True))
    if ctx.store.name == "sqlite":
        fingerprint["(commits by others)"] = str(_watcher(ctx.workspace).fetchone()[0])
    return fingerprint


def contents(ctx: Ctx) -> dict[str, str]:
    """Every table as a digest of all its rows' values in a stable order: equal means the same
    rows, even where they were written again (a rebuild)."""
    names = table_names(ctx.store)
    (row,) = ctx.store.rows(_query(ctx.store, "contents"))
    return {
        name: "empty" if value is None else hashlib.blake2b(value.encode()).hexdigest()
        for name, value in zip(names, row, strict=True)
    }


_WATCHERS: dict[Path, sqlite3.Connection] = {}


def _watcher(workspace: Path) -> sqlite3.Cursor:
    if workspace not in _WATCHERS:
        _WATCHERS[workspace] = sqlite3.connect(workspace / DB_FILE, isolation_level=None)
    # data_version is brought up to date when the connection next reads.
    _WATCHERS[workspace].execute("SELECT count(*) FROM sqlite_master").fetchall()
    return _WATCHERS[workspace].execute("PRAGMA data_version")


_QUERIES: dict[tuple[str, Path, str], str] = {}


def _query(store: Store, kind: str) -> str:
    key = (store.url, store.workspace, kind)
    if key in _QUERIES:
        return _QUERIES[key]
    parts = []
    for table in table_names(store):
        if store.name == "postgres" and kind == "fingerprint":
            parts.append(
                f"(SELECT count(*) || ':' || coalesce(max(xmin::text::bigint)::text, '') "
                f'FROM "{table}")'
            )
        elif store.name == "postgres":
            parts.append(
                f'(SELECT md5(string_agg(t::text, chr(30) ORDER BY t::text)) FROM "{table}" t)'
            )
        elif kind == "fingerprint":
            (sql,) = store.rows("SELECT sql FROM sqlite_master WHERE name=?", table)[0]
            rowid = "''" if "WITHOUT ROWID" in sql.upper() else "coalesce(max(rowid), '')"
            parts.append(f"(SELECT count(*) || ':' || {rowid} FROM \"{table}\")")
        else:
            info = store.rows(f'PRAGMA table_info("{table}")')
            row = " || char(31) || ".join(f'quote("{column[1]}")' for column in info)
            parts.append(
                f'(SELECT group_concat(r, char(30)) FROM (SELECT {row} AS r FROM "{table}" '
                "ORDER BY 1))"
            )
    _QUERIES[key] = "SELECT " + ", ".join(parts)
    return _QUERIES[key]


def assert_same_dump(was: dict[str, str], now: dict[str, str], what: str) -> None:
    assert was.keys() == now.keys(), f"{what}: tables appeared or vanished"
    changed = [name for name in was if was[name] != now[name]]
    assert not changed, f"{what} changed {changed}"


def _still(ctx: Ctx) -> tuple[list[dict[str, Any]], str]:
    return ctx.lg.history(ctx.conversation), ctx.m.get_conversation_id()


def assert_still(ctx: Ctx, was: Before) -> None:
    """What the dumps do not show: the write model's history, and the active conversation."""
    history, active = _still(ctx)
    assert history == was.history
    assert active == was.active, "the active conversation moved"


def short(value: Any, width: int = 120) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return f"<{type(value).__name__} too deep to show>"
    return text if len(text) <= width else f"{text[:width]}... ({len(text)} chars)"


def check_error(error: ChatledgerError) -> None:
    message = str(error)
    assert message.strip(), f"{type(error).__name__} without a message"
    assert "Traceback" not in message


def run_call(fuzz: Fuzz, op: Op, arguments: dict[str, Any]) -> Any:
    """The call on the manager, awaited; a returned stream is read to its end."""

    async def go() -> Any:
        result = op.call(fuzz.ctx.m, **arguments)
        if inspect.isawaitable(result):
            result = await result
        if inspect.isasyncgen(result):
            result = [chunk async for chunk in result]
        return result

    return fuzz.runner.run(go())


def fuzz_one(fuzz: Fuzz, op: Op, drawn: dict[str, Any]) -> None:
    ctx = fuzz.ctx
    arguments = {name: fuzz.resolve(value) for name, value in drawn.items()}
    note(f"{op.name}({', '.join(f'{k}={short(v)}' for k, v in arguments.items())})")
    # Now and then the whole of test_bad_input's check after a refusal (the raw rows of the
    # log and projections, the next good append landing at the next position, so that no
    # unsaved change was left in the write model, and verify): it reads the whole store.
    fuzz.calls += 1
    whole = fuzz.calls % 16 == 1
    was = before(ctx) if whole else Before([], {}, *_still(ctx))
    tables = dump(ctx)
    try:
        result = run_call(fuzz, op, arguments)
    except ChatledgerError as error:
        note(f"refused: {type(error).__name__}: {short(str(error), 300)}")
        event(f"refused with {type(error).__name__}")
        check_error(error)
        assert_same_dump(tables, dump(ctx), f"refused {op.name}")
        assert_still(ctx, was)
        if whole:
            assert_unchanged(ctx, was)
        return
    refused = any(result is refusal for refusal in op.refusals)
    event("refused with False/None" if refused else "a result")
    if refused or op.reads:
        assert_same_dump(tables, dump(ctx), f"{op.name} returning {short(result)}")
    if refused:
        assert_still(ctx, was)


@pytest.fixture
def fuzz(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fuzz]:
    # Relative paths (an image, an anchor, a workspace) are the test's own folder's; and no
    # provider may reach a real model.
    monkeypatch.chdir(tmp_path)
    for variable in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
    ):
        monkeypatch.delenv(variable, raising=False)
    with open_fuzz(store, tmp_path) as opened:
        yield opened


@contextmanager
def open_fuzz(store: Store, tmp_path: Path) -> Iterator[Fuzz]:
    """A store with a conversation, a branch, checkpoints, a snapshot and sample files."""
    workspace = store.workspace
    manager = store.manager(system_prompt="Be brief.")
    with asyncio.Runner() as runner:
        runner.run(manager.process_message("hello"))
        checkpoint = runner.run(manager.create_manual_checkpoint("cp"))
        assert checkpoint is not None
        snapshot = manager.create_snapshot(meta={"name": "snap"})
        assert snapshot is not None
        ledger = manager.ledger
        conversation = UUID(manager.get_conversation_id())
        branch = ledger.branch(checkpoint, "a branch")
        rows = ledger.checkpoints(conversation, limit=None)
        auto = next(row.checkpoint_id for row in rows if row.type == "auto")
        branch_checkpoint = ledger.checkpoints(branch, limit=1)[0].checkpoint_id
        files = make_files(tmp_path, workspace)
        report = ledger.verify()
        anchor_file = tmp_path / "anchor.json"
        from infrastructure.verification import write_anchor

        write_anchor(anchor_file, report.anchor())
        (tmp_path / "garbage.json").write_text('{"format": [' * 10 + "1")
        (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
        refs: dict[str, Any] = {
            "conversation": str(conversation),
            "conversation-uuid": conversation,
            "conversation-hex": conversation.hex,
            "conversation-urn": conversation.urn,
            "conversation-upper": str(conversation).upper(),
            "conversation-braced": "{" + str(conversation) + "}",
            "conversation-padded": f" {conversation}\n",
            "conversation-nul": f"{conversation}\x00",
            "branch": str(branch),
            "checkpoint": checkpoint,
            "auto-checkpoint": auto,
            "branch-checkpoint": branch_checkpoint,
            "checkpoint-upper": checkpoint.upper(),
            "checkpoint-padded": f" {checkpoint} ",
            "checkpoint-nul": f"{checkpoint}\x00",
            "checkpoint-prefix": checkpoint[:-1],
            "snapshot": snapshot,
            "snapshot-upper": snapshot.upper(),
            "snapshot-nul": f"{snapshot}\x00",
            "session": rows[0].session_id,
            "anchor-file": str(anchor_file),
            "anchor-dict": report.anchor(),
            "anchor-deep": str(tmp_path / "deep.json"),
            "anchor-garbage": str(tmp_path / "garbage.json"),
            "ws": str(workspace),
            "ws-path": workspace,
        }
        ctx = Ctx(store, workspace, files["files-dir"], conversation, checkpoint, snapshot)
        ctx.manager = manager
        try:
            yield Fuzz(ctx, runner, refs, files, unsafe_reads())
        finally:
            if workspace in _WATCHERS:
                _WATCHERS.pop(workspace).close()
        assert ledger.verify().ok
        assert _table_names(store) == table_names(store)


def test_the_fingerprint_sees_every_kind_of_write(fuzz: Fuzz) -> None:
    """What the fuzz relies on: reading changes nothing in the dump, and an appended event,
    a row changed behind chatledger's back and (on PostgreSQL, where it makes a new row
    version; SQLite then writes no page at all) a row written again as it was all show."""
    ctx = fuzz.ctx
    first = dump(ctx)
    ctx.lg.history(ctx.conversation)
    ctx.lg.list_conversations()
    assert dump(ctx) == first
    ctx.lg.append_message(ctx.conversation, "user", "one more")
    second = dump(ctx)
    assert second != first
    ctx.store.execute("UPDATE conversations SET title=title")
    third = dump(ctx)
    assert (third != second) == (ctx.store.name == "postgres")
    ctx.store.execute("UPDATE conversations SET title='changed behind its back'")
    assert dump(ctx) != third
    assert contents(ctx) == contents(ctx), "the same rows give the same digests"


def ops_strategy(ops: tuple[Op, ...]) -> st.SearchStrategy[tuple[Op, dict[str, Any]]]:
    return st.sampled_from(ops).flatmap(lambda op: st.tuples(st.just(op), calls(op.args)))


@fuzz_settings(150)
@given(call=ops_strategy(MANAGER_OPS))
def test_manager_gives_a_result_or_a_typed_refusal(
    fuzz: Fuzz, call: tuple[Op, dict[str, Any]]
) -> None:
    fuzz_one(fuzz, *call)


@fuzz_settings(150)
@given(call=ops_strategy(LEDGER_OPS))
def test_ledger_gives_a_result_or_a_typed_refusal(
    fuzz: Fuzz, call: tuple[Op, dict[str, Any]]
) -> None:
    fuzz_one(fuzz, *call)


def run_sweep(cases: Iterator[tuple[str, Callable[[], None]]]) -> None:
    """Runs every case, then fails listing every case that failed (not only the first)."""
    failures, count = [], 0
    for label, case in cases:
        count += 1
        try:
            case()
        except Skipped:
            continue
        except Exception as error:
            failures.append(f"{label}: {type(error).__name__}: {short(str(error), 300)}")
    assert not failures, f"{len(failures)} of {count} calls failed:\n" + "\n".join(failures)


def test_every_listed_bad_value_of_every_argument(fuzz: Fuzz) -> None:
    """The systematic half of the fuzz: each listed bad value (CORE, and the argument's own
    list) of each argument of each call, once, with the other arguments at good defaults."""

    def cases() -> Iterator[tuple[str, Callable[[], None]]]:
        seen: set[int] = set()
        for op in MANAGER_OPS + LEDGER_OPS:
            kind = "ledger" if op in LEDGER_OPS else "manager"
            for name, drawn in sweep(op.args, seen):
                label = f"{kind}.{op.name}({name}={short(drawn[name], 60)})"
                yield label, functools.partial(fuzz_one, fuzz, op, drawn)

    run_sweep(cases())


def test_every_listed_bad_setting_when_opening(fuzz: Fuzz) -> None:
    """The same for ConversationManager(...) and Ledger(...)."""

    def cases() -> Iterator[tuple[str, Callable[[], None]]]:
        seen: set[int] = set()
        for kind, args in (("manager", MANAGER_OPENING), ("ledger", LEDGER_OPENING)):
            for name, drawn in sweep(args, seen):
                label = f"{kind}({name}={short(drawn[name], 60)})"
                yield label, functools.partial(open_one, fuzz, kind, drawn)

    run_sweep(cases())


# -- special files that a naive reader never finishes -----------------------------------------
_PROBE = r"""
import json, os, resource, signal, sys, tempfile
from pathlib import Path
from chatledger import ChatledgerError
from chatledger.ledger import Ledger

from chatledger.ledger import Ledger
with open("/proc/self/statm") as statm:
    pages = int(statm.read().split()[0])
# Enough to run, too little to read a device to its (missing) end.
resource.setrlimit(
    resource.RLIMIT_AS, (pages * os.sysconf("SC_PAGE_SIZE") + (512 << 20), resource.RLIM_INFINITY)
)
class StillReading(BaseException):  # not an OSError: nothing may take it for one
    pass
def alarm(*_):
    raise StillReading("still reading after 1 s")
signal.signal(signal.SIGALRM, alarm)
root = Path(tempfile.mkdtemp())
os.mkfifo(root / "fifo")
specials = {"dev-zero": "/dev/zero", "dev-urandom": "/dev/urandom", "fifo": str(root / "fifo")}
ledger = Ledger(root / "ws", database_url="")
cid = ledger.start_conversation()
calls = {
    "image": lambda p: ledger.append_message(cid, "user", "look", image_paths=[p]),
    "context file": lambda p: ledger.load_context_file(cid, p),
    "anchor": lambda p: ledger.verify(anchor=p),
}
failed = {}
for name, path in specials.items():
    for what, call in calls.items():
        signal.alarm(1)
        try:
            call(path)
        except ChatledgerError:
            pass
        except BaseException as error:
            failed[f"{what} {name}"] = f"{type(error).__name__}: {error}"[:200]
        finally:
            signal.alarm(0)
print(json.dumps(failed))
"""


_PROBED: dict[str, str] | None = None


def _probe_special_files() -> dict[str, str]:
    """Which never-ending special files (/dev/zero, /dev/urandom, a FIFO with no writer) the
    Ledger does not refuse promptly as an image, a context file or an anchor, found in a
    subprocess with a time and memory limit (once per session): {"anchor fifo": what
    happened, ...}."""
    global _PROBED
    if _PROBED is None:
        completed = subprocess.run(
            [sys.executable, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, DATABASE_URL_VARIABLE: ""},
        )
        lines = completed.stdout.strip().splitlines()
        if completed.returncode != 0 or not lines:
            _PROBED = {
                f"{what} {name}": completed.stderr[-300:]
                for what in READ_AS
                for name in NEVER_ENDING
            }
        else:
            import json

            _PROBED = json.loads(lines[-1])
    return _PROBED


def unsafe_reads() -> frozenset[tuple[str, str]]:
    failed = _probe_special_files()
    return frozenset(
        (kind, name)
        for what, kinds in READ_AS.items()
        for name in NEVER_ENDING
        if f"{what} {name}" in failed
        for kind in kinds
    )


def test_never_ending_special_files_are_refused_promptly() -> None:
    """Reading /dev/zero, /dev/urandom or a FIFO nobody writes to as an image, a context file
    or an anchor must end in a typed refusal, not in a read that never returns or exhausts
    memory. (Until it does, the fuzz above leaves these files out.)"""
    failed = _probe_special_files()
    assert not failed, failed


# -- opening: ConversationManager(...) and Ledger(...) ------------------------------------------
class PenguinLike:
    async def get_response(self, messages: Any, **kwargs: Any) -> str:
        return "ok"


class NotAsync:
    def get_response(self, messages: Any, **kwargs: Any) -> str:
        return "not awaitable"


class Broken:
    name, model = "broken", "broken-1"

    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the client failed")


class Nameless:
    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("never called: a provider without a name is refused")


WORKSPACES = arg(
    (Ref("ws"), Ref("ws-path"), Ref("new-ws")),
    (
        Ref("file:notes.txt"),
        Ref("file:files-dir"),
        Ref("file:dev-null"),
        "relative",
        "~nosuchuser/ws",
        "/proc/self",
        big("name of 5000 x", lambda: "x" * 5000),
    ),
)
COUNTS = with_hostile(1, 2, 20, 5000)
SIZES = with_hostile(1 << 20, 1000, 1)
MODEL_CONFIGS = arg(
    (None, {}, {"provider": "offline"}),
    (
        {"provider": "openai"},
        {"provider": "openai", "model": "gpt-4o"},
        {"provider": "openai", "model": "gpt-4o", "base_url": "http://[::1"},
        {"provider": "anthropic", "model": "claude", "base_url": "\x00"},
        {"provider": "nope"},
        {"provider": 5},
        {"model": 5},
        {"context_window": "abc"},
        {"context_window": math.inf},
        {"context_window": -5},
        {"max_images": -1},
        {"max_images": "x"},
        {"max_attempts": 0},
        {"retry_backoff": math.nan},
        {"retry_backoff": -1},
        {"temperature": "hot"},
        {"max_tokens": 2**70},
    ),
    calls(
        {
            "provider": with_hostile("offline", "OFFLINE", "openai", "anthropic"),
            "model": with_hostile("gpt-4o", "offline"),
            "context_window": with_hostile(8000, 128_000, 10),
            "max_images": with_hostile(0, 5),
            "max_attempts": with_hostile(1, 3),
            "retry_backoff": with_hostile(0.0, 0.01),
            "temperature": with_hostile(0.5),
            "max_tokens": with_hostile(100),
            "base_url": with_hostile(None, "http://127.0.0.1:1/v1"),
        }
    ),
)
CHECKPOINT_CONFIGS = arg(
    (None, CheckpointConfig(), CheckpointConfig(enabled=False)),
    (
        CheckpointConfig(frequency=0),
        CheckpointConfig(frequency=-3),
        CheckpointConfig(max_auto_checkpoints=0),
        CheckpointConfig(max_auto_checkpoints=-1),
        CheckpointConfig(retention={}),
        CheckpointConfig(retention={"max_age_days": 10**12}),
        CheckpointConfig(frequency="2"),  # type: ignore[arg-type]
        CheckpointConfig(planes=None),  # type: ignore[arg-type]
        CheckpointConfig(enabled="no"),  # type: ignore[arg-type]
    ),
)
MANAGER_OPENING = {
    "workspace_path": WORKSPACES,
    "model_config": MODEL_CONFIGS,
    "api_client": arg((None, PenguinLike(), Broken()), (NotAsync(), Nameless(), object())),
    "system_prompt": with_hostile("", "Be brief."),
    "max_messages_per_session": COUNTS,
    "max_sessions_in_memory": COUNTS,
    "auto_save_interval": COUNTS,
    "checkpoint_config": CHECKPOINT_CONFIGS,
    "max_message_bytes": SIZES,
    "max_image_bytes": SIZES,
    "max_context_file_bytes": or_none(SIZES),
}
LEDGER_OPENING = {
    "workspace": WORKSPACES,
    "checkpoint_config": CHECKPOINT_CONFIGS,
    "max_messages_per_session": COUNTS,
    "cache_size": COUNTS,
    "max_message_bytes": SIZES,
    "max_image_bytes": SIZES,
    "max_context_file_bytes": or_none(SIZES),
}


def _threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.is_alive()}


def open_one(fuzz: Fuzz, kind: str, drawn: dict[str, Any]) -> None:
    """Opens a manager or a Ledger on the store under test with the drawn arguments: it opens
    (then a turn, a checkpoint and the usage give results or typed refusals) or it is refused
    with a typed error, the store unchanged and no thread left running."""
    ctx = fuzz.ctx
    fuzz.refs["new-ws"] = str(ctx.workspace.parent / f"new-{uuid4().hex[:8]}")
    arguments = {name: fuzz.resolve(value) for name, value in drawn.items()}
    note(f"{kind}({', '.join(f'{k}={short(v)}' for k, v in arguments.items())})")
    tables, threads = dump(ctx), _threads()
    try:
        if kind == "manager":
            opened: Any = ConversationManager(database_url=ctx.store.url, **arguments)
        else:
            opened = Ledger(database_url=ctx.store.url, **arguments)
    except ChatledgerError as error:
        note(f"refused: {type(error).__name__}: {short(str(error), 300)}")
        event(f"refused with {type(error).__name__}")
        check_error(error)
        assert_same_dump(tables, dump(ctx), f"refused {kind}")
        left = [thread.name for thread in _threads() - threads]
        assert not left, f"a refused {kind} left threads running: {left}"
        return
    event("opened")
    try:
        assert_same_dump(tables, dump(ctx), f"opening a {kind}")
        manager = opened if kind == "manager" else None
        ledger = opened.ledger if kind == "manager" else opened

        async def smoke() -> None:
            if manager is not None:
                await manager.process_message("hello there")
                await manager.create_manual_checkpoint("smoke")
                manager.get_token_usage()
            else:
                cid = ledger.start_conversation(title="smoke", system_prompt="Be brief.")
                ledger.append_message(cid, "user", "hello there")
                ledger.create_checkpoint(cid, CheckpointType.MANUAL, "smoke")
                ledger.list_conversations(limit=3)

        try:
            fuzz.runner.run(smoke())
        except ChatledgerError as error:
            note(f"smoke refused: {type(error).__name__}: {short(str(error), 300)}")
            check_error(error)
    finally:
        opened.close()


@fuzz_settings(30)
@given(drawn=calls(MANAGER_OPENING))
def test_opening_a_manager_gives_one_or_a_typed_refusal(fuzz: Fuzz, drawn: dict[str, Any]) -> None:
    open_one(fuzz, "manager", drawn)


@fuzz_settings(20)
@given(drawn=calls(LEDGER_OPENING))
def test_opening_a_ledger_gives_one_or_a_typed_refusal(fuzz: Fuzz, drawn: dict[str, Any]) -> None:
    open_one(fuzz, "ledger", drawn)


# -- the command line ---------------------------------------------------------------------------
#: Commands that only read the store: whatever they print or refuse, it stays as it was.
READING = {"ls", "show", "as-of", "context", "checkpoints", "tree", "verify", "replay"}
CLI_INTS = st.one_of(
    st.sampled_from(
        ("0", "1", "3", "-1", "", " 3", "+2", "0x10", "1e3", "nan", "٣", str(2**63), str(2**64))
    ),
    st.sampled_from((big("400 digits", lambda: "9" * 400),)),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)
CLI_TEXT = st.one_of(st.sampled_from(TEXTS), RANDOM_TEXT)
CLI_IDS = st.one_of(st.sampled_from(CONVERSATION_REFS + CHECKPOINT_REFS), CLI_TEXT)
CLI_ANCHORS = st.one_of(
    st.sampled_from(tuple(Ref(f"file:{name}") for name in ORDINARY_FILES)),
    st.sampled_from(tuple(Ref(f"anchor:{name}") for name in NEVER_ENDING)),
    CLI_TEXT,
)
#: Where `verify --export-anchor` may write: relative names land in the test's folder.
CLI_OUTPUTS = st.one_of(
    st.sampled_from((Ref("file:files-dir"), Ref("file:notes.txt"), "anchor.json", "no/dir/a.json")),
    CLI_TEXT.filter(lambda text: isinstance(text, str) and not text.startswith(("/", "~"))),
)
CLI_WORKSPACES = st.sampled_from(
    (Ref("ws"), Ref("ws"), Ref("ws"), "", "missing", Ref("file:notes.txt"), "a\x00b", "\ud800")
)
CHAT_LINES = st.one_of(
    st.sampled_from(("hello", "/tree", "/usage", "/context", "/checkpoints", "/nope", "/", "")),
    st.tuples(st.sampled_from(("/checkpoint", "/rollback", "/branch")), CLI_IDS, CLI_IDS),
    CLI_TEXT,
)


def _shape(*parts: Any) -> st.SearchStrategy[list[Any]]:
    return st.tuples(*(p if isinstance(p, st.SearchStrategy) else st.just(p) for p in parts)).map(
        list
    )


CLI_SHAPES = st.one_of(
    _shape("ls", "--search", CLI_TEXT, "--limit", CLI_INTS),
    _shape("ls", "--limit", CLI_INTS),
    _shape("show", CLI_IDS),
    _shape("as-of", CLI_IDS, CLI_INTS),
    _shape("context", CLI_IDS, "--at", CLI_INTS),
    _shape("checkpoints", CLI_IDS, "--limit", CLI_INTS),
    _shape("tree"),
    _shape("verify", CLI_IDS),
    _shape("verify", "--anchor", CLI_ANCHORS),
    _shape("verify", "--export-anchor", CLI_OUTPUTS),
    _shape("replay", CLI_IDS),
    _shape(
        "replay",
        Ref("conversation"),
        "--model",
        st.sampled_from(("offline:offline", "openai:gpt-4o", "nope:x", ":", "", "gpt-4o")),
        "--base-url",
        st.sampled_from(("not a url", "\x00", "http://[::1", "ftp://x")),
    ),
    _shape("rebuild"),
    _shape("chat", "--conversation", CLI_IDS, "--system", CLI_TEXT),
    _shape(
        "chat",
        "--provider",
        st.sampled_from(("offline", "OFFLINE", "openai", "anthropic", "nope", "")),
        "--model",
        CLI_TEXT,
    ),
    # and anything at all
    st.lists(
        st.one_of(
            st.sampled_from(
                (
                    "ls",
                    "show",
                    "as-of",
                    "verify",
                    "--limit",
                    "--at",
                    "--anchor",
                    "--help",
                    "--",
                    "-",
                    "-w",
                    "--workspace",
                )
            ),
            CLI_IDS,
            CLI_INTS,
        ),
        max_size=5,
    ),
)
CLI_CALLS = st.tuples(
    CLI_SHAPES,
    st.one_of(st.just(None), CLI_WORKSPACES),
    st.lists(CHAT_LINES, max_size=4),
)


def _argument(fuzz: Fuzz, value: Any) -> str:
    resolved = fuzz.resolve(value)
    return resolved if isinstance(resolved, str) else str(resolved)


def cli_one(fuzz: Fuzz, shape: list[Any], workspace: Any, lines: list[str]) -> None:
    ctx = fuzz.ctx
    args = [_argument(fuzz, part) for part in shape]
    args += ["--workspace", _argument(fuzz, workspace if workspace is not None else Ref("ws"))]
    # What a terminal can type (a lone surrogate cannot be encoded to be read back).
    said = [_chat_line(fuzz, line) for line in lines]
    typed = "".join(f"{line}\n" for line in said if _encodable(line))
    note(f"chatledger {' '.join(short(a, 80) for a in args)}  <<< {short(typed, 200)}")
    tables, threads = dump(ctx), _threads()
    rebuilt_from = contents(ctx) if args and args[0] == "rebuild" else {}
    result = CliRunner().invoke(cli_module.app, args, input=typed)
    output = result.stdout + result.stderr
    note(f"exit {result.exit_code}: {short(output, 600)}")
    event(f"exit status {result.exit_code}")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in output, output
    assert result.exit_code in (0, 2), f"exit status {result.exit_code}: {output}"
    if result.exit_code == 2:
        error = result.stderr.lower()
        assert "error" in error or "usage" in error, f"refused, but not on stderr: {output}"
    left = [thread.name for thread in _threads() - threads]
    assert not left, f"the command left threads running: {left}"
    if args and (args[0] in READING or result.exit_code == 2):
        assert_same_dump(tables, dump(ctx), f"chatledger {args[0]} (exit {result.exit_code})")
    elif args and args[0] == "rebuild":
        # Rebuilding writes every projection again: the same rows, save for the search index's
        # own pages (how its segments are merged).
        def rows(dumped: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in dumped.items() if not k.startswith("message_search")}

        assert_same_dump(rows(rebuilt_from), rows(contents(ctx)), "chatledger rebuild")


def _chat_line(fuzz: Fuzz, line: Any) -> str:
    parts = line if isinstance(line, tuple) else (line,)
    return " ".join(_argument(fuzz, part) for part in parts)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.fixture
def cli_fuzz(fuzz: Fuzz, monkeypatch: pytest.MonkeyPatch) -> Fuzz:
    """The fuzz store for in-process commands: they open it through the environment, and
    print wide so nothing is cut."""
    monkeypatch.setenv(DATABASE_URL_VARIABLE, fuzz.ctx.store.url)
    monkeypatch.setattr(cli_module, "console", Console(width=250, no_color=True))
    return fuzz


@fuzz_settings(60)
@given(call=CLI_CALLS)
def test_any_command_line_exits_0_or_2_without_a_traceback(
    cli_fuzz: Fuzz, call: tuple[list[Any], Any, list[str]]
) -> None:
    cli_one(cli_fuzz, *call)


SUBPROCESS_CASES = [
    pytest.param(["show", "[/]"], id="markup-closing-tag"),
    pytest.param(["as-of", Ref("conversation"), "9" * 30], id="huge-position"),
    pytest.param(["show", os.fsdecode(b"\xff\xfe")], id="undecodable-argument"),
    pytest.param(["ls", "--workspace", os.fsdecode(b"/tmp/\xff-missing")], id="undecodable-path"),
]


@pytest.mark.parametrize("args", SUBPROCESS_CASES)
def test_the_installed_command_refuses_without_a_traceback(fuzz: Fuzz, args: list[Any]) -> None:
    """The real console script, with what only a real process gets: bytes that are not
    UTF-8 in its arguments (surrogate-escaped), and a terminal's stdout."""
    executable = Path(sys.executable).with_name("chatledger")
    if not executable.exists():
        pytest.skip("the chatledger console script is not installed")
    argv = [os.fsencode(_argument(fuzz, a)) for a in args]
    if "--workspace" not in args:
        argv += [b"--workspace", os.fsencode(fuzz.ctx.workspace)]
    tables = dump(fuzz.ctx)
    completed = subprocess.run(
        [os.fsencode(executable), *argv],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, DATABASE_URL_VARIABLE: fuzz.ctx.store.url, "COLUMNS": "200"},
    )
    output = (completed.stdout + completed.stderr).decode("utf-8", "replace")
    assert "Traceback" not in output, output
    assert completed.returncode in (0, 2), output
    if completed.returncode == 2:
        assert b"error" in completed.stderr.lower(), output
    assert_same_dump(tables, dump(fuzz.ctx), f"chatledger {args[0]}")
