"""The context budget, over histories and windows Hypothesis makes up: what is sent fits the
window by the estimate, opens on a user turn, ends with the new message, and is the newest
part of the stored history; the history itself is never changed."""

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from domain.context_budget import (
    DEFAULT_TOKENS_PER_CHAR,
    TokenEstimate,
    fit_conversation,
    input_budget,
)
from domain.message import Message

NOW = datetime(2026, 11, 30, tzinfo=UTC)

messages = st.lists(
    st.builds(
        Message,
        st.sampled_from(["user", "assistant"]),
        st.text(max_size=3000),
        st.just(NOW),
    ),
    max_size=60,
)


@given(
    history=messages,
    question=st.text(min_size=1, max_size=2000),
    system=st.one_of(st.none(), st.text(min_size=1, max_size=500)),
    window=st.integers(min_value=0, max_value=50_000),
    max_tokens=st.one_of(st.none(), st.integers(min_value=1, max_value=4000)),
    ratio=st.floats(min_value=0.05, max_value=2.0),
)
def test_what_is_sent_fits_opens_on_a_user_turn_and_ends_with_the_question(
    history: list[Message],
    question: str,
    system: str | None,
    window: int,
    max_tokens: int | None,
    ratio: float,
) -> None:
    estimate = TokenEstimate(ratio)
    asked = Message("user", question, NOW)
    kept = list(history)
    budget = input_budget(window, max_tokens)

    sent = fit_conversation(system, history, asked, budget=budget, estimate=estimate)

    assert history == kept
    alone = estimate.of(question) + (estimate.of(system) if system else 0)
    if budget is not None and alone > budget:
        assert sent is None
        return
    assert sent is not None
    assert sent.system_prompt == (system or None)
    assert sent.messages[-1] is asked
    assert sent.messages[0].role == "user"
    earlier = list(sent.messages[:-1])
    assert earlier == history[len(history) - len(earlier) :]  # the newest, in order
    if budget is not None:
        assert estimate.of_conversation(sent) <= budget
        assert budget + (max_tokens or 0) <= window


def test_an_unknown_window_sends_the_whole_history_from_its_first_user_turn() -> None:
    history = [Message("assistant", "orphan", NOW), Message("user", "a", NOW)]
    sent = fit_conversation(
        None, history, Message("user", "b", NOW), budget=None, estimate=TokenEstimate()
    )
    assert sent is not None
    assert [m.content for m in sent.messages] == ["a", "b"]


def test_until_calibrated_the_estimate_counts_more_tokens_than_english_has() -> None:
    assert DEFAULT_TOKENS_PER_CHAR > 1 / 4
    assert TokenEstimate().of("x" * 300) == 100 + 4
