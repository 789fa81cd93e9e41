"""Tests for seal_env.articles: bundled data quality, loaders, errors and splits."""

from __future__ import annotations

import json
from pathlib import Path

from seal_env.articles import (
    DATASETS_HELP,
    MAX_ANSWER_CHARS,
    MAX_CONTEXT_CHARS,
    MAX_QUESTION_CHARS,
    MAX_TITLE_CHARS,
    Article,
    Question,
    load_articles,
    split_articles,
)

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def bundled() -> list[Article]:
    return load_articles()


def test_bundled_size_and_questions(bundled):
    assert len(bundled) >= 24
    for a in bundled:
        assert a.title and a.context
        assert len(a.questions) >= 5, a.title
        assert 100 <= len(a.context.split()) <= 220, a.title


def test_bundled_answers_verbatim_and_not_in_question(bundled):
    for a in bundled:
        for q in a.questions:
            assert q.answer.lower() in a.context.lower(), (a.title, q.answer)
            assert q.answer.lower() not in q.question.lower(), (a.title, q.question)
            assert 1 <= len(q.answer.split()) <= 4, (a.title, q.answer)


def test_bundled_ids_unique_and_stable(bundled):
    ids = [a.id for a in bundled]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert [a.id for a in load_articles()] == ids
    assert len({a.title for a in bundled}) == len(bundled)


def test_limit(bundled):
    assert load_articles(limit=3) == bundled[:3]
    assert load_articles(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        load_articles(limit=-1)


def test_round_trip(bundled):
    for a in bundled:
        b = Article.from_dict(a.to_dict())
        assert b == a and b.id == a.id
    assert json.loads(json.dumps(bundled[0].to_dict())) == bundled[0].to_dict()


def test_from_dict_strips_and_accepts_squad_answers():
    a = Article.from_dict(
        {
            "title": " T ",
            "context": "  Some context about Zorblat.  ",
            "questions": [
                {"question": " Who? ", "answer": " Zorblat "},
                {"question": "Again?", "answers": [{"text": "Zorblat", "answer_start": 19}]},
                {"question": "HF?", "answers": {"text": ["context"], "answer_start": [5]}},
            ],
        }
    )
    assert a.title == "T" and a.context == "Some context about Zorblat."
    assert a.questions == (Question("Who?", "Zorblat"), Question("Again?", "Zorblat"), Question("HF?", "context"))


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"title": "x", "context": "", "questions": [{"question": "q", "answer": "a"}]}, "context"),
        ({"title": "x", "context": "c", "questions": []}, "questions"),
        ({"title": "x", "context": "c"}, "questions"),
        (
            {"title": "x", "context": "c", "questions": [{"question": "q", "answer": "a"}, {"question": "q2"}]},
            r"questions\[1\]\.answer",
        ),
        ({"title": "x", "context": "c", "questions": [{"question": " ", "answer": "a"}]}, r"questions\[0\]\.question"),
        ({"title": 3, "context": "c", "questions": [{"question": "q", "answer": "a"}]}, "title"),
        ({"title": "", "context": "c", "questions": [{"question": "q", "answer": "a"}]}, "title"),
        ({"title": " \n", "context": "c", "questions": [{"question": "q", "answer": "a"}]}, "title"),
        ({"context": "c", "questions": [{"question": "q", "answer": "a"}]}, "title"),
        ({"title": "x", "context": ["c"], "questions": [{"question": "q", "answer": "a"}]}, "context"),
        ({"title": "x" * 1001, "context": "c", "questions": [{"question": "q", "answer": "a"}]}, "MAX_TITLE_CHARS"),
        ("not a dict", "object"),
    ],
)
def test_from_dict_errors(entry, field):
    with pytest.raises(ValueError, match=field):
        Article.from_dict(entry)


Q = (Question("Who?", "Zed"),)
LIMITS = {
    "title": MAX_TITLE_CHARS,
    "context": MAX_CONTEXT_CHARS,
    "question": MAX_QUESTION_CHARS,
    "answer": MAX_ANSWER_CHARS,
}


def _article(title="T", context="Ctx about Zed.", question="Who?", answer="Zed") -> Article:
    return Article(title, context, (Question("First?", "Zed"), Question(question, answer)))


@pytest.mark.parametrize("field", LIMITS)
def test_texts_over_their_cap_are_refused_naming_the_article_and_the_limit(field):
    _article(**{field: "z" * LIMITS[field]})  # the cap itself is accepted
    title = "z" * (LIMITS[field] + 1) if field == "title" else "T"
    where = f"questions\\[1\\]\\.{field}" if field in ("question", "answer") else field
    limit = f"MAX_{field.upper()}_CHARS"
    message = rf"^article [0-9a-f]{{16}} \({title[:60]!r}\): {where} has {LIMITS[field] + 1:,} characters, "
    message += rf"over the limit of {LIMITS[field]:,} \(seal_env\.articles\.{limit}\)$"
    with pytest.raises(ValueError, match=message):
        _article(**{field: "z" * (LIMITS[field] + 1)})


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: Article("", "c", Q), "title"),
        (lambda: Article("  ", "c", Q), "title"),
        (lambda: Article(None, "c", Q), "title"),
        (lambda: Article(b"T", "c", Q), "title"),
        (lambda: Article("T", "", Q), "context"),
        (lambda: Article("T", 3, Q), "context"),
        (lambda: Article("T", "c", ()), "questions"),
        (lambda: Article("T", "c", list(Q)), "questions"),
        (lambda: Article("T", "c", ({"question": "q", "answer": "a"},)), "questions"),
        (lambda: Question("", "a"), "question"),
        (lambda: Question("q", " "), "answer"),
        (lambda: Question("q", 3), "answer"),
        (lambda: Article("T\ud800", "c", Q), "title"),
        (lambda: Article("T", "a \udfff passage", Q), "context"),
        (lambda: Question("q\udc80?", "a"), "question"),
    ],
)
def test_hand_built_article_is_checked(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_loading_a_file_with_an_over_long_article_fails_naming_it(tmp_path, bundled):
    entries = [a.to_dict() for a in bundled[:3]]
    entries[1]["context"] = "A long passage." + "z" * 104_985  # 105,000 characters
    p = tmp_path / "long.json"
    p.write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=rf"long\.json: entry 1: article [0-9a-f]{{16}} \({bundled[1].title!r}\): "
        r"context has 105,000 characters, over the limit of 100,000 \(seal_env\.articles\."
        r"MAX_CONTEXT_CHARS\)",
    ):
        load_articles(p)
    with pytest.raises(ValueError, match="MAX_CONTEXT_CHARS"):
        load_articles(p, limit=2)  # the bad entry is among the two kept


def _max_lengths(articles: list[Article]) -> dict[str, int]:
    return {
        "title": max(len(a.title) for a in articles),
        "context": max(len(a.context) for a in articles),
        "question": max(len(q.question) for a in articles for q in a.questions),
        "answer": max(len(q.answer) for a in articles for q in a.questions),
    }


def test_bundled_articles_are_far_below_the_caps(bundled):
    for field, longest in _max_lengths(bundled).items():
        assert longest * 10 <= LIMITS[field], field


def test_shared_data_is_far_below_the_caps(shared_data):
    for name in ("squad_seal_eval_dev100.json", "squad_train_pool300.json"):
        if (shared_data / name).exists():
            for field, longest in _max_lengths(load_articles(shared_data / name)).items():
                assert longest * 10 <= LIMITS[field], (name, field)


def test_json_loader_tmp_file(tmp_path, bundled):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps([a.to_dict() for a in bundled[:4]]), encoding="utf-8")
    assert load_articles(str(p)) == bundled[:4]
    assert load_articles(p, limit=2) == bundled[:2]


def test_json_loader_malformed_entry_names_index(tmp_path, bundled):
    entries = [a.to_dict() for a in bundled[:3]]
    entries[2]["questions"][0]["answer"] = ""
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(ValueError, match=r"entry 2: .*questions\[0\]\.answer"):
        load_articles(str(p))


def test_json_loader_rejects_self_edit_file(tmp_path):
    p = tmp_path / "self_edits.json"
    p.write_text(json.dumps([{"title": "t", "context": "c", "prompt": "p", "completions": ["x"]}]))
    with pytest.raises(ValueError, match="entry 0: .*questions.*self-edit"):
        load_articles(str(p))


def test_json_loader_not_a_list_or_bad_json(tmp_path):
    p = tmp_path / "obj.json"
    p.write_text(json.dumps({"title": "t"}))
    with pytest.raises(ValueError, match="list"):
        load_articles(str(p))
    p.write_text("[{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_articles(str(p))


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_articles(str(missing))


def test_unknown_source_lists_accepted():
    with pytest.raises(ValueError, match="unknown article source") as exc:
        load_articles("wikipedia")
    assert DATASETS_HELP in str(exc.value)
    with pytest.raises(ValueError):
        load_articles("")


def test_shared_seal_eval_file():
    path = SHARED_DATA / "squad_seal_eval_dev100.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    arts = load_articles(str(path))
    assert len(arts) == 100
    assert all(len(a.questions) >= 1 for a in arts)
    assert len({a.id for a in arts}) == 100


def test_split_deterministic_and_disjoint(bundled):
    train, held = split_articles(bundled, heldout=8, seed=3)
    assert len(train) == len(bundled) - 8 and len(held) == 8
    assert {a.id for a in train}.isdisjoint({a.id for a in held})
    assert {a.id for a in train} | {a.id for a in held} == {a.id for a in bundled}
    assert split_articles(bundled, heldout=8, seed=3) == (train, held)
    assert split_articles(bundled, heldout=8, seed=4)[1] != held
    train_f, held_f = split_articles(bundled, heldout=0.25, seed=3)
    assert len(held_f) == round(0.25 * len(bundled))
    assert split_articles(bundled, heldout=0)[1] == []


@pytest.mark.parametrize("bad", [-1, 10_000, 1.5, -0.1, True, "3"])
def test_split_validates(bundled, bad):
    with pytest.raises(ValueError):
        split_articles(bundled, heldout=bad)


def test_squad_offline_raises_runtime_error(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    # The flags are read at import time; patch the module constants too.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    try:
        arts = load_articles("squad:validation", limit=2)
    except RuntimeError as e:
        assert "squad" in str(e).lower() and "bundled" in str(e)
        return
    pytest.skip(f"SQuAD loaded from a local cache ({len(arts)} articles); offline error path not exercised")


def test_squad_grouping_with_fake_hub(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = {
        "title": ["Foo_Bar", "Foo_Bar", "Baz", "Qux", "Long", "Foo_Bar"],
        "context": [
            "Ctx one about Zed.",
            "Ctx one about Zed.",
            "Ctx two about Yam.",
            "Ctx three.",
            "Zed " * (MAX_CONTEXT_CHARS // 4 + 1),
            "Ctx one about Zed.",
        ],
        "question": ["Who? ", "Again?", "What?", "Skip?", "Long?", "Long answer?"],
        "answers": [
            {"text": ["Zed", "zed"], "answer_start": [14, 14]},
            {"text": ["Zed"], "answer_start": [14]},
            {"text": ["Yam"], "answer_start": [14]},
            {"text": [], "answer_start": []},
            {"text": ["Zed"], "answer_start": [0]},
            {"text": ["x" * (MAX_ANSWER_CHARS + 1)], "answer_start": [0]},
        ],
    }
    seen = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: seen.update(name=name, split=split) or rows)
    arts = load_articles("squad:train")
    assert seen == {"name": "rajpurkar/squad", "split": "train"}
    assert [a.title for a in arts] == ["Foo Bar", "Baz"]
    assert arts[0].questions == (Question("Who?", "Zed"), Question("Again?", "Zed"))
    assert load_articles("squad", limit=1) == arts[:1] and seen["split"] == "validation"
