"""Pure-text parts: grading, prompts, self-edit -> training sequences, action sanitising."""

from seal_env.prompts import SELF_EDIT_TEMPLATES, answer_prompt, resolve_template, self_edit_prompt
from seal_env.reward.grading import exact_match, f1_score, grade, lenient_match, normalize_answer
from seal_env.reward.sequences import build_sequences, sanitize_action, split_self_edit

import pytest


def test_normalize_and_matches():
    assert normalize_answer("The  Tervik, Observatory!") == "tervik observatory"
    assert lenient_match("q", "Mount Tervik", "It sits on mount tervik.") == 1.0
    assert lenient_match("q", "1848", "In 18481.") == 0.0  # word boundaries, not substrings
    assert lenient_match("q", "", "anything") == 0.0
    assert exact_match("the Nile", "Nile") == 1.0
    assert f1_score("red fox", "a red dog") == pytest.approx(0.5)
    assert f1_score("x", "") == 0.0


def test_grade_rejects_out_of_range_grader():
    assert grade("q", "a", "a", grader=lambda q, g, p: 1)["correct"] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grade("q", "a", "a", grader=lambda q, g, p: 3)


def test_templates_are_seals():
    assert set(SELF_EDIT_TEMPLATES) == {
        "implications",
        "implications-long",
        "implications-very-long",
        "rewrite",
        "self-qa",
    }
    text = self_edit_prompt("T", "C", "implications")
    assert text.endswith("Passage:\nT\nC\n\nImplications:\n")
    assert resolve_template("Facts about {title}: {context}") == "Facts about {title}: {context}"
    with pytest.raises(ValueError, match="unknown self-edit template"):
        resolve_template("nonsense")
    with pytest.raises(ValueError, match="only use the fields"):
        resolve_template("{context} {other}")
    assert "Topic: T\nWhat?" in answer_prompt("T", "What?")


def test_split_modes_and_preamble():
    edit = "Certainly! Here are the implications:\n1. A is B.\n\n2. C is D.\n---\n3. E."
    assert split_self_edit(edit, "lines") == ["1. A is B.", "2. C is D.", "3. E."]
    assert split_self_edit(edit, "lines", drop_preamble=False)[0].startswith("Certainly")
    assert len(split_self_edit(edit, "segments")) == 2
    assert split_self_edit(edit, "none") == [edit.strip()]
    assert split_self_edit("  \n \n", "lines") == []
    with pytest.raises(ValueError):
        split_self_edit(edit, "words")


def test_markup_can_be_stripped():
    edit = "Sure! Here's a list of implications:\n\n**Implications:**\n\n1. **Stability:** A is __B__.\n## 2. C."
    # SEAL's rule drops a first line only right before a list item: here both preamble lines stay
    assert split_self_edit(edit, "lines")[:2] == ["Sure! Here's a list of implications:", "**Implications:**"]
    assert split_self_edit(edit, "lines", markup=False) == ["1. Stability: A is B.", "2. C."]
    assert split_self_edit("1. Ends with a colon:\nNote:", "lines", markup=False) == ["1. Ends with a colon:"]
    assert split_self_edit("**not closed", "lines", markup=False) == ["**not closed"]
    seqs, info = build_sequences(edit, "T", "P.", markup=False)
    assert [s.text for s in seqs] == ["1. Stability: A is B.", "2. C.", "P."] and info["self_edit_pieces"] == 2


def test_build_sequences_prefix_passage_and_cap():
    seqs, info = build_sequences("a\nb\nc", "Title", "The passage.", max_sequences=2)
    assert [s.text for s in seqs] == ["a", "b", "The passage."]
    assert all(s.prefix == "Title\n" for s in seqs)
    assert info == {"self_edit_pieces": 3, "dropped_pieces": 1}
    seqs, _ = build_sequences("a", "Title", "P", title_prefix=False, include_passage=False)
    assert [(s.prefix, s.text) for s in seqs] == [("", "a")]


def test_sanitize_action():
    with pytest.raises(TypeError, match="must be a str"):
        sanitize_action(b"bytes", 100)
    text, flags = sanitize_action("a\x00b\x07c\r\nd\ud800e\tf", 100)
    assert text == "abc\nd\ufffde\tf"
    assert flags["removed_control_chars"] == 2 and flags["replaced_surrogates"] == 1
    text, flags = sanitize_action("x" * 50, 10)
    assert text == "x" * 10 and flags["action_truncated_chars"] == 40
