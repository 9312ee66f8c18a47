"""The context window policy, one small story per rule (docs/architecture.md §5)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from domain.context_window import (
    DEFAULT_BUDGETS,
    ContextItem,
    Trim,
    WindowConfig,
    fits_system,
    select_context,
)
from domain.errors import InvalidInput
from domain.messages import Category
from tests.unit.context_items import C, D, E, S, T, item, window


def user(message_id: str, tokens: int, position: int) -> ContextItem:
    return item(message_id, D, tokens, position, role="user")


# -- configuration -------------------------------------------------------------------------
def test_usable_window_is_85_percent_and_budgets_default_to_design_shares() -> None:
    config = WindowConfig(context_window=128_000)
    assert config.usable == 108_800
    assert WindowConfig(context_window=1000).usable == 850
    assert config.budgets == {S: 0.10, C: 0.30, D: 0.40, T: 0.20, E: 0.05}
    assert dict(DEFAULT_BUDGETS) == config.budgets
    assert WindowConfig(1000).shares() == {S: 85, C: 255, D: 340, T: 170, E: 42}


def test_budgets_left_out_keep_their_default_and_names_are_accepted() -> None:
    config = WindowConfig(1000, budgets={D: 0.5, "ERROR": 0.0})  # type: ignore[dict-item]
    assert config.budgets == {S: 0.10, C: 0.30, D: 0.5, T: 0.20, E: 0.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context_window": 0}, "context_window must be a positive"),
        ({"context_window": -5}, "context_window must be a positive"),
        ({"context_window": 1.5}, "context_window must be a positive"),
        ({"context_window": True}, "context_window must be a positive"),
        ({"context_window": 100, "usable_share": 0}, "usable_share must be a fraction in (0, 1]"),
        ({"context_window": 100, "usable_share": 1.2}, "usable_share must be a fraction"),
        ({"context_window": 100, "usable_share": math.nan}, "usable_share must be a fraction"),
        ({"context_window": 100, "budgets": {D: -0.1}}, "budget of DIALOG must be a non-neg"),
        ({"context_window": 100, "budgets": {D: math.inf}}, "budget of DIALOG must be a non-neg"),
        ({"context_window": 100, "budgets": {"CHAT": 0.1}}, "budget category must be one of"),
        ({"context_window": 100, "budgets": [0.1]}, "budgets must map categories"),
        ({"context_window": 100, "max_images": -1}, "max_images must be a non-negative"),
        (
            {"context_window": 100, "image_placeholder_tokens": -1},
            "image_placeholder_tokens must be a non-negative",
        ),
    ],
)
def test_invalid_configuration_is_refused_with_a_clear_message(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        WindowConfig(**kwargs)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tokens": -1}, "tokens of m1 must be a non-negative integer"),
        ({"image_count": -1}, "image_count of m1 must be a non-negative integer"),
        ({"image_tokens": 20, "image_count": 1}, "image_tokens of m1 (20) exceed its tokens (10)"),
        ({"role": "robot"}, "role of m1 must be one of"),
        ({"category": "CHAT"}, "category of m1 must be one of"),
    ],
)
def test_invalid_items_are_refused(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "message_id": "m1",
        "category": D,
        "tokens": 10,
        "position": 1,
        "role": "user",
    }
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        ContextItem(**(fields | kwargs))


def test_duplicate_message_ids_are_refused() -> None:
    with pytest.raises(InvalidInput, match="m1 appears twice"):
        select_context([user("m1", 5, 1), item("m1", D, 5, 2)], window(100))


# -- lending and the nothing-trimmed rule ---------------------------------------------------
def test_a_session_that_fits_loses_nothing_even_when_dialog_exceeds_its_share() -> None:
    # Usable 850: DIALOG's own share is 340, but it needs 700. The others need less, so they
    # lend: DIALOG borrows 360, taken from ERROR (42), SYSTEM_OUTPUT (170), then CONTEXT (148).
    items = [
        item("sys", S, 50, 0),
        item("a1", D, 300, 1),
        item("a2", D, 300, 2),
        user("u", 100, 3),
    ]
    plan = select_context(items, WindowConfig(context_window=1000))
    assert plan.trimmed == ()
    assert plan.kept == ("sys", "a1", "a2", "u")
    assert plan.total_tokens == 750
    assert plan.fits
    assert plan.budget == {S: 85, C: 107, D: 700, T: 0, E: 0}


def test_categories_nobody_borrows_from_keep_their_whole_share() -> None:
    plan = select_context([item("sys", S, 10, 0), user("u", 10, 1)], window(100))
    assert plan.budget == {S: 10, C: 30, D: 40, T: 20, E: 5}


def test_an_empty_session_is_an_empty_plan() -> None:
    plan = select_context([], window(100))
    assert (plan.kept, plan.trimmed, plan.total_tokens, plan.fits) == ((), (), 0, True)


# -- trimming by budget ---------------------------------------------------------------------
def test_over_budget_errors_go_first_and_oldest_first() -> None:
    # Usable 100, shares S 10, C 30, D 40, T 20, E 5. Needs: S 10, D 70, E 40 = 120 > 100.
    # The free 45 tokens go to DIALOG first (30), ERROR gets the last 15: budget 20.
    items = [
        item("sys", S, 10, 0),
        item("e1", E, 20, 1),
        item("d1", D, 30, 2),
        item("e2", E, 20, 3),
        item("d2", D, 30, 4),
        user("u", 10, 5),
    ]
    plan = select_context(items, window(100))
    assert plan.budget[E] == 20
    assert plan.budget[D] == 70
    assert plan.trimmed == (Trim("e1", E, 20, "over ERROR budget"),)
    assert plan.kept == ("sys", "d1", "e2", "d2", "u")
    assert plan.total_tokens == 100


def test_categories_are_trimmed_in_order_error_output_dialog_context() -> None:
    # Usable 100; every category needs more than its share (C 40 > 30, D 60 > 40, T 30 > 20,
    # E 10 > 5). The 5 free tokens of the window all go to CONTEXT, the first borrower; they
    # come out of SYSTEM's unused share, the only one there is.
    items = [
        item("c1", C, 40, 0),
        item("d1", D, 50, 1),
        item("o1", T, 30, 2),
        item("e1", E, 10, 3),
        user("u", 10, 4),
    ]
    plan = select_context(items, window(100))
    assert plan.budget == {S: 5, C: 35, D: 40, T: 20, E: 5}
    assert [t.message_id for t in plan.trimmed] == ["e1", "o1", "d1", "c1"]
    assert [t.reason for t in plan.trimmed] == [
        "over ERROR budget",
        "over SYSTEM_OUTPUT budget",
        "over DIALOG budget",
        "over CONTEXT budget",
    ]
    assert plan.kept == ("u",)


# -- trimming for the window ----------------------------------------------------------------
def test_when_budgets_allow_everything_the_window_still_trims_in_category_order() -> None:
    # Every category may use the whole window, so no budget is exceeded; 120 > 100 still.
    config = window(100, budgets=dict.fromkeys(Category, 1.0))
    items = [
        item("sys", S, 10, 0),
        item("d1", D, 30, 1),
        item("e1", E, 10, 2),
        item("o1", T, 30, 3),
        user("u", 40, 4),
    ]
    plan = select_context(items, config)
    assert plan.trimmed == (
        Trim("e1", E, 10, "window full"),
        Trim("o1", T, 30, "window full"),
    )
    assert plan.kept == ("sys", "d1", "u")  # the older dialog stays: its category is later
    assert plan.total_tokens == 80
    assert plan.fits


# -- never trimmed --------------------------------------------------------------------------
def test_system_and_the_newest_user_message_stay_even_when_they_do_not_fit() -> None:
    items = [item("sys", S, 60, 0), user("old", 10, 1), user("new", 50, 2)]
    plan = select_context(items, window(100))
    assert plan.kept == ("sys", "new")
    assert [t.message_id for t in plan.trimmed] == ["old"]
    assert plan.total_tokens == 110
    assert not plan.fits
    assert fits_system(items, window(100))


def test_a_window_too_small_for_the_system_messages_is_detectable() -> None:
    items = [item("sys1", S, 70, 0), item("sys2", S, 40, 1), user("u", 1, 2)]
    assert not fits_system(items, window(100))
    assert fits_system(items, window(110))
    assert not select_context(items, window(100)).fits


def test_the_newest_user_message_need_not_be_the_last_item() -> None:
    items = [
        user("u", 30, 1),
        item("call", D, 30, 2, tool_call_ids=("c1",)),
        item("result", T, 30, 3, role="tool", tool_result_for="c1"),
    ]
    plan = select_context(items, window(70, budgets=dict.fromkeys(Category, 1.0)))
    assert plan.kept == ("u",)
    assert plan.fits


# -- tool pairs -----------------------------------------------------------------------------
def test_a_tool_call_and_its_result_are_trimmed_together() -> None:
    # SYSTEM_OUTPUT needs 50 but gets 40 (share 20 + 20 lent): the result goes, and its call,
    # a DIALOG message, goes with it.
    items = [
        item("sys", S, 10, 0),
        item("call", D, 10, 1, tool_call_ids=("c1",)),
        item("result", T, 50, 2, role="tool", tool_result_for="c1"),
        item("a", D, 20, 3),
        user("u", 20, 4),
    ]
    plan = select_context(items, window(100))
    assert plan.budget[T] == 40
    assert plan.trimmed == (
        Trim("result", T, 50, "over SYSTEM_OUTPUT budget"),
        Trim("call", D, 10, "over SYSTEM_OUTPUT budget (tool pair with result)"),
    )
    assert plan.kept == ("sys", "a", "u")


def test_a_call_with_two_results_is_one_unit() -> None:
    config = window(100, budgets=dict.fromkeys(Category, 1.0))
    items = [
        item("call", D, 20, 1, tool_call_ids=("c1", "c2")),
        item("r1", T, 20, 2, role="tool", tool_result_for="c1"),
        item("r2", T, 20, 3, role="tool", tool_result_for="c2"),
        item("err", E, 10, 4),
        user("u", 40, 5),
    ]
    plan = select_context(items, config)  # 110 tokens: trimming the error is enough
    assert [t.message_id for t in plan.trimmed] == ["err"]
    plan = select_context(items, window(90, budgets=dict.fromkeys(Category, 1.0)))
    # 100 > 90: the oldest tool output goes, and takes its call and the other result along.
    assert [t.message_id for t in plan.trimmed] == ["err", "r1", "call", "r2"]
    assert plan.kept == ("u",)


def test_a_tool_pair_holding_a_system_message_is_never_trimmed() -> None:
    items = [
        item("call", D, 40, 1, tool_call_ids=("c1",)),
        item("result", S, 10, 2, role="tool", tool_result_for="c1"),
        item("a", D, 40, 3),
        user("u", 30, 4),
    ]
    plan = select_context(items, window(100))
    assert plan.kept == ("result", "call", "u")
    assert [t.message_id for t in plan.trimmed] == ["a"]  # newer, but "call" cannot go


# -- order ------------------------------------------------------------------------------------
def test_sent_order_is_system_then_context_then_the_rest_by_position() -> None:
    items = [
        item("a1", D, 1, 1),
        item("ctx1", C, 1, 2),
        item("sys1", S, 1, 3),
        item("o1", T, 1, 4),
        item("ctx0", C, 1, 0),
        item("sys0", S, 1, -1),
        user("u", 1, 9),
    ]
    random.Random(7).shuffle(items)
    plan = select_context(items, window(100))
    assert plan.kept == ("sys0", "sys1", "ctx0", "ctx1", "a1", "o1", "u")


def test_the_plan_does_not_depend_on_the_order_items_are_passed_in() -> None:
    items = [item(f"m{i}", [C, D, T, E][i % 4], 7 + i % 5, i // 2) for i in range(40)]
    items.append(user("u", 5, 100))
    config = window(120)
    plan = select_context(items, config)
    for seed in range(5):
        shuffled = list(items)
        random.Random(seed).shuffle(shuffled)
        assert select_context(shuffled, config) == plan


# -- images ---------------------------------------------------------------------------------
def test_beyond_the_image_limit_the_oldest_images_become_placeholders() -> None:
    items = [
        item("img1", D, 120, 1, role="user", image_count=1, image_tokens=100),
        item("img2", D, 120, 2, role="user", image_count=1, image_tokens=100),
        item("img3", D, 120, 3, role="user", image_count=1, image_tokens=100),
        user("u", 10, 4),
    ]
    plan = select_context(items, WindowConfig(10_000, max_images=2, image_placeholder_tokens=10))
    assert plan.images_replaced == ("img1",)
    assert plan.total_tokens == 370 - 100 + 10
    assert plan.trimmed == ()


def test_a_message_whose_images_would_cross_the_limit_is_replaced_whole() -> None:
    items = [
        item("old", D, 60, 1, role="user", image_count=1, image_tokens=50),
        item("pair", D, 110, 2, role="user", image_count=2, image_tokens=100),
        item("new", D, 60, 3, role="user", image_count=1, image_tokens=50),
    ]
    plan = select_context(items, WindowConfig(10_000, max_images=2, image_placeholder_tokens=5))
    # "pair" would make 3 images, so it and everything older is replaced.
    assert plan.images_replaced == ("old", "pair")
    assert plan.total_tokens == 230 - 150 + 3 * 5


def test_images_are_given_back_when_trimming_drops_a_newer_image() -> None:
    # With one image allowed, the error's image (newer) wins and the dialog's is replaced;
    # then the error is trimmed, so the dialog's image comes back.
    items = [
        item("sys", S, 10, 0),
        item("d1", D, 200, 1, image_count=1, image_tokens=100),
        item("e1", E, 950, 2, image_count=1, image_tokens=100),
        user("u", 10, 3),
    ]
    plan = select_context(items, window(1000, max_images=1, image_placeholder_tokens=10))
    assert plan.trimmed == (Trim("e1", E, 950, "over ERROR budget"),)
    assert plan.images_replaced == ()
    assert plan.total_tokens == 220


def test_no_images_allowed_replaces_them_all() -> None:
    items = [item("u", D, 100, 1, role="user", image_count=2, image_tokens=80)]
    plan = select_context(items, window(1000, max_images=0, image_placeholder_tokens=10))
    assert plan.images_replaced == ("u",)
    assert plan.total_tokens == 40


# -- complexity -----------------------------------------------------------------------------
def test_a_large_session_with_tool_pairs_is_planned_within_the_window() -> None:
    # How fast this is belongs to scripts/bench_context.py, not to a timed assertion here.
    rng = random.Random(1)
    items = []
    for i in range(60_000):
        if i % 10 == 3:
            items.append(item(f"c{i}", D, 20, i, tool_call_ids=(f"k{i}",)))
        elif i % 10 == 4:
            items.append(item(f"r{i}", T, rng.randint(1, 400), i, tool_result_for=f"k{i - 1}"))
        else:
            items.append(item(f"m{i}", rng.choice([C, D, E]), rng.randint(1, 200), i))
    items.append(user("u", 10, 10**6))
    plan = select_context(items, WindowConfig(200_000))
    assert plan.fits
    assert plan.total_tokens <= 170_000
