"""More stories of the context window policy (docs/architecture.md §5,
domain/context_window.py): windows filled exactly, images given back after trimming and where
that stops, the SYSTEM check with images, exact budgets after lending, tool exchanges tied by
reused ids, and the exact messages of refused input."""

from __future__ import annotations

from typing import Any

import pytest

from domain.context_window import (
    ContextItem,
    Trim,
    WindowConfig,
    fits_system,
    select_context,
)
from domain.errors import InvalidInput
from domain.messages import Category
from tests.unit.context_items import C, D, E, S, T, item, window


# -- defaults ------------------------------------------------------------------------------------
def test_five_images_are_shown_and_a_placeholder_costs_ten_tokens_by_default() -> None:
    config = WindowConfig(context_window=100_000)
    assert (config.max_images, config.image_placeholder_tokens, config.usable_share) == (
        5,
        10,
        0.85,
    )
    pictures = [item(f"p{i}", D, 110, i, image_count=1, image_tokens=100) for i in range(6)]
    plan = select_context(pictures, config)
    assert plan.images_replaced == ("p0",)
    assert plan.total_tokens == 6 * 110 - 100 + 10


def test_shares_forgive_float_noise_but_not_a_real_shortfall() -> None:
    # 100 * 0.29 is 28.999999999999996: a 29-token share. 100 * 0.2899999999 really is less.
    assert window(100, budgets={D: 0.29}).shares()[D] == 29
    assert window(100, budgets={D: 0.2899999999}).shares()[D] == 28
    assert window(1000, budgets={D: 0.0005}).shares()[D] == 0


# -- a window filled exactly -------------------------------------------------------------------
def test_a_session_that_fills_the_window_exactly_loses_nothing() -> None:
    # Usable 100; SYSTEM, CONTEXT, DIALOG and ERROR each need exactly their share.
    items = [
        item("sys", S, 10, 0),
        item("ctx", C, 30, 1),
        item("a1", D, 30, 2),
        item("u", D, 10, 3, role="user"),
        item("out", T, 15, 4),
        item("err", E, 5, 5),
    ]
    plan = select_context(items, window(100))
    assert plan.trimmed == ()
    assert (plan.total_tokens, plan.fits) == (100, True)
    assert plan.budget == {S: 10, C: 30, D: 40, T: 20, E: 5}
    assert fits_system(items, window(10))
    assert not fits_system(items, window(9))


def test_one_token_over_the_window_trims() -> None:
    items = [item("sys", S, 10, 0), item("a1", D, 80, 1), item("u", D, 11, 2, role="user")]
    plan = select_context(items, window(100))
    assert [t.message_id for t in plan.trimmed] == ["a1"]
    assert (plan.total_tokens, plan.fits) == (21, True)
    exact = select_context(items, window(101))
    assert (exact.trimmed, exact.total_tokens) == ((), 101)


# -- images given back after trimming ------------------------------------------------------------
def image_session() -> list[ContextItem]:
    """Three images allowed. Newest first: the user's 1 image, the error's 3 (over the limit),
    so the error's, b's 2 and a's 1 are replaced; then the error is trimmed."""
    return [
        item("a", D, 60, 1, image_count=1, image_tokens=50),  # replaced: 20
        item("b", D, 120, 2, image_count=2, image_tokens=100),  # replaced: 40
        item("e", E, 900, 3, image_count=3, image_tokens=300),  # replaced: 630
        item("u", D, 30, 4, role="user", image_count=1, image_tokens=20),
    ]


def test_images_come_back_newest_first_up_to_the_image_limit() -> None:
    plan = select_context(image_session(), window(500, max_images=3, image_placeholder_tokens=10))
    assert plan.trimmed == (Trim("e", E, 630, "over ERROR budget"),)
    # u shows 1 image; b's 2 come back (3 in all); a's 1 more would make 4: a stays replaced.
    assert plan.images_replaced == ("a",)
    assert plan.total_tokens == 20 + 120 + 30
    assert plan.kept == ("a", "b", "u")


def test_every_replaced_image_comes_back_when_the_limits_allow() -> None:
    # Four images allowed: the user's 1 and the error's 3; b and a are replaced. Once the
    # error is trimmed, b's 2 and a's 1 both come back (4 in all).
    plan = select_context(image_session(), window(500, max_images=4, image_placeholder_tokens=10))
    assert plan.trimmed == (Trim("e", E, 900, "over ERROR budget"),)
    assert (plan.images_replaced, plan.total_tokens) == ((), 60 + 120 + 30)


def test_an_image_comes_back_when_it_fills_the_window_exactly() -> None:
    plan = select_context(image_session(), window(170, max_images=3, image_placeholder_tokens=10))
    assert (plan.images_replaced, plan.total_tokens) == (("a",), 170)


def test_images_stay_replaced_when_giving_them_back_would_overflow_the_window() -> None:
    plan = select_context(image_session(), window(169, max_images=3, image_placeholder_tokens=10))
    assert (plan.images_replaced, plan.total_tokens, plan.fits) == (("a", "b"), 90, True)


def test_when_the_plan_does_not_fit_no_image_comes_back() -> None:
    items = [
        item("sys", S, 200, 0),
        item("d", D, 120, 1, image_count=2, image_tokens=100),
        item("e", E, 50, 2, image_count=1, image_tokens=40),
        item("u", D, 10, 3, role="user"),
    ]
    plan = select_context(items, window(100, max_images=1, image_placeholder_tokens=5))
    assert not plan.fits
    assert plan.kept == ("sys", "u")
    assert plan.images_replaced == ()
    assert plan.total_tokens == 210


# -- which images are replaced -------------------------------------------------------------------
def test_exactly_the_image_limit_replaces_nothing() -> None:
    items = [
        item("p1", D, 30, 1, image_count=2, image_tokens=20),
        item("p2", D, 30, 2, image_count=2, image_tokens=20),
        item("p3", D, 30, 3, image_count=1, image_tokens=20),
    ]
    plan = select_context(items, window(1000, max_images=5))
    assert (plan.images_replaced, plan.total_tokens) == ((), 90)


def test_once_a_message_is_replaced_every_older_image_is_too() -> None:
    # Newest first: n1 brings 2, n2 would make 4 > 3, so n2 is replaced, and n3 with it,
    # although n3's one image would still have fitted.
    items = [
        item("n3", D, 25, 1, image_count=1, image_tokens=20),
        item("n2", D, 50, 2, image_count=2, image_tokens=40),
        item("n1", D, 50, 3, image_count=2, image_tokens=40),
        item("plain", D, 5, 4),
    ]
    plan = select_context(items, window(1000, max_images=3, image_placeholder_tokens=4))
    assert plan.images_replaced == ("n3", "n2")
    assert plan.total_tokens == (25 - 20 + 4) + (50 - 40 + 8) + 50 + 5


def test_a_message_with_more_images_than_allowed_is_replaced_and_so_is_every_older_one() -> None:
    items = [
        item("old", D, 30, 1, image_count=1, image_tokens=20),
        item("new", D, 90, 2, image_count=3, image_tokens=60),
    ]
    plan = select_context(items, window(1000, max_images=2, image_placeholder_tokens=10))
    # "new" can never be shown; "old" alone would fit, but only the oldest are replaced.
    assert plan.images_replaced == ("old", "new")
    assert plan.total_tokens == (30 - 20 + 10) + (90 - 60 + 30)


def test_the_newest_message_alone_within_the_limit_keeps_its_images() -> None:
    items = [item("sys", S, 5, 0), item("shot", D, 100, 1, image_count=3, image_tokens=90)]
    plan = select_context(items, window(1000, max_images=5))
    assert (plan.images_replaced, plan.total_tokens) == ((), 105)


def test_a_message_may_be_all_image() -> None:
    only = item("pic", D, 85, 1, role="user", image_count=1, image_tokens=85)
    plan = select_context([only], window(1000, max_images=0, image_placeholder_tokens=0))
    assert (plan.images_replaced, plan.total_tokens) == (("pic",), 0)


# -- can the window hold the SYSTEM messages? ---------------------------------------------------
def test_system_images_are_counted_as_they_will_be_sent() -> None:
    # The SYSTEM message's 500-token image fits only as a 10-token placeholder.
    logo = item("sys", S, 520, 0, image_count=1, image_tokens=500)
    user = item("u", D, 10, 1, role="user")
    assert fits_system([logo, user], window(30, max_images=0))
    assert not fits_system([logo, user], window(29, max_images=0))
    assert not fits_system([logo, user], window(100, max_images=1))
    # A newer image takes the one image allowed, so the SYSTEM image becomes a placeholder.
    photo = item("photo", D, 60, 2, role="user", image_count=1, image_tokens=50)
    assert fits_system([logo, user, photo], window(30, max_images=1))
    # Only SYSTEM messages count.
    assert fits_system([item("sys", S, 30, 0), item("big", D, 900, 1)], window(30))


# -- budgets after lending, to the token ---------------------------------------------------------
def test_when_every_category_needs_more_than_its_share_nobody_borrows() -> None:
    items = [
        item("sys", S, 20, 0),
        item("ctx", C, 40, 1),
        item("d", D, 50, 2),
        item("out", T, 30, 3),
        item("err", E, 10, 4),
    ]
    assert select_context(items, window(100)).budget == {S: 10, C: 30, D: 40, T: 20, E: 5}


def test_a_loan_is_repaid_by_the_lenders_in_order_error_output_dialog_context() -> None:
    # Shares S 10, C 30, D 40, T 20, E 5 (105 of 100: nothing unassigned). DIALOG needs 47:
    # it borrows 7, lent by ERROR (5, all unused), SYSTEM_OUTPUT (1, all it does not need),
    # DIALOG (nothing spare) and CONTEXT (the last 1).
    items = [item("sys", S, 5, 0), item("d", D, 47, 1), item("out", T, 19, 2)]
    assert select_context(items, window(100)).budget == {S: 10, C: 29, D: 47, T: 19, E: 0}


def test_loans_come_from_the_unassigned_share_first() -> None:
    # Fractions summing to 1 leave nothing unassigned: SYSTEM_OUTPUT lends DIALOG's 10.
    items = [item("sys", S, 5, 0), item("d", D, 50, 1)]
    assert select_context(items, window(100, budgets={E: 0.0})).budget == {
        S: 10,
        C: 30,
        D: 50,
        T: 10,
        E: 0,
    }
    # With 0.1 each, half the window is nobody's: DIALOG's 50 come from it, no lender pays.
    tenths = dict.fromkeys(Category, 0.1)
    items = [item("sys", S, 5, 0), item("d", D, 60, 1)]
    assert select_context(items, window(100, budgets=tenths)).budget == {
        S: 10,
        C: 10,
        D: 60,
        T: 10,
        E: 10,
    }
    # CONTEXT borrows 20 before DIALOG borrows the 55 left: 75, of which 50 are nobody's and
    # 25 are lent by ERROR (10), SYSTEM_OUTPUT (10) and SYSTEM (5: all it does not need).
    items = [item("sys", S, 5, 0), item("d", D, 65, 1), item("c", C, 30, 2)]
    assert select_context(items, window(100, budgets=tenths)).budget == {
        S: 5,
        C: 30,
        D: 65,
        T: 0,
        E: 0,
    }


# -- tool exchanges tied together by reused call ids --------------------------------------------
def test_a_provider_reusing_call_ids_ties_its_exchanges_into_one_unit() -> None:
    # Some providers number tool calls per turn (call_0, call_1, ...): the third turn's
    # parallel calls reuse both earlier ids, so all three exchanges are one unit.
    config = window(100, budgets=dict.fromkeys(Category, 1.0))
    items = [
        item("c0", D, 10, 1, tool_call_ids=("call_0",)),
        item("r0", T, 10, 2, tool_result_for="call_0"),
        item("c1", D, 10, 3, tool_call_ids=("call_1",)),
        item("r1", T, 10, 4, tool_result_for="call_1"),
        item("c2", D, 10, 5, tool_call_ids=("call_0", "call_1")),
        item("r2a", T, 10, 6, tool_result_for="call_0"),
        item("r2b", T, 10, 7, tool_result_for="call_1"),
        item("u", D, 40, 8, role="user"),
    ]
    plan = select_context(items, config)
    assert plan.kept == ("u",)
    assert plan.trimmed == (
        Trim("r0", T, 10, "window full"),
        *(
            Trim(m, k, 10, "window full (tool pair with r0)")
            for m, k in [("c0", D), ("c1", D), ("r1", T), ("c2", D), ("r2a", T), ("r2b", T)]
        ),
    )
    assert select_context(items, window(110, budgets=dict.fromkeys(Category, 1.0))).trimmed == ()


# -- refused input names what is wrong, exactly --------------------------------------------------
GOOD_ITEM: dict[str, Any] = {
    "message_id": "m1",
    "category": D,
    "tokens": 10,
    "position": 1,
    "role": "user",
}
CATEGORIES = "SYSTEM, CONTEXT, DIALOG, SYSTEM_OUTPUT, ERROR"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"message_id": ""}, "message_id must be a non-empty string, got ''"),
        ({"message_id": 7}, "message_id must be a non-empty string, got 7"),
        ({"category": "CHAT"}, f"category of m1 must be one of {CATEGORIES}, got 'CHAT'"),
        ({"role": "robot"}, "role of m1 must be one of assistant, system, tool, user, got 'robot'"),
        ({"tokens": 1.5}, "tokens of m1 must be a non-negative integer, got 1.5"),
        ({"tokens": True}, "tokens of m1 must be a non-negative integer, got True"),
        ({"tokens": -1}, "tokens of m1 must be a non-negative integer, got -1"),
        ({"image_count": -1}, "image_count of m1 must be a non-negative integer, got -1"),
        ({"image_tokens": "5"}, "image_tokens of m1 must be a non-negative integer, got '5'"),
        ({"position": "3"}, "position of m1 must be an integer, got '3'"),
        ({"position": 2.0}, "position of m1 must be an integer, got 2.0"),
        (
            {"image_count": 1, "image_tokens": 11},
            "image_tokens of m1 (11) exceed its tokens (10); tokens must include the images",
        ),
    ],
)
def test_a_bad_item_is_refused_with_its_exact_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as error:
        ContextItem(**(GOOD_ITEM | change))
    assert str(error.value) == message


def test_an_item_is_normalised_on_the_way_in() -> None:
    named = ContextItem("m1", "SYSTEM", 0, -4, "system", tool_call_ids=["k1", "k2"])  # type: ignore[arg-type]
    assert named.category is Category.SYSTEM
    assert named.tool_call_ids == ("k1", "k2")
    assert isinstance(named.tool_call_ids, tuple)
    assert hash(named)  # a frozen, hashable value once normalised


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context_window": 0}, "context_window must be a positive number of tokens, got 0"),
        (
            {"context_window": 100, "usable_share": "0.85"},
            "usable_share must be a fraction in (0, 1] of the context window, got '0.85'",
        ),
        (
            {"context_window": 100, "usable_share": True},
            "usable_share must be a fraction in (0, 1] of the context window, got True",
        ),
        (
            {"context_window": 100, "budgets": [0.1]},
            "budgets must map categories to fractions, got list",
        ),
        (
            {"context_window": 100, "budgets": {"CHAT": 0.1}},
            f"budget category must be one of {CATEGORIES}, got 'CHAT'",
        ),
        (
            {"context_window": 100, "budgets": {D: "0.1"}},
            "budget of DIALOG must be a non-negative fraction of the usable window, got '0.1'",
        ),
        (
            {"context_window": 100, "budgets": {D: True}},
            "budget of DIALOG must be a non-negative fraction of the usable window, got True",
        ),
        (
            {"context_window": 100, "max_images": 1.5},
            "max_images must be a non-negative integer, got 1.5",
        ),
        (
            {"context_window": 100, "image_placeholder_tokens": -1},
            "image_placeholder_tokens must be a non-negative integer, got -1",
        ),
    ],
)
def test_a_bad_window_is_refused_with_its_exact_reason(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        WindowConfig(**kwargs)
    assert str(error.value) == message


def test_the_smallest_valid_settings_are_accepted() -> None:
    config = WindowConfig(1, usable_share=1.0, max_images=0, image_placeholder_tokens=0)
    assert (config.usable, config.max_images, config.image_placeholder_tokens) == (1, 0, 0)
    assert WindowConfig(1, usable_share=1e-9).usable == 0
    assert window(100, budgets={D: 0}).budgets[D] == 0.0


def test_only_context_items_are_planned() -> None:
    with pytest.raises(InvalidInput) as error:
        select_context([{"message_id": "m1"}], window(100))  # type: ignore[list-item]
    assert str(error.value) == "context items must be ContextItem, got dict"
    with pytest.raises(InvalidInput) as error:
        select_context([item("m1", D, 1, 1), item("m1", D, 1, 2)], window(100))
    assert str(error.value) == "message id m1 appears twice among the items"
