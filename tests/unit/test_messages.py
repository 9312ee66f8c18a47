"""Messages as a person reads them."""

from domain.messages import ImagePart, TextPart, ToolCallPart, ToolResultPart, text_of


def test_the_text_of_a_message_is_its_text_and_tool_results_line_by_line() -> None:
    parts = (
        TextPart(text="Here is the chart."),
        ImagePart(path="chart.png", media_type="image/png", sha256="0" * 64, size=10),
        ToolCallPart(call_id="k1", name="sum", arguments="{}"),
        ToolResultPart(call_id="k1", content="42"),
        TextPart(text="Done."),
    )
    assert text_of(parts) == "Here is the chart.\n42\nDone."
    assert text_of(()) == ""
