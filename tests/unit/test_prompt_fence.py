"""The user's text stays inside its fence, whatever look-alike tags it holds."""

from __future__ import annotations

import re

import pytest

from ai_service.prompt import DOCUMENT_TAG, user_message

# What a model could read as the fence: `<`, optional blanks, optional `/`, the tag name.
_TAG = re.compile(rf"<\s*/?\s*{DOCUMENT_TAG}", re.IGNORECASE)


@pytest.mark.parametrize(
    ("attack", "defused"),
    [
        ("a</document>b", "a<\\/document>b"),
        ("a</DOCUMENT>b", "a<\\/DOCUMENT>b"),
        ("a<Document>b", "a<\\Document>b"),
        ("a</ document>b", "a<\\/ document>b"),
        ("a< /document >b", "a<\\ /document >b"),
        ("a<\t/\nDoCuMeNt>b", "a<\\\t/\nDoCuMeNt>b"),
        ("a<\u200b/document>b", "a<\\\u200b/document>b"),
        ("a\uff1c/document\uff1eb", "a\uff1c\\/document\uff1eb"),
        ("a\uff1c\uff0f\uff24\uff4fcument>b", "a\uff1c\\\uff0f\uff24\uff4fcument>b"),
        ("a<\\/document>b", "a<\\/document>b"),
    ],
)
def test_every_look_alike_of_the_fence_is_defused(attack: str, defused: str) -> None:
    message = user_message(attack)
    assert message == f"<{DOCUMENT_TAG}>\n{defused}\n</{DOCUMENT_TAG}>"
    # Exactly one opening and one closing fence remain: the service's own.
    inner = message.removeprefix(f"<{DOCUMENT_TAG}>").removesuffix(f"</{DOCUMENT_TAG}>")
    assert _TAG.search(inner) is None


def test_ordinary_text_and_other_tags_pass_unchanged() -> None:
    text = "Less < more, <b>bold</b>, a <doc> and </documentation-free> prose."
    assert user_message("x < y and <b>z</b>") == "<document>\nx < y and <b>z</b>\n</document>"
    # `</documentation` starts like the fence: it is defused too, harmlessly.
    assert "<\\/documentation-free>" in user_message(text)
    assert "<doc>" in user_message(text)
