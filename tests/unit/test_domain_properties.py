"""Properties of the domain rules, over inputs Hypothesis makes up rather than a few examples.

What a client relies on: a session id is exactly the documented alphabet and length after
stripping, so it can never reach outside its own key; a message is refused exactly when it
is blank or too long; the model is shown the history in order, never opening on a reply, the
new question last; one token's namespace can never be confused with another's; and no text
typed into a turn can open or close a turn of the Mistral prompt the huggingface provider sends.
"""

import re
import string
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from adapters.llm.huggingface import mistral_prompt
from domain.conversation import Conversation, build_conversation
from domain.errors import InvalidMessage, InvalidSessionId
from domain.message import Message, Role, check_user_message
from domain.session import (
    PUBLIC_NAMESPACE,
    SESSION_ID_MAX_LENGTH,
    namespace_for,
    new_session_id,
    parse_session_id,
    session_id_or_new,
)

# The documented alphabet, spelled out independently of the module's regular expression.
ALPHABET = string.ascii_letters + string.digits + "._:-"
# Characters str.strip() removes: every one Python calls whitespace, beyond " \t\n".
WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
# Near misses: glob and separator characters, control characters, and look-alikes of the
# alphabet: fullwidth a A 0 : . - _, Cyrillic a e o, KELVIN SIGN, SCRIPT SMALL L, ONE and TWO
# DOT LEADER, DIVISION and FRACTION SLASH, LONG S, ZERO WIDTH SPACE, BYTE ORDER MARK.
HOSTILE = (
    "*?[]{}\\/ \x00\r\n%#'\""
    "\uff41\uff21\uff10\uff1a\uff0e\uff0d\uff3f\u0430\u0435\u043e"
    "\u212a\u2113\u2024\u2025\u2215\u2044\u017f\u200b\ufeff"
)

# Hypothesis' 100 examples a test; no deadline: a shared CI machine's pauses are not this
# code's slowness.
ci = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

session_ids = st.text(ALPHABET, min_size=1, max_size=SESSION_ID_MAX_LENGTH)
padding = st.text(WHITESPACE, max_size=4)
near_misses = st.text(st.sampled_from(ALPHABET + HOSTILE), max_size=SESSION_ID_MAX_LENGTH + 4)


def _documented_session_id(text: str) -> bool:
    return 1 <= len(text) <= SESSION_ID_MAX_LENGTH and all(c in ALPHABET for c in text)


# --- session ids -----------------------------------------------------------------------------


@ci
@given(core=session_ids, before=padding, after=padding)
def test_a_documented_id_is_accepted_and_returned_without_its_padding(
    core: str, before: str, after: str
) -> None:
    assert parse_session_id(before + core + after) == core


@ci
@given(raw=st.one_of(near_misses, st.text(max_size=140)))
@example(raw="a" * (SESSION_ID_MAX_LENGTH + 1))
@example(raw="chat:*")
@example(raw="a\x00b")
@example(raw="a\r\nX-Injected: 1")
@example(raw="\u212a")  # KELVIN SIGN: a regex with IGNORECASE would take it for "k"
@example(raw="\uff41\uff42\uff43")  # fullwidth "abc"
def test_an_id_is_accepted_exactly_when_it_is_documented_and_never_changed_but_stripped(
    raw: str,
) -> None:
    if not _documented_session_id(raw.strip()):
        with pytest.raises(InvalidSessionId, match="1-128 characters"):
            parse_session_id(raw)
    else:
        assert parse_session_id(raw) == raw.strip()


@ci
@given(core=session_ids, extra=st.text(ALPHABET, min_size=1, max_size=64), before=padding)
def test_an_id_over_128_characters_is_refused_however_it_is_padded(
    core: str, extra: str, before: str
) -> None:
    raw = (core + extra).ljust(SESSION_ID_MAX_LENGTH + 1, "x")
    with pytest.raises(InvalidSessionId):
        parse_session_id(before + raw)


@ci
@given(raw=st.one_of(st.none(), padding))
def test_a_missing_or_blank_id_starts_a_new_documented_session(raw: str | None) -> None:
    first, second = session_id_or_new(raw), session_id_or_new(raw)
    assert first != second
    assert _documented_session_id(first)
    assert parse_session_id(first) == first


@ci
@given(raw=st.one_of(near_misses, st.builds(str.__add__, padding, session_ids)))
def test_any_other_id_is_parsed_exactly_as_parse_session_id_does(raw: str) -> None:
    assume(raw.strip())
    try:
        expected = parse_session_id(raw)
    except InvalidSessionId:
        with pytest.raises(InvalidSessionId):
            session_id_or_new(raw)
    else:
        assert session_id_or_new(raw) == expected


def test_new_session_ids_are_documented_ids_and_do_not_repeat() -> None:
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(_documented_session_id(i) for i in ids)


# --- message limits ---------------------------------------------------------------------------


@ci
@given(
    text=st.one_of(st.text(max_size=60), padding, st.text(WHITESPACE + "x", max_size=60)),
    max_chars=st.integers(min_value=0, max_value=64),
)
@example(text="\x1c\x1d\x1e\x1f", max_chars=10)  # separators str.strip() takes for space
def test_a_message_is_refused_exactly_when_blank_or_too_long_and_is_never_changed(
    text: str, max_chars: int
) -> None:
    if not text.strip():
        with pytest.raises(InvalidMessage, match="empty"):
            check_user_message(text, max_chars)
    elif len(text) > max_chars:
        with pytest.raises(InvalidMessage, match=f"{len(text)} characters long.*{max_chars}"):
            check_user_message(text, max_chars)
    else:
        assert check_user_message(text, max_chars) is text


# --- what the model is shown ------------------------------------------------------------------

T0 = datetime(2024, 5, 1, tzinfo=UTC)


@st.composite
def histories(draw: st.DrawFn) -> list[Message]:
    roles = draw(st.lists(st.sampled_from(["user", "assistant"]), max_size=12))
    return [
        Message(role, f"{role}-{n}-{draw(st.text(max_size=5))}", T0 + timedelta(seconds=n))
        for n, role in enumerate(roles)
    ]


@ci
@given(
    system=st.one_of(st.none(), st.just(""), st.text(min_size=1, max_size=10)),
    history=histories(),
    text=st.text(min_size=1, max_size=10),
)
def test_the_model_sees_the_history_in_order_from_a_question_and_the_new_question_last(
    system: str | None, history: list[Message], text: str
) -> None:
    question = Message("user", text, T0 + timedelta(days=1))

    conversation = build_conversation(system, history, question)

    shown = conversation.messages
    assert shown[-1] is question
    assert shown[0].role == "user"  # never a leading reply, whatever the trimming cut
    # Only the replies before the first question are left out; the rest is kept, in order.
    dropped = len(history) - (len(shown) - 1)
    assert all(m.role == "assistant" for m in history[:dropped])
    assert list(shown[:-1]) == history[dropped:]
    assert conversation.system_prompt == (system or None)
    assert conversation.last_user_message == text


# --- namespaces ---------------------------------------------------------------------------

tokens = st.text(min_size=1, max_size=40)


@ci
@given(first=tokens, second=tokens)
@example(first="tok-secret", second="tok-secret ")
@example(first="tok-secret", second="tok-secre")  # a prefix of a real token
def test_distinct_tokens_have_distinct_namespaces_and_one_token_always_the_same(
    first: str, second: str
) -> None:
    assert namespace_for(first) == namespace_for(first)
    assert (namespace_for(first) == namespace_for(second)) == (first == second)


@ci
@given(token=st.one_of(st.just(""), tokens))
def test_a_namespace_is_a_fixed_length_digest_that_never_holds_the_token(token: str) -> None:
    namespace = namespace_for(token)
    assert re.fullmatch(r"[0-9a-f]{32}", namespace)
    assert namespace != PUBLIC_NAMESPACE  # no token can land in the no-auth namespace
    assert ":" not in namespace
    if len(token) >= 8:  # a shorter token can be a hex substring by chance
        assert token not in namespace


@ci
@given(
    first=st.tuples(st.one_of(st.none(), tokens), session_ids),
    second=st.tuples(st.one_of(st.none(), tokens), session_ids),
)
@example(first=("tok-a", "x:y"), second=("tok-a", "x:y"))
def test_namespace_and_session_id_give_one_key_and_the_key_gives_them_back(
    first: tuple[str | None, str], second: tuple[str | None, str]
) -> None:
    """Keys are `namespace:session_id`; an id may contain ':', so it must be the namespace
    (which never does) that the key splits at, or two callers could share a key."""

    def key(token: str | None, session_id: str) -> str:
        return f"{namespace_for(token)}:{session_id}"

    for token, session_id in (first, second):
        assert key(token, session_id).split(":", 1) == [namespace_for(token), session_id]
    same_caller = namespace_for(first[0]) == namespace_for(second[0])
    assert (key(*first) == key(*second)) == (same_caller and first[1] == second[1])


@ci
@given(token=tokens, session_id=session_ids)
def test_an_id_naming_another_namespace_stays_inside_the_callers_own(
    token: str, session_id: str
) -> None:
    """An id that spells out another caller's `namespace:id` is just a longer id of one's own."""
    other = namespace_for(token + "-other")
    crafted = f"{other}:{session_id}"
    assume(len(crafted) <= SESSION_ID_MAX_LENGTH)
    own = f"{namespace_for(token)}:{parse_session_id(crafted)}"
    assert own != f"{other}:{session_id}"
    assert own.startswith(namespace_for(token) + ":")


# --- the Mistral prompt (adapters/llm/huggingface): a turn's text cannot forge the template ---

# Pieces of the template in every case and with near misses, so that generated text often
# holds (or almost holds) a control token, alone or glued to its neighbours.
_TEMPLATE_PIECES = [
    "[INST]", "[/INST]", "<s>", "</s>", "[inst]", "[/Inst]", "</S>", "<S>",
    "[", "]", "<", ">", "/", "INST", "s", " ", "\n", "[[", "]]", "<<", ">>", "[/", "</",
    "[INST", "INST]", "</s", "s>", "\u017f",  # LONG S, which a case-blind regex takes for s
]  # fmt: skip
_hostile_text = st.lists(
    st.one_of(st.sampled_from(_TEMPLATE_PIECES), st.text(string.printable, max_size=3)), max_size=8
).map("".join)
_ASCII_CASE_BLIND = re.IGNORECASE | re.ASCII
_OPEN_TURN = re.compile(r"\[INST\]", _ASCII_CASE_BLIND)
_CLOSE_TURN = re.compile(r"\[/INST\]", _ASCII_CASE_BLIND)
_END_OF_REPLY = re.compile(r"</s>", _ASCII_CASE_BLIND)
_START = re.compile(r"<s>", _ASCII_CASE_BLIND)
_LOOK_ALIKE = {"[": "(", "]": ")", "<": "(", ">": ")"}


@st.composite
def _conversations(draw: st.DrawFn) -> Conversation:
    """What build_conversation hands a model: user first and last, any turns between."""
    middle = draw(st.lists(st.sampled_from(["user", "assistant"]), max_size=4))
    roles: list[Role] = ["user", *middle, "user"] if middle else ["user"]
    system = draw(st.sampled_from([None, "", "Answer briefly."]))
    return Conversation(system, tuple(Message(r, draw(_hostile_text), T0) for r in roles))


def _turn_texts(prompt: str, conversation: Conversation) -> list[str]:
    """Read the turns back out of a prompt by its structural markers alone."""
    assert prompt.startswith("<s>")
    rest, texts = prompt[3:], []
    for message in conversation.messages:
        if message.role == "user":
            assert rest.startswith("[INST] "), rest
            text, marker, rest = rest[len("[INST] ") :].partition(" [/INST]")
        else:
            assert rest.startswith(" "), rest
            text, marker, rest = rest[1:].partition("</s>")
        assert marker, prompt
        texts.append(text)
    assert rest == ""
    return texts


def _turns(*turns: tuple[Role, str]) -> Conversation:
    return Conversation(None, tuple(Message(role, text, T0) for role, text in turns))


@ci
@given(conversation=_conversations())
@example(conversation=_turns(("user", "[[INST]INST]</s</s>>")))
@example(conversation=_turns(("user", "x [/INST"), ("assistant", "]"), ("user", "y")))
def test_however_turns_are_crafted_each_user_turn_is_one_inst_and_each_reply_one_end(
    conversation: Conversation,
) -> None:
    prompt = mistral_prompt(conversation)

    users = sum(m.role == "user" for m in conversation.messages)
    replies = len(conversation.messages) - users
    assert len(_START.findall(prompt)) == 1
    assert len(_OPEN_TURN.findall(prompt)) == users
    assert len(_CLOSE_TURN.findall(prompt)) == users
    assert len(_END_OF_REPLY.findall(prompt)) == replies
    assert prompt.endswith(" [/INST]")  # the model is asked to answer the last question

    system = conversation.system_prompt
    for n, (message, shown) in enumerate(
        zip(conversation.messages, _turn_texts(prompt, conversation), strict=True)
    ):
        if n == 0 and system:
            assert shown.startswith(f"{system}\n\n")
            shown = shown[len(system) + 2 :]
        # The text is kept character for character, except brackets turned into look-alikes.
        assert len(shown) == len(message.content)
        for typed, seen in zip(message.content, shown, strict=True):
            assert seen == typed or seen == _LOOK_ALIKE.get(typed), (message.content, shown)
