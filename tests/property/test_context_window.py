"""Property tests of the context window policy (domain/context_window.py).

Scenarios are random sessions: SYSTEM, CONTEXT, dialog, tool and error messages, tool calls
with their results (one or two results per call, in the next positions), images, and exactly
one newest user message near the end (a few non-user messages may follow it), or rarely none.
The checks use small independent oracles (tool units by connected ids, image replacement by a
newest-first count) rather than the module's own helpers."""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.context_window import (
    TRIM_ORDER,
    ContextItem,
    ContextPlan,
    WindowConfig,
    select_context,
)
from domain.messages import Category

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CATEGORIES = tuple(Category)
ROLE_CATEGORY = {
    "system": st.sampled_from([Category.SYSTEM, Category.CONTEXT]),
    "user": st.sampled_from([Category.DIALOG, Category.DIALOG, Category.CONTEXT, Category.ERROR]),
    "assistant": st.sampled_from([Category.DIALOG, Category.DIALOG, Category.ERROR]),
    "tool": st.sampled_from(
        [Category.SYSTEM_OUTPUT, Category.SYSTEM_OUTPUT, Category.ERROR, Category.SYSTEM]
    ),
}


# -- generators --------------------------------------------------------------------------
class _Builder:
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.items: list[ContextItem] = []
        self.position = draw(st.integers(-5, 5))
        self.calls = 0

    def add(
        self,
        role: str,
        category: Category | None = None,
        tool_call_ids: tuple[str, ...] = (),
        tool_result_for: str | None = None,
    ) -> None:
        draw = self.draw
        self.position += draw(st.integers(1, 3))
        tokens = draw(st.integers(0, 300))
        images = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
        image_tokens = draw(st.integers(0, tokens)) if images else 0
        # Ids do not sort like positions, so ties and order come from positions only.
        message_id = f"{'kqazm'[self.position % 5]}{self.position}"
        self.items.append(
            ContextItem(
                message_id=message_id,
                category=category or draw(ROLE_CATEGORY[role]),
                tokens=tokens,
                position=self.position,
                role=role,
                tool_call_ids=tool_call_ids,
                tool_result_for=tool_result_for,
                image_count=images,
                image_tokens=image_tokens,
            )
        )

    def block(self, allow_user: bool) -> None:
        kind = self.draw(st.sampled_from(["plain", "plain", "tool"]))
        if kind == "tool":
            calls = []
            for _ in range(self.draw(st.integers(1, 2))):
                self.calls += 1
                calls.append(f"call{self.calls}")
            self.add("assistant", tool_call_ids=tuple(calls))
            for call in calls:
                self.add("tool", tool_result_for=call)
        else:
            roles = ["system", "assistant", "tool", *(["user"] * allow_user)]
            self.add(self.draw(st.sampled_from(roles)))


@st.composite
def sessions(draw: st.DrawFn) -> list[ContextItem]:
    builder = _Builder(draw)
    for _ in range(draw(st.integers(0, 10))):
        builder.block(allow_user=True)
    if draw(st.integers(0, 9)):  # rarely no user message at the end
        builder.add("user")
    for _ in range(draw(st.integers(0, 2))):
        builder.block(allow_user=False)
    return builder.items


budget_fractions = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {c: st.floats(0, 0.6, allow_nan=False, allow_infinity=False) for c in CATEGORIES}
    ),
)


@st.composite
def configs(draw: st.DrawFn) -> WindowConfig:
    budgets = draw(budget_fractions)
    extra = {} if budgets is None else {"budgets": budgets}
    return WindowConfig(
        context_window=draw(st.integers(1, 4000)),
        usable_share=draw(st.one_of(st.sampled_from([0.85, 1.0, 0.5]), st.floats(0.05, 1.0))),
        max_images=draw(st.integers(0, 6)),
        image_placeholder_tokens=draw(st.integers(0, 30)),
        **extra,
    )


# -- oracles -----------------------------------------------------------------------------
def age(item: ContextItem) -> tuple[int, str]:
    return (item.position, item.message_id)


def replaced_over_all(items: Sequence[ContextItem], max_images: int) -> set[str]:
    """Messages whose images the newest-first walk over every item replaces."""
    with_images = sorted((i for i in items if i.image_count), key=age, reverse=True)
    seen = 0
    for rank, item in enumerate(with_images):
        seen += item.image_count
        if seen > max_images:
            return {i.message_id for i in with_images[rank:]}
    return set()


def cost(item: ContextItem, replaced: set[str], config: WindowConfig) -> int:
    if item.message_id not in replaced:
        return item.tokens
    return item.tokens - item.image_tokens + config.image_placeholder_tokens * item.image_count


def units(items: Sequence[ContextItem]) -> list[set[str]]:
    """Messages linked by tool call ids, as connected components."""
    ids_of = {
        i.message_id: {*i.tool_call_ids, *([i.tool_result_for] if i.tool_result_for else [])}
        for i in items
    }
    left = set(ids_of)
    components: list[set[str]] = []
    while left:
        start = left.pop()
        component, call_ids, grew = {start}, set(ids_of[start]), True
        while grew:
            linked = {m for m in left if ids_of[m] & call_ids}
            grew = bool(linked)
            left -= linked
            component |= linked
            for m in linked:
                call_ids |= ids_of[m]
        components.append(component)
    return components


def newest_user(items: Sequence[ContextItem]) -> ContextItem | None:
    users = [i for i in items if i.role == "user"]
    return max(users, key=age) if users else None


def protected(items: Sequence[ContextItem]) -> set[str]:
    """Never-trimmed messages with their tool-pair partners."""
    user = newest_user(items)
    must = {i.message_id for i in items if i.category is Category.SYSTEM}
    if user is not None:
        must.add(user.message_id)
    return set().union(*(u for u in units(items) if u & must))


def kept_cost(plan: ContextPlan, items: Sequence[ContextItem], config: WindowConfig) -> int:
    by_id = {i.message_id: i for i in items}
    return sum(cost(by_id[m], set(plan.images_replaced), config) for m in plan.kept)


REASONS = {"window full", *(f"over {c.value} budget" for c in TRIM_ORDER)}
scenario = given(items=sessions(), config=configs())


# -- properties --------------------------------------------------------------------------
@PROPS
@scenario
def test_fits_exactly_when_the_never_trimmed_items_fit(
    items: list[ContextItem], config: WindowConfig
) -> None:
    plan = select_context(items, config)
    replaced = replaced_over_all(items, config.max_images)
    must = protected(items)
    required = sum(cost(i, replaced, config) for i in items if i.message_id in must)
    assert plan.fits == (required <= config.usable)
    assert plan.fits == (plan.total_tokens <= config.usable)
    assert plan.total_tokens == kept_cost(plan, items, config)
    if not plan.fits:  # everything trimmable went
        assert set(plan.kept) == must


@PROPS
@scenario
def test_system_and_newest_user_are_always_kept(
    items: list[ContextItem], config: WindowConfig
) -> None:
    plan = select_context(items, config)
    kept = set(plan.kept)
    assert {i.message_id for i in items if i.category is Category.SYSTEM} <= kept
    user = newest_user(items)
    if user is not None:
        assert user.message_id in kept


@PROPS
@scenario
def test_tool_pairs_are_kept_or_trimmed_together(
    items: list[ContextItem], config: WindowConfig
) -> None:
    plan = select_context(items, config)
    kept = set(plan.kept)
    for unit in units(items):
        assert unit <= kept or not unit & kept
    results = {i.tool_result_for: i.message_id for i in items if i.tool_result_for}
    for call in (i for i in items if i.tool_call_ids):
        for call_id in call.tool_call_ids:
            assert (call.message_id in kept) == (results[call_id] in kept)


@PROPS
@scenario
def test_nothing_is_trimmed_iff_the_items_fit_or_nothing_is_trimmable(
    items: list[ContextItem], config: WindowConfig
) -> None:
    """The rule: budgets trim only once the window is full (lending covers every deficit)."""
    plan = select_context(items, config)
    replaced = replaced_over_all(items, config.max_images)
    total = sum(cost(i, replaced, config) for i in items)
    trimmable = {i.message_id for i in items} - protected(items)
    assert (plan.trimmed == ()) == (total <= config.usable or not trimmable)
    if total <= config.usable:
        need = dict.fromkeys(Category, 0)
        for item in items:
            need[item.category] += cost(item, replaced, config)
        assert all(plan.budget[c] >= need[c] for c in Category)
        assert set(plan.images_replaced) == replaced


@PROPS
@given(items=sessions(), config=configs(), seed=st.integers(0, 2**32 - 1))
def test_same_input_in_any_order_gives_the_same_plan(
    items: list[ContextItem], config: WindowConfig, seed: int
) -> None:
    plan = select_context(items, config)
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    assert select_context(shuffled, config) == plan
    assert select_context(tuple(items), config) == plan


@PROPS
@scenario
def test_kept_and_trimmed_partition_the_items_in_send_order(
    items: list[ContextItem], config: WindowConfig
) -> None:
    plan = select_context(items, config)
    trimmed = [t.message_id for t in plan.trimmed]
    assert len(set(plan.kept)) == len(plan.kept)
    assert len(set(trimmed)) == len(trimmed)
    assert not set(plan.kept) & set(trimmed)
    assert set(plan.kept) | set(trimmed) == {i.message_id for i in items}
    by_id = {i.message_id: i for i in items}
    rank = {Category.SYSTEM: 0, Category.CONTEXT: 1}
    expected = sorted(plan.kept, key=lambda m: (rank.get(by_id[m].category, 2), age(by_id[m])))
    assert list(plan.kept) == expected
    for trim in plan.trimmed:
        assert trim.category is by_id[trim.message_id].category
        assert trim.tokens == cost(
            by_id[trim.message_id], replaced_over_all(items, config.max_images), config
        )
        reason, _, partner = trim.reason.partition(" (tool pair with ")
        assert reason in REASONS
        assert not partner or partner.removesuffix(")") in by_id


@PROPS
@scenario
def test_within_a_category_the_oldest_go_first(
    items: list[ContextItem], config: WindowConfig
) -> None:
    """A message trimmed for its own sake (not as a tool-pair partner) is newer than every kept
    message of its category, except never-trimmed ones and their partners."""
    plan = select_context(items, config)
    by_id = {i.message_id: i for i in items}
    must = protected(items)
    for trim in plan.trimmed:
        if "tool pair with" in trim.reason:
            partner = trim.reason.rsplit(" ", 1)[1].rstrip(")")
            assert any(u >= {partner, trim.message_id} for u in units(items))
            continue
        trimmed = by_id[trim.message_id]
        for kept_id in plan.kept:
            kept = by_id[kept_id]
            if kept.category is trimmed.category and age(kept) < age(trimmed):
                assert kept_id in must


@PROPS
@scenario
def test_images_beyond_the_limit_the_oldest_are_replaced(
    items: list[ContextItem], config: WindowConfig
) -> None:
    plan = select_context(items, config)
    by_id = {i.message_id: i for i in items}
    replaced = set(plan.images_replaced)
    assert replaced <= set(plan.kept)
    assert all(by_id[m].image_count for m in replaced)
    assert replaced <= replaced_over_all(items, config.max_images)
    shown = [by_id[m] for m in plan.kept if by_id[m].image_count and m not in replaced]
    assert sum(i.image_count for i in shown) <= config.max_images
    if replaced and shown:
        assert max(age(by_id[m]) for m in replaced) < min(age(i) for i in shown)
    assert list(plan.images_replaced) == sorted(plan.images_replaced, key=lambda m: age(by_id[m]))
    if plan.fits and replaced:  # the newest replaced one could not be given back
        newest = max((by_id[m] for m in replaced), key=age)
        over_count = sum(i.image_count for i in shown) + newest.image_count > config.max_images
        extra = newest.image_tokens - config.image_placeholder_tokens * newest.image_count
        assert over_count or plan.total_tokens + extra > config.usable


@PROPS
@scenario
def test_budgets_after_lending(items: list[ContextItem], config: WindowConfig) -> None:
    plan = select_context(items, config)
    replaced = replaced_over_all(items, config.max_images)
    need = dict.fromkeys(Category, 0)
    for item in items:
        need[item.category] += cost(item, replaced, config)
    shares = config.shares()
    assert set(plan.budget) == set(Category)
    assert all(plan.budget[c] >= min(need[c], shares[c]) for c in Category)
    assert sum(plan.budget.values()) <= max(config.usable, sum(shares.values()))
    # After trimming (before images are given back) every category is within its budget,
    # unless what is left of it can never be trimmed.
    must = protected(items)
    for category in TRIM_ORDER:
        left = [i for i in items if i.message_id in plan.kept and i.category is category]
        if sum(cost(i, replaced, config) for i in left) > plan.budget[category]:
            assert all(i.message_id in must for i in left)
