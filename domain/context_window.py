"""Context window policy: which messages of the current session go to the model. A pure policy.

Over 400 lines, kept whole: one policy (budgets, lending, units, trimming order, image
replacement) whose rules interlock; split, each half would need the other's internals.

Rules (docs/architecture.md §5)
-------------------------------
* The usable window is ``int(context_window * usable_share)`` (0.85 by default).
* Every category has a budget, a fraction of the usable window (defaults SYSTEM 10 %, CONTEXT
  30 %, DIALOG 40 %, SYSTEM_OUTPUT 20 %, ERROR 5 %). Categories that need less than their share
  lend the rest to categories that need more (see *Lending* below).
* Never trimmed: SYSTEM messages and the newest user message (the item with role ``user`` and
  the largest position). A tool call and its results go or stay together: an item carrying
  ``tool_call_ids`` and every item whose ``tool_result_for`` names one of those ids form one
  *unit* (closed transitively: a call with several results, or calls and results linked
  through shared ids, are one unit). A unit holding a never-trimmed item is never trimmed.
  A call without a result among the items, or a result whose call is not among them, is a
  unit of its own: the caller passes a consistent session.
* Phase 1, budgets: for each category in the order ERROR, SYSTEM_OUTPUT, DIALOG, CONTEXT,
  while the category's kept tokens exceed its budget, the oldest trimmable unit holding an
  item of that category is trimmed (reason ``"over <CATEGORY> budget"``).
* Phase 2, window: while the kept total exceeds the usable window, trimming goes on in the
  same category order, oldest first, exhausting one category before the next (reason
  ``"window full"``). When nothing trimmable is left the plan has ``fits=False``.
* A tool-pair partner trimmed along with an item gets that item's reason followed by
  ``" (tool pair with <id>)"``; its ``category`` is its own.
* Age is ``(position, message_id)``: positions order the conversation, and the id breaks ties,
  so the plan never depends on the order the items were passed in.
* Send order: kept SYSTEM messages, then kept CONTEXT messages, then the rest, each group by
  age. The newest user message is last when it is the newest item; messages after it (say a
  tool call and its result within the current turn) keep their place after it, as providers
  need a tool result right after its call.

Nothing-trimmed rule
--------------------
Nothing is trimmed if and only if the items, counted after image replacement, fit the usable
window, or nothing is trimmable. Budgets alone never trim a selection that fits: lending hands
every category that needs more than its share exactly what it lacks whenever the total fits
(the pool below is then at least the sum of the deficits). Budgets decide *what* goes only
once the window is actually full.

Lending
-------
Deterministic, on the items' token counts after image replacement (``need``):

1. ``share[c] = floor(usable * fraction[c])`` (with a 1e-9 tolerance, so 100 * 0.29 is 29).
2. ``own[c] = min(need[c], share[c])``; the deficit of ``c`` is ``need[c] - own[c]``.
3. ``pool = max(0, usable - sum(own))``: the part of the usable window that the categories'
   own needs leave free. It is the unused share of the categories that need less, plus any
   share no category was given (fractions summing to less than 1), and never more than the
   window (fractions may sum to more than 1: the defaults sum to 1.05).
4. Borrowers are served in the order SYSTEM, CONTEXT, DIALOG, SYSTEM_OUTPUT, ERROR (the
   reverse of the trim order, SYSTEM first because it cannot be trimmed anyway); each gets
   ``min(deficit, what is left of the pool)``.
5. The loans come first out of the unassigned share, then out of the lenders' unused shares in
   the order ERROR, SYSTEM_OUTPUT, DIALOG, CONTEXT, SYSTEM. The reported budget of a category is
   ``share + borrowed - lent``; a lender's budget never drops below its need, and a category
   nobody borrows from keeps its full share.

Images
------
Image parts are replaced per message. Walking the items newest first, image counts add up
until a message would bring the count over ``max_images``: that message and every older one with
images have their images replaced by placeholders (``tokens - image_tokens +
image_placeholder_tokens * image_count``). This is decided on all the items before trimming,
so trimming works on the tokens that will really be sent. Trimming may then drop messages
with images; so, if the plan fits, replaced kept messages are restored newest first while the
kept set stays within ``max_images`` unreplaced images and the total within the window.
Restoring stops at the first message that cannot be restored, so the replaced messages are
always the oldest of the kept messages with images. Budgets are not re-checked on restoring:
they chose what to trim, and by the nothing-trimmed rule any kept set that fits the window is
within budgets lent anew for it. When nothing is trimmed, nothing is restored either: the
replaced messages are exactly those the walk over all items chose.

Complexity: one sort, O(n log n); everything else is linear (union-find for tool pairs,
one cursor per category for trimming).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from domain.errors import InvalidInput
from domain.messages import Category

ROLES = frozenset({"system", "user", "assistant", "tool"})

#: Over-budget categories are trimmed in this order (SYSTEM never is).
TRIM_ORDER: tuple[Category, ...] = (
    Category.ERROR,
    Category.SYSTEM_OUTPUT,
    Category.DIALOG,
    Category.CONTEXT,
)
#: Categories that need more than their share borrow in this order.
BORROW_ORDER: tuple[Category, ...] = (Category.SYSTEM, *reversed(TRIM_ORDER))
#: Loans are taken from the unused shares of the categories in this order.
LEND_ORDER: tuple[Category, ...] = (*TRIM_ORDER, Category.SYSTEM)

DEFAULT_BUDGETS: Mapping[Category, float] = MappingProxyType(
    {
        Category.SYSTEM: 0.10,
        Category.CONTEXT: 0.30,
        Category.DIALOG: 0.40,
        Category.SYSTEM_OUTPUT: 0.20,
        Category.ERROR: 0.05,
    }
)

# Binary fractions: 100 * 0.29 is 28.999999999999996, whose share is 29 tokens, not 28.
_SHARE_TOLERANCE = 1e-9


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _category(value: object, what: str) -> Category:
    try:
        return Category(str(value))
    except ValueError:
        names = ", ".join(c.value for c in Category)
        raise InvalidInput(f"{what} must be one of {names}, got {value!r}") from None


@dataclass(frozen=True)
class ContextItem:
    """One candidate message, as the window policy sees it."""

    message_id: str
    category: Category
    #: Tokens of the whole message, per-message overhead and images included.
    tokens: int
    #: Order in the conversation; larger is newer.
    position: int
    role: str
    #: Tool call ids this message makes (an assistant tool call).
    tool_call_ids: tuple[str, ...] = ()
    #: The tool call id this message answers (a tool result).
    tool_result_for: str | None = None
    image_count: int = 0
    #: Tokens of this message's images, included in `tokens`.
    image_tokens: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.message_id, str) or not self.message_id:
            raise InvalidInput(f"message_id must be a non-empty string, got {self.message_id!r}")
        object.__setattr__(
            self, "category", _category(self.category, f"category of {self.message_id}")
        )
        if self.role not in ROLES:
            raise InvalidInput(
                f"role of {self.message_id} must be one of {', '.join(sorted(ROLES))}, "
                f"got {self.role!r}"
            )
        for name in ("tokens", "image_count", "image_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise InvalidInput(
                    f"{name} of {self.message_id} must be a non-negative integer, got {value!r}"
                )
        if not _is_int(self.position):
            raise InvalidInput(
                f"position of {self.message_id} must be an integer, got {self.position!r}"
            )
        if self.image_tokens > self.tokens:
            raise InvalidInput(
                f"image_tokens of {self.message_id} ({self.image_tokens}) exceed its tokens "
                f"({self.tokens}); tokens must include the images"
            )
        object.__setattr__(self, "tool_call_ids", tuple(self.tool_call_ids))


@dataclass(frozen=True)
class WindowConfig:
    """The model's window and how it is shared out. Invalid values raise `InvalidInput`.

    `budgets` holds fractions of the usable window; categories it leaves out keep their default
    fraction. Fractions need not sum to 1."""

    context_window: int
    usable_share: float = 0.85
    budgets: dict[Category, float] = field(
        default_factory=lambda: dict(DEFAULT_BUDGETS), hash=False
    )
    max_images: int = 5
    #: Tokens of the text placeholder that replaces one image.
    image_placeholder_tokens: int = 10

    def __post_init__(self) -> None:
        if not _is_int(self.context_window) or self.context_window <= 0:
            raise InvalidInput(
                f"context_window must be a positive number of tokens, got {self.context_window!r}"
            )
        share = self.usable_share
        if not _is_real(share) or not math.isfinite(share) or not 0 < share <= 1:
            raise InvalidInput(
                f"usable_share must be a fraction in (0, 1] of the context window, got {share!r}"
            )
        if not isinstance(self.budgets, Mapping):
            raise InvalidInput(
                f"budgets must map categories to fractions, got {type(self.budgets).__name__}"
            )
        budgets = dict(DEFAULT_BUDGETS)
        for key, fraction in self.budgets.items():
            category = _category(key, "budget category")
            if not _is_real(fraction) or not math.isfinite(fraction) or fraction < 0:
                raise InvalidInput(
                    f"budget of {category.value} must be a non-negative fraction of the "
                    f"usable window, got {fraction!r}"
                )
            budgets[category] = float(fraction)
        object.__setattr__(self, "budgets", {c: budgets[c] for c in Category})
        if not _is_int(self.max_images) or self.max_images < 0:
            raise InvalidInput(
                f"max_images must be a non-negative integer, got {self.max_images!r}"
            )
        if not _is_int(self.image_placeholder_tokens) or self.image_placeholder_tokens < 0:
            raise InvalidInput(
                "image_placeholder_tokens must be a non-negative integer, "
                f"got {self.image_placeholder_tokens!r}"
            )

    @property
    def usable(self) -> int:
        """Tokens the request may use: the share of the window left after the reply's room."""
        return int(self.context_window * self.usable_share)

    def shares(self) -> dict[Category, int]:
        """Each category's own budget in tokens, before lending."""
        usable = self.usable
        return {c: math.floor(usable * self.budgets[c] + _SHARE_TOLERANCE) for c in Category}


@dataclass(frozen=True)
class Trim:
    """A message left out of the request, and why."""

    message_id: str
    category: Category
    #: Tokens it would have cost (after image replacement).
    tokens: int
    reason: str


@dataclass(frozen=True)
class ContextPlan:
    #: Message ids in the order to send: SYSTEM, then CONTEXT, then the rest by position.
    kept: tuple[str, ...]
    #: In the order they were trimmed.
    trimmed: tuple[Trim, ...]
    #: Kept messages whose image parts are replaced by a placeholder, oldest first.
    images_replaced: tuple[str, ...]
    #: Tokens of the kept messages, after image replacement.
    total_tokens: int
    #: False when even with everything trimmable trimmed the kept set exceeds the window.
    fits: bool
    #: Per-category budgets in tokens, after lending.
    budget: dict[Category, int] = field(hash=False)


# -- helpers -----------------------------------------------------------------------------
def _ordered(items: Sequence[ContextItem]) -> list[ContextItem]:
    """The items oldest first, by (position, message_id); duplicate ids are refused."""
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, ContextItem):
            raise InvalidInput(f"context items must be ContextItem, got {type(item).__name__}")
        if item.message_id in seen:
            raise InvalidInput(f"message id {item.message_id} appears twice among the items")
        seen.add(item.message_id)
    return sorted(items, key=lambda item: (item.position, item.message_id))


def _replaced_images(order: Sequence[ContextItem], max_images: int) -> list[bool]:
    """Per item (oldest first): are its images replaced, counting newest first?"""
    replaced = [False] * len(order)
    count = 0
    cut = False
    for index in range(len(order) - 1, -1, -1):
        images = order[index].image_count
        if images == 0:
            continue
        if cut or count + images > max_images:
            cut = True
            replaced[index] = True
        else:
            count += images
    return replaced


def _cost(item: ContextItem, replaced: bool, placeholder_tokens: int) -> int:
    if not replaced:
        return item.tokens
    return item.tokens - item.image_tokens + placeholder_tokens * item.image_count


def _tool_units(order: Sequence[ContextItem]) -> tuple[list[int], list[list[int]]]:
    """Union-find over tool call ids: unit number per item, and each unit's items, in order."""
    parent = list(range(len(order)))

    def find(index: int) -> int:
        root = index
        while parent[root] != root:
            root = parent[root]
        while parent[index] != root:
            parent[index], index = root, parent[index]
        return root

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_with_id: dict[str, int] = {}
    for index, item in enumerate(order):
        ids = item.tool_call_ids
        if item.tool_result_for is not None:
            ids = (*ids, item.tool_result_for)
        for call_id in ids:
            other = first_with_id.setdefault(call_id, index)
            union(other, index)

    unit_number: dict[int, int] = {}
    unit_of: list[int] = []
    members: list[list[int]] = []
    for index in range(len(order)):
        root = find(index)
        if root not in unit_number:
            unit_number[root] = len(members)
            members.append([])
        unit_of.append(unit_number[root])
        members[unit_number[root]].append(index)
    return unit_of, members


def _lend(need: Mapping[Category, int], config: WindowConfig) -> dict[Category, int]:
    """Per-category budgets after lending (algorithm in the module docstring)."""
    usable = config.usable
    share = config.shares()
    own = {c: min(need[c], share[c]) for c in Category}
    pool = max(0, usable - sum(own.values()))
    borrowed = dict.fromkeys(Category, 0)
    for category in BORROW_ORDER:
        loan = min(need[category] - own[category], pool)
        borrowed[category] = loan
        pool -= loan
    to_repay = sum(borrowed.values()) - max(0, usable - sum(share.values()))
    lent = dict.fromkeys(Category, 0)
    for category in LEND_ORDER:
        if to_repay <= 0:
            break
        give = min(share[category] - own[category], to_repay)
        lent[category] = give
        to_repay -= give
    return {c: share[c] + borrowed[c] - lent[c] for c in Category}


def _newest_user(order: Sequence[ContextItem]) -> int | None:
    for index in range(len(order) - 1, -1, -1):
        if order[index].role == "user":
            return index
    return None


# -- the policy --------------------------------------------------------------------------
def fits_system(items: Sequence[ContextItem], config: WindowConfig) -> bool:
    """Can the window hold the SYSTEM messages at all?

    True when the SYSTEM items' tokens, counted after image replacement exactly as
    `select_context` counts them, are at most the usable window. When False no trimming and
    no new session can help (a new session carries the SYSTEM messages), so the caller raises
    a typed error."""
    order = _ordered(items)
    replaced = _replaced_images(order, config.max_images)
    system_tokens = sum(
        _cost(item, replaced[index], config.image_placeholder_tokens)
        for index, item in enumerate(order)
        if item.category is Category.SYSTEM
    )
    return system_tokens <= config.usable


def select_context(items: Sequence[ContextItem], config: WindowConfig) -> ContextPlan:
    """Which of the candidate `items` to send, in which order (rules in the module docstring)."""
    order = _ordered(items)
    count = len(order)
    usable = config.usable
    placeholder = config.image_placeholder_tokens

    replaced = _replaced_images(order, config.max_images)
    cost = [_cost(item, replaced[i], placeholder) for i, item in enumerate(order)]
    unit_of, members = _tool_units(order)

    protected = [False] * len(members)
    newest_user = _newest_user(order)
    if newest_user is not None:
        protected[unit_of[newest_user]] = True
    for index, item in enumerate(order):
        if item.category is Category.SYSTEM:
            protected[unit_of[index]] = True

    kept_tokens = dict.fromkeys(Category, 0)
    for index, item in enumerate(order):
        kept_tokens[item.category] += cost[index]
    budget = _lend(kept_tokens, config)
    total = sum(kept_tokens.values())

    unit_kept = [True] * len(members)
    by_category: dict[Category, list[int]] = {c: [] for c in TRIM_ORDER}
    for index, item in enumerate(order):
        if item.category in by_category:
            by_category[item.category].append(index)
    cursor = dict.fromkeys(TRIM_ORDER, 0)
    trims: list[Trim] = []

    def oldest_trimmable(category: Category) -> int | None:
        candidates = by_category[category]
        at = cursor[category]
        while at < len(candidates) and (
            protected[unit_of[candidates[at]]] or not unit_kept[unit_of[candidates[at]]]
        ):
            at += 1
        cursor[category] = at
        return candidates[at] if at < len(candidates) else None

    def trim(index: int, reason: str) -> int:
        """Trim the unit of `index`; return the tokens it freed."""
        unit = unit_of[index]
        unit_kept[unit] = False
        freed = 0
        trigger = order[index].message_id
        for member in [index, *(m for m in members[unit] if m != index)]:
            item = order[member]
            kept_tokens[item.category] -= cost[member]
            freed += cost[member]
            why = reason if member == index else f"{reason} (tool pair with {trigger})"
            trims.append(Trim(item.message_id, item.category, cost[member], why))
        return freed

    for category in TRIM_ORDER:  # phase 1: budgets
        while kept_tokens[category] > budget[category]:
            victim = oldest_trimmable(category)
            if victim is None:
                break
            total -= trim(victim, f"over {category.value} budget")
    for category in TRIM_ORDER:  # phase 2: the window
        while total > usable:
            victim = oldest_trimmable(category)
            if victim is None:
                break
            total -= trim(victim, "window full")
    fits = total <= usable

    def is_kept(index: int) -> bool:
        return unit_kept[unit_of[index]]

    if fits:  # give images back, newest first, while the limits hold
        images = sum(order[i].image_count for i in range(count) if is_kept(i) and not replaced[i])
        for index in range(count - 1, -1, -1):
            if not (replaced[index] and is_kept(index)):
                continue
            item = order[index]
            extra = item.image_tokens - placeholder * item.image_count
            if images + item.image_count > config.max_images:
                break
            if total + extra > usable:
                break
            replaced[index] = False
            images += item.image_count
            total += extra

    kept = [i for i in range(count) if is_kept(i)]
    first = (Category.SYSTEM, Category.CONTEXT)
    send_order = [
        *(i for i in kept if order[i].category is Category.SYSTEM),
        *(i for i in kept if order[i].category is Category.CONTEXT),
        *(i for i in kept if order[i].category not in first),
    ]
    return ContextPlan(
        kept=tuple(order[i].message_id for i in send_order),
        trimmed=tuple(trims),
        images_replaced=tuple(order[i].message_id for i in kept if replaced[i]),
        total_tokens=total,
        fits=fits,
        budget=budget,
    )
