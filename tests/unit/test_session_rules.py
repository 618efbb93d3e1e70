import pytest

from domain.errors import InvalidMessage, InvalidSessionId
from domain.message import check_user_message
from domain.session import (
    PUBLIC_NAMESPACE,
    namespace_for,
    parse_session_id,
    session_id_or_new,
)


@pytest.mark.parametrize("raw", [None, "", "   ", "\t\n"])
def test_missing_or_blank_session_id_starts_a_new_one(raw: str | None) -> None:
    first, second = session_id_or_new(raw), session_id_or_new(raw)
    assert first != second
    assert parse_session_id(first) == first


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(" YOUR_SESSION_ID", "YOUR_SESSION_ID"), ("a.b:c-d_e\n", "a.b:c-d_e"), ("x" * 128, "x" * 128)],
)
def test_session_id_is_stripped_and_kept(raw: str, expected: str) -> None:
    assert session_id_or_new(raw) == expected


@pytest.mark.parametrize(
    "raw", ["a b", "x" * 129, "chat:*", "a?b", "[a]", "é", "a/b", "a\x00b", "a\r\nX-Injected: 1"]
)
def test_session_id_outside_the_alphabet_is_refused(raw: str) -> None:
    with pytest.raises(InvalidSessionId, match="1-128 characters"):
        session_id_or_new(raw)


def test_message_must_say_something_within_the_limit() -> None:
    assert check_user_message("  hi  ", 10) == "  hi  "
    assert check_user_message("x" * 10, 10) == "x" * 10
    with pytest.raises(InvalidMessage, match="empty"):
        check_user_message(" \n\t", 10)
    with pytest.raises(InvalidMessage, match="11 characters long; the limit is 10"):
        check_user_message("x" * 11, 10)


def test_namespaces_separate_tokens_without_holding_them() -> None:
    a, b = namespace_for("token-a"), namespace_for("token-b")
    assert a != b != PUBLIC_NAMESPACE
    assert namespace_for("token-a") == a
    assert "token-a" not in a
    assert namespace_for(None) == PUBLIC_NAMESPACE
