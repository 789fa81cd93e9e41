"""seal/ContinualSelfEdits-v0 on the tiny random model: check_env, determinism, the matrix against a hand
computation (train, merge by W + scale * (A B)^T, quiz), the base weights restored bit for bit, bad settings; and
benchmarks.forgetting end to end (K=2, S=2), its resume and SEAL's published matrix next to ours."""

import json

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env.journal import read_records
from seal_env.learner.trainer import Learner
from seal_env.models import load_model
from seal_env.reward.pipeline import prepare
from seal_env.reward.quiz import SCORES, quiz, summarize

import gymnasium as gym
import mlx.core as mx
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from mlx.utils import tree_flatten

from conftest import TINY

# short sequences, one epoch; a learning rate at which one merge moves the tiny model's log-likelihoods visibly
FAST = {**TINY, "epochs": 1, "learning_rate": 1e-2, "max_sequence_tokens": 64, "max_action_chars": 2000}
ID = "seal/ContinualSelfEdits-v0"
EDITS = [
    "1. The observatory sits on Mount Tervik.\n2. It was founded in 1911.",
    "The museum holds a bronze bell.\nIt was cast in 1702.",
    "A third fact.\nAnd a fourth one.",
]


def make(**kw):
    return gym.make(ID, **{**FAST, "n_articles": 2, **kw}).unwrapped


@pytest.fixture(scope="module")
def env():
    e = make(n_articles=3, render_mode="ansi")
    yield e
    e.close()


def frozen(env):
    """Every non-LoRA parameter of the learner's model, copied to numpy."""
    return {k: np.array(v) for k, v in tree_flatten(env.learner.model.parameters()) if "lora" not in k}


def same_weights(env, before):
    after = dict(tree_flatten(env.learner.model.parameters()))
    return all(np.array_equal(v, np.array(after[k])) for k, v in before.items())


def episode(env, seed, edits=EDITS):
    _, info = env.reset(seed=seed)
    return info, [env.step(e) for e in edits[: info["n_articles"]]]


# ------------------------------------------------------------------------------------------- the env
def test_check_env_passes(env):
    check_env(env, skip_render_check=False)


def test_registered_spec_round_trips_and_bad_settings():
    e = gym.make(ID, **TINY, n_articles=3)
    assert json.loads(e.spec.to_json())["kwargs"]["n_articles"] == 3
    e.close()
    for bad in (0, -2, True, 2.0):
        with pytest.raises(ValueError, match="n_articles must be a positive integer"):
            gym.make(ID, **TINY, n_articles=bad)
    with pytest.raises(ValueError, match="n_articles=41 but split 'all' of 'bundled' has only 40 articles"):
        gym.make(ID, **TINY, n_articles=41)
    with pytest.raises(ValueError, match="eval_times must be 1"):
        gym.make(ID, **TINY, eval_times=2)
    with pytest.raises(ValueError, match="quantize must be None"):
        gym.make(ID, **TINY, quantize=4)
    with pytest.raises(TypeError, match="unknown setting"):
        gym.make(ID, **TINY, lora_rnak=4)


def test_episode_fills_a_lower_triangular_matrix(env):
    info0, steps = episode(env, seed=3)
    K = 3
    assert info0["metric"] == env.cfg.reward == "loglik" and len(info0["row"]) == K
    assert len(set(info0["article_indices"])) == K  # distinct articles of the split
    for k, (obs, reward, terminated, truncated, info) in enumerate(steps):
        assert info["position"] == k and len(info["row"]) == k + 1 and len(info["retention"]) == k
        assert terminated == (k == K - 1) and truncated is False and info["merged"] is True
        assert reward == info["gain"] == pytest.approx(info["row"][k] - info0["row"][k])
        assert info["article_index"] == info0["article_indices"][k] and info["seed"] == info0["seed"] + k
        if k < K - 1:  # the next article is shown
            assert obs["title"] == env.articles[info0["article_indices"][k + 1]].title
    last = steps[-1][4]
    for kind in SCORES:
        m = last["matrices"][kind]
        assert len(m) == K + 1 and all(len(row) == K for row in m)
        assert m[0] == info0["scores"][kind]
        assert all(m[r][c] == 0.0 for r in range(1, K + 1) for c in range(r, K))  # SEAL's layout: 0 above
        assert [m[r][:r] for r in range(1, K + 1)] == [s[4]["scores"][kind] for s in steps]
    m = last["matrix"]
    assert m == last["matrices"]["loglik"]
    assert last["retention"] == pytest.approx([m[3][j] - m[j + 1][j] for j in range(2)])
    assert last["mean_gain"] == pytest.approx(np.mean([m[3][j] - m[0][j] for j in range(3)]))
    assert "after 3" in env.render()
    json.dumps(last)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(EDITS[0])


def test_matrix_matches_a_hand_computation(env):
    info0, steps = episode(env, seed=11)
    matrices = steps[-1][4]["matrices"]
    # by hand, on a second copy of the tiny model: quiz, then per step train one adapter with the step's seed, add
    # scale * (A B)^T to the frozen weights under it, and quiz the merged model on the articles so far
    cfg = env.cfg
    model, tokenizer = load_model(cfg.model)
    learner = Learner(model, tokenizer, cfg)
    articles = [env.articles[i] for i in info0["article_indices"]]
    rows = [[summarize(quiz(learner, a, cfg.answer_max_tokens)[0]) for a in articles]]
    for k, edit in enumerate(EDITS):
        seed = info0["seed"] + k
        learner.reset([seed])
        learner.train([prepare(cfg, tokenizer, articles[k], edit).data], [seed])
        for m in learner.adapters:
            m.linear.weight = m.linear.weight + m.scale * (m.lora_a[0] @ m.lora_b[0]).T
        mx.eval(learner.model.parameters())
        learner.reset([])
        rows.append([summarize(quiz(learner, a, cfg.answer_max_tokens)[0]) for a in articles[: k + 1]])
    for kind in ("loglik", "margin", "pmi", "accuracy", "f1"):
        expected = [[s[kind] for s in row] + [0.0] * (3 - len(row)) for row in rows]
        assert matrices[kind] == [pytest.approx(row, abs=2e-5) for row in expected], kind
    ll = matrices["loglik"]
    # the merges move the scores far beyond that tolerance: without them every column would stay at row 0
    assert abs(ll[3][0] - ll[0][0]) > 1e-3 and abs(ll[3][0] - ll[1][0]) > 1e-4


def test_deterministic_for_a_seed(env):
    first = episode(env, seed=21)
    again = episode(env, seed=21)
    assert first == again
    other = make(n_articles=3)  # a second env in the same process
    try:
        assert episode(other, seed=21) == first
    finally:
        other.close()
    _, steps = episode(env, seed=22)
    assert steps[-1][4]["matrix"] != first[1][-1][4]["matrix"]


def test_base_weights_restored_bit_for_bit(env):
    before = frozen(env)
    env.reset(seed=4)
    env.step(EDITS[0])
    assert not same_weights(env, before)  # the merge is in the weights the next step trains from
    env.reset(seed=4)  # a reset mid-episode restores them
    assert same_weights(env, before)
    episode(env, seed=5)  # the end of an episode restores them
    assert same_weights(env, before)
    env.reset(seed=6)
    env.step(EDITS[0])
    env.close()  # and close
    assert same_weights(env, before)
    # the next episode starts from the base weights: the same row 0 as an env that never merged
    info, _ = episode(env, seed=5)
    fresh = make(n_articles=3)
    try:
        assert fresh.reset(seed=5)[1]["row"] == info["row"]
    finally:
        fresh.close()


def test_set_base_weights_changes_what_episodes_start_from(env):
    original = env.learner.base_weights()
    info, _ = episode(env, seed=5)
    env.reset(seed=5)
    env.step(EDITS[0])
    env.set_base_weights({k: v * 1.5 for k, v in original.items()})  # mid-episode: the episode ends first
    with pytest.raises(RuntimeError, match="reset"):
        env.step(EDITS[1])
    before = frozen(env)
    changed, _ = episode(env, seed=5)
    assert changed["row"] != info["row"] and same_weights(env, before)  # restored to the new base weights
    env.set_base_weights(original)
    assert episode(env, seed=5)[0]["row"] == info["row"]


def test_a_step_that_raises_restores_the_weights_and_ends_the_episode(env, monkeypatch):
    before = frozen(env)
    env.reset(seed=8)
    env.step(EDITS[0])
    calls = []

    def failing_ask(*args, **kwargs):
        calls.append(1)
        raise MemoryError("out of memory during the quiz")

    monkeypatch.setattr(env.learner, "ask", failing_ask)
    with pytest.raises(MemoryError):
        env.step(EDITS[1])
    monkeypatch.undo()
    assert calls and same_weights(env, before)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(EDITS[1])


def test_bad_action_changes_nothing_and_diverged_steps_are_not_merged(env):
    before = frozen(env)
    _, info0 = env.reset(seed=9)
    with pytest.raises(TypeError, match="must be a str"):
        env.step(42)
    _, _, _, _, info = env.step(EDITS[0])
    assert info["position"] == 0  # the bad action did not count as a step
    # a loss above max_loss: the training diverges, nothing is merged, the row is the unedited model's
    diverging = make(max_loss=5.0, diverged_reward=-1.0)
    try:
        before = frozen(diverging)
        _, info0 = diverging.reset(seed=0)
        _, reward, _, _, info = diverging.step(EDITS[0])
        assert info["diverged"] is True and info["merged"] is False and reward == -1.0
        assert info["row"] == info0["row"][:1] and same_weights(diverging, before)
    finally:
        diverging.close()
    # nothing to train on (no self-edit, no passage): nothing merged, the matrix is row 0 all the way down
    idle = make(include_passage=False)
    try:
        info0, steps = episode(idle, seed=0, edits=["", ""])
        assert [s[4]["merged"] for s in steps] == [False, False]
        assert steps[-1][4]["matrix"] == [info0["row"], [info0["row"][0], 0.0], info0["row"]]
        assert [s[1] for s in steps] == [0.0, 0.0]
    finally:
        idle.close()


def test_reset_options_choose_the_articles(env):
    obs, info = env.reset(seed=0, options={"article_indices": [5, 2]})
    assert info["article_indices"] == [5, 2] and obs["title"] == env.articles[5].title and len(info["row"]) == 2
    with pytest.raises(IndexError, match="out of range"):
        env.reset(options={"article_indices": [99]})
    article = {"title": "Q", "context": "Q is R.", "questions": [{"question": "What is Q?", "answer": "R"}]}
    obs, info = env.reset(seed=0, options={"articles": [article]})
    assert info["n_articles"] == 1 and obs["title"] == "Q"
    _, _, terminated, _, info = env.step("Q is R.")
    assert terminated and len(info["matrix"]) == 2


# ------------------------------------------------------------------------------------------- the benchmark
def bench_args(out, *extra):
    settings = ["model=tiny-random", "lora_rank=4", "lora_alpha=8", "epochs=1", "max_sequences=4"]
    args = ["-K", "2", "--out", str(out), "--quiet", "--max-tokens", "8", "--no-reference"]
    args += ["--policy", "implications", "passage"]
    for s in settings + ["max_sequence_tokens=64", "answer_max_tokens=6"]:
        args += ["--set", s]
    return args + list(extra)


def sequences(out):
    return [r for r in read_records(out / "journal.jsonl") if r.get("type") == "sequence"]


def test_forgetting_benchmark_end_to_end_and_resume(tmp_path):
    from benchmarks.forgetting import main

    out = tmp_path / "fg"
    report = main(bench_args(out, "-S", "2"))
    for name in ("results.json", "results.md", "results.png", "journal.jsonl"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert [p["label"] for p in saved["policies"]] == ["implications", "passage"]
    for p in saved["policies"]:
        assert p["n_sequences"] == 2 and p["spec"] in ("prompt:implications", "passage")
        for key in ("mean_over_sequences", "std_over_sequences"):
            for kind in SCORES:
                m = p[key][kind]
                assert len(m) == 3 and all(len(row) == 2 for row in m) and m[1][1] == 0.0
    assert saved["metric"] == "loglik" and saved["seal_published"] is None
    assert report["policies"][0]["writer"] == "written by the model being edited"
    text = (out / "results.md").read_text()
    assert "## implications" in text and "after 2 edits" in text
    records = sequences(out)
    assert len(records) == 4
    # every policy saw the same sequences: the same articles and inner-loop seeds
    by = {(r["policy"], r["sequence"]): r for r in records}
    for s in range(2):
        assert by[("implications", s)]["article_ids"] == by[("passage", s)]["article_ids"]
        assert by[("implications", s)]["seed"] == by[("passage", s)]["seed"]
    assert by[("passage", 0)]["self_edits"] == ["", ""]  # the passage only: the empty self-edit + the passage
    # the mean and sd are over the journal's matrices (sample sd, as SEAL's)
    ll = [by[("passage", s)]["matrices"]["loglik"][2][0] for s in range(2)]
    mean = saved["policies"][1]["mean_over_sequences"]["loglik"][2][0]
    sd = saved["policies"][1]["std_over_sequences"]["loglik"][2][0]
    assert mean == pytest.approx(np.mean(ll)) and sd == pytest.approx(np.std(ll, ddof=1))
    # the first article's retention, paired by sequence: last row minus right after its own edit, with its t interval
    kept = saved["policies"][1]["first_article_retention"]
    changes = [
        by[("passage", s)]["matrices"]["loglik"][2][0] - by[("passage", s)]["matrices"]["loglik"][1][0]
        for s in range(2)
    ]
    half = 12.706 * np.std(changes, ddof=1) / np.sqrt(2)  # t(0.975, 1 df)
    assert kept["per_sequence"] == pytest.approx(changes) and kept["mean"] == pytest.approx(np.mean(changes))
    assert kept["ci"] == pytest.approx([np.mean(changes) - half, np.mean(changes) + half], rel=1e-3)
    assert "first article, after all edits minus right after its own edit, paired by sequence" in text

    # resume: the same command runs nothing; a lost last record is run again, with the same result; -S 3 adds one
    main(bench_args(out, "-S", "2"))
    assert sequences(out) == records
    lines = (out / "journal.jsonl").read_text().splitlines(keepends=True)
    (out / "journal.jsonl").write_text("".join(lines[:-1]) + lines[-1][:40])  # killed while writing it
    main(bench_args(out, "-S", "3"))
    again = sequences(out)
    assert len(again) == 6 and again[:3] == records[:3]
    redone = next(r for r in again if (r["policy"], r["sequence"]) == (records[3]["policy"], records[3]["sequence"]))
    assert redone["matrices"] == records[3]["matrices"] and redone["self_edits"] == records[3]["self_edits"]
    assert {(r["policy"], r["sequence"]) for r in again[4:]} == {("implications", 2), ("passage", 2)}
    # other settings are refused, not mixed into the journal
    with pytest.raises(SystemExit, match="other settings"):
        main(bench_args(out, "-S", "2", "--set", "epochs=2"))
    with pytest.raises(SystemExit, match="other passages"):
        main(bench_args(out, "-S", "2", "-K", "3"))


def test_forgetting_benchmark_bad_options(tmp_path):
    from benchmarks.forgetting import main

    with pytest.raises(SystemExit):
        main(["-K", "0", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit):
        main(["--policy", "none", "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="only 40 articles"):
        main(bench_args(tmp_path / "c", "-K", "41", "-S", "1"))


def test_forgetting_report_shows_seals_published_matrix(tmp_path, shared_data):
    from benchmarks.forgetting import main

    out = tmp_path / "fg"
    args = [a for a in bench_args(out, "-S", "1") if a != "--no-reference"]
    args += ["--seal-reference", str(shared_data / "seal_continual_self_edits.json")]
    args[args.index("implications")] = "passage-as-edit"
    report = main(args)
    ref = report["seal_published"]
    assert len(ref["mean_over_sequences"]) == 9 and len(ref["mean_over_sequences"][0]) == 8
    assert ref["summary"]["first_after_own_edit"] == pytest.approx(0.3825)
    assert ref["summary"]["first_after_all_edits"] == pytest.approx(0.1894)
    text = (out / "results.md").read_text()
    assert "SEAL's published matrix" in text and "0.383 ± 0.218" in text and "SEAL first" in text
