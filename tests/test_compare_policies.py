"""seal_env.stats on known inputs, and benchmarks.compare_policies end to end on the tiny-random model."""

import json
import math

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env import stats
from seal_env.articles import load_articles
from seal_env.config import REWARD_KINDS, parse_setting
from seal_env.journal import read_records

import numpy as np
import pytest

from benchmarks.compare_policies import PolicySpec, main
from benchmarks.policy_analysis import JOURNAL, seconds_of

# ------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "p, df, expected",
    [
        (0.975, 4, 2.7764451051977934),  # scipy.stats.t.ppf
        (0.975, 1, 12.706204736174694),
        (0.975, 30, 2.0422724563012378),
        (0.9, 2.5, 1.7302509288071766),
    ],
)
def test_t_quantile_matches_reference(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, rel=1e-9)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-expected, rel=1e-9)


def test_t_cdf_and_betainc_known_values():
    assert stats.t_cdf(-1.3, 7) == pytest.approx(0.11738391769618862, rel=1e-9)
    assert stats.t_cdf(0.0, 3) == 0.5
    assert stats.betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, rel=1e-12)  # 1 - sum_{j<2} C(4,j) .4^j .6^(4-j)


def test_mean_ci_known_input():
    mean, lo, hi = stats.mean_ci([1, 2, 3, 4, 5])
    assert mean == 3.0
    assert (lo, hi) == pytest.approx((1.0367568385224428, 4.963243161477557), rel=1e-9)
    assert stats.mean_ci([0.2, 0.2, 0.2]) == (pytest.approx(0.2), pytest.approx(0.2), pytest.approx(0.2))
    m, lo, hi = stats.mean_ci([7.0])
    assert m == 7.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(x) for x in stats.mean_ci([]))


def test_bootstrap_ci_and_paired_bootstrap():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=400)
    m, lo, hi = stats.bootstrap_ci(x, n_boot=4000, seed=0)
    _, tlo, thi = stats.mean_ci(x)
    assert lo < m < hi and lo == pytest.approx(tlo, abs=0.05) and hi == pytest.approx(thi, abs=0.05)
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)  # deterministic for a seed
    # constant positive differences: the interval is the point and the p-value is the smallest possible
    res = stats.paired_bootstrap([0, 1, 2, 3], [0.5, 1.5, 2.5, 3.5], n_boot=999)
    assert res["mean_diff"] == pytest.approx(0.5) and res["ci_low"] == pytest.approx(0.5)
    assert res["ci_high"] == pytest.approx(0.5) and res["p_value"] == pytest.approx(1 / 1000) and res["n"] == 4
    # differences symmetric around 0: no evidence (p = 1)
    res = stats.paired_bootstrap([0, 0, 0, 0], [-1, 1, -2, 2], n_boot=999)
    assert res["mean_diff"] == 0.0 and res["p_value"] == 1.0 and res["ci_low"] < 0 < res["ci_high"]
    # a clear shift among noise is detected; no shift is not
    a = rng.normal(0, 1, 60)
    assert stats.paired_bootstrap(a, a + 1.0 + rng.normal(0, 0.5, 60))["p_value"] < 0.001
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1, 2], [1])


def test_sign_test_known_inputs():
    res = stats.sign_test([0] * 11, [1] * 9 + [-1] + [0])
    assert (res["wins"], res["losses"], res["ties"]) == (9, 1, 1)
    assert res["p_value"] == pytest.approx(0.021484375)  # 2 * (1 + 10) / 2**10 (scipy binomtest)
    assert stats.sign_test([0] * 12, [1] * 3 + [-1] * 9)["p_value"] == pytest.approx(0.14599609375)
    assert stats.sign_test([1, 2], [1, 2])["p_value"] == 1.0  # all ties
    assert stats.binom_two_sided(5, 10) == 1.0


def test_pooled_sd_dz_and_concordance():
    sd, dof = stats.pooled_sd([[1, 3], [10, 12, 14], [5]])  # ss = 2 + 8 over dof 1 + 2
    assert dof == 3 and sd == pytest.approx(math.sqrt(10 / 3))
    assert math.isnan(stats.pooled_sd([[1], [2]])[0])
    assert stats.effect_size_dz([0, 0, 0], [1, 2, 3]) == pytest.approx(2.0)  # mean 2 / sd 1
    assert stats.effect_size_dz([0, 0], [1, 1]) == math.inf
    assert stats.concordant_pairs(["a", "b", "c"], {"a": 0.0, "b": 2.0, "c": 1.0}) == (2, 3)


# ------------------------------------------------------------------------------------------- the tool


def test_seconds_per_reward():
    assert seconds_of({"seconds_total": 3.0, "seconds_baseline": 1.0}) == 2.0
    assert math.isnan(seconds_of({"seconds_total": 0.01, "cache_hit": True}))  # no training was timed
    assert math.isnan(seconds_of({}))


def test_policy_specs_and_values():
    assert PolicySpec("none").condition == "none" and PolicySpec("passage").condition == "passage"
    p = PolicySpec("replay:/x/gpt-4.1_dev100.json")
    assert (p.label, p.condition) == ("replay:gpt-4.1_dev100", "self-edit")
    q = PolicySpec("gpt=replay:/x/a=b.json")
    assert (q.label, q.spec) == ("gpt", "replay:/x/a=b.json")
    assert PolicySpec("replay:gpt-4.1_dev100=replay:/x/y.json").label == "replay:gpt-4.1_dev100"
    assert PolicySpec("prompt:implications").describe() == "passage + self-edit"
    with pytest.raises(ValueError):
        PolicySpec("bogus")
    assert parse_setting("epochs", "3") == 3 and parse_setting("adam_bias_correction", "false") is False
    assert parse_setting("reward", "loglik") == "loglik" and parse_setting("lora_modules", '["all"]') == ["all"]


TINY_SETTINGS = [
    "--model",
    "tiny-random",
    "--set",
    "epochs=1",
    "--set",
    "lora_rank=4",
    "--set",
    "lora_alpha=8",
    "--set",
    "answer_max_tokens=4",
    "--set",
    "max_sequences=3",
    "--set",
    "max_sequence_tokens=64",
]


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory):
    """A self-edit file in the format of ../shared/data/self_edits/ for the first bundled articles."""
    path = tmp_path_factory.mktemp("replay") / "facts.json"
    arts = load_articles("bundled", limit=3)
    path.write_text(
        json.dumps(
            [
                {
                    "title": a.title,
                    "context": a.context,
                    "completions": [f"1. {a.questions[0].question} {a.questions[0].answer}.", f"{a.title} is notable."],
                }
                for a in arts
            ]
        )
    )
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, replay_file):
    out = tmp_path_factory.mktemp("cmp")
    argv = [
        "--out",
        str(out),
        "--articles",
        "2",
        "--seeds",
        "2",
        "--quiet",
        "--max-tokens",
        "6",
        "--policy",
        "none",
        "--policy",
        "passage",
        "--policy",
        f"facts=replay:{replay_file}",
        "--policy",
        "prompt:implications",
        *TINY_SETTINGS,
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEAL_ENV_REWARD_CACHE", "off")  # train every reward (no persistent reward cache)
        report = main(argv)
        yield out, argv, report


def test_outputs_table_json_png(tiny_run):
    out, _, report = tiny_run
    assert report["run"] == {"evaluated": 16, "skipped": 0}  # 4 policies x 2 articles x 1 self-edit x 2 seeds
    table = (out / "results.md").read_text()
    for label in ("none", "passage", "facts", "prompt:implications"):
        assert f"| {label} |" in table
    assert "Ranking by mean log-lik. gain (low to high)" in table
    assert "accuracy gain [95% CI]" in table and "Paired tests" in table and "Noise" in table
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    data = json.loads((out / "results.json").read_text())
    assert len(data["records"]) == 16
    rec = data["records"][0]
    assert rec["info"]["questions"] and {"answer", "gold", "correct", "f1", "loglik"} <= set(
        rec["info"]["questions"][0]
    )
    # 4 policies -> 6 pairs x 3 metrics
    assert len(data["pairs"]) == 6 * len(REWARD_KINDS)  # 4 policies: 6 pairs, per reward kind


def test_conditions_semantics(tiny_run):
    out, _, report = tiny_run
    recs = [r for r in read_records(out / JOURNAL) if r.get("type") == "result"]
    none = [r for r in recs if r["policy"] == "none"]
    passage = [r for r in recs if r["policy"] == "passage"]
    replay = [r for r in recs if r["policy"] == "facts"]
    # none: nothing trained, reward exactly 0, adapted = baseline
    assert all(r["reward"] == 0.0 and r["info"]["train_steps"] == 0 and r["info"]["n_sequences"] == 0 for r in none)
    assert all(r["info"]["adapter_accuracy"] == r["info"]["baseline_accuracy"] for r in none)
    # the `none` environment shares the main one's baseline quiz: the same baseline for every condition
    base = {r["article_id"]: r["info"]["baseline_loglik"] for r in passage}
    assert all(r["info"]["baseline_loglik"] == base[r["article_id"]] for r in none + replay)
    # passage only: the empty self-edit plus the passage = one training sequence
    assert all(
        r["self_edit"] == "" and r["info"]["n_sequences"] == 1 and r["info"]["train_steps"] == 1 for r in passage
    )
    # replay: passage + self-edit pieces
    assert all(r["info"]["n_sequences"] == r["info"]["self_edit_pieces"] + 1 for r in replay)
    # common random numbers: the same inner-loop seed for every policy on (article, k, s)
    seeds = {(r["article_id"], r["k"], r["seed_index"], r["policy"]): r["seed"] for r in recs}
    for (a, k, s, _), seed in seeds.items():
        assert seeds[(a, k, s, "passage")] == seed
    summ = report["summary"]
    assert summ["none"]["loglik_gain"] == 0.0 and summ["none"]["accuracy_after"] == summ["none"]["accuracy_baseline"]


T_975_DF1 = 12.706204736174694  # scipy.stats.t.ppf(0.975, 1): 2 articles


def test_summary_and_pairs_match_a_hand_computation_from_the_journal(tiny_run):
    """Each policy's gain is the mean over articles of the article's mean gain over its rewards, with a Student-t
    CI over articles; a paired difference is the mean over articles of (b's gain - a's gain)."""
    out, _, report = tiny_run
    recs = [r for r in read_records(out / JOURNAL) if r.get("type") == "result"]
    articles = sorted(
        {r["article_id"] for r in recs}, key=lambda a: next(r["article_index"] for r in recs if r["article_id"] == a)
    )

    def per_article(policy, field):
        return [
            float(np.mean([r["info"][field] for r in recs if r["policy"] == policy and r["article_id"] == a]))
            for a in articles
        ]

    labels = ["none", "passage", "facts", "prompt:implications"]
    for lab in labels:
        row = report["summary"][lab]
        assert (row["n_articles"], row["n_rewards"]) == (2, 4)
        assert row["train_steps"] == np.mean([r["info"]["train_steps"] for r in recs if r["policy"] == lab])
        for m in REWARD_KINDS:
            gains = per_article(lab, f"{m}_gain")
            mean, half = float(np.mean(gains)), T_975_DF1 * float(np.std(gains, ddof=1)) / math.sqrt(2)
            assert row[f"{m}_gain"] == pytest.approx(mean, rel=1e-12, abs=1e-15), (lab, m)
            assert row[f"{m}_gain_ci"] == pytest.approx([mean - half, mean + half], rel=1e-9, abs=1e-12), (lab, m)
            assert row[f"{m}_after"] == pytest.approx(float(np.mean(per_article(lab, f"adapter_{m}"))), rel=1e-12)
    pairs = {(q["a"], q["b"], q["metric"]): q for q in report["pairs"]}
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            for m in REWARD_KINDS:
                ga, gb = per_article(a, f"{m}_gain"), per_article(b, f"{m}_gain")
                diff = [y - x for x, y in zip(ga, gb, strict=True)]
                q = pairs[(a, b, m)]
                assert q["n"] == 2 and q["mean_diff"] == pytest.approx(float(np.mean(diff)), rel=1e-12, abs=1e-15)
                wins, losses = sum(d > 1e-12 for d in diff), sum(d < -1e-12 for d in diff)
                assert (q["sign_wins"], q["sign_losses"], q["sign_ties"]) == (wins, losses, 2 - wins - losses)
    # the passage-only policy beats no adaptation by its own gain, article by article
    assert pairs[("none", "passage", "loglik")]["mean_diff"] == pytest.approx(
        report["summary"]["passage"]["loglik_gain"]
    )


def test_resume_skips_done_work(tiny_run):
    out, argv, _ = tiny_run
    journal = out / JOURNAL
    lines = journal.read_text().splitlines()
    # the same command again: nothing left to do
    again = main(argv)
    assert again["run"] == {"evaluated": 0, "skipped": 16}
    # an interrupted run: drop the results of the last article (one executor call: the same requests are then
    # evaluated together again, so their rounding is the same) and leave a torn line
    results = [i for i, ln in enumerate(lines) if json.loads(ln)["type"] == "result"]
    last_article = json.loads(lines[results[-1]])["article_id"]
    dropped = [i for i in results if json.loads(lines[i])["article_id"] == last_article]
    keep = [ln for i, ln in enumerate(lines) if i not in dropped]
    journal.write_text("\n".join(keep) + "\n" + lines[results[-1]][:40])
    resumed = main(argv)
    assert len(dropped) == 8 and resumed["run"] == {"evaluated": 8, "skipped": 8}
    recs = [r for r in read_records(journal) if r.get("type") == "result"]
    assert len({(r["policy"], r["article_id"], r["k"], r["seed_index"]) for r in recs}) == 16
    # self-edits were not sampled again: one record per (policy, article)
    edits = [r for r in read_records(journal) if r.get("type") == "self_edits"]
    assert len(edits) == 8
    # a resumed run reproduces the dropped rewards exactly
    old = {
        (r["policy"], r["article_id"], r["k"], r["seed_index"]): r["reward"]
        for r in map(json.loads, [lines[i] for i in dropped])
    }
    new = {(r["policy"], r["article_id"], r["k"], r["seed_index"]): r["reward"] for r in recs}
    assert all(new[key] == reward for key, reward in old.items())

    def scores(summary):  # the report without its wall-clock figures
        return {lab: {k: v for k, v in row.items() if k != "seconds_per_reward"} for lab, row in summary.items()}

    assert scores(resumed["summary"]) == scores(again["summary"])  # the same report as the uninterrupted run's
    # other settings in the same folder are refused (SystemExit(message): Python prints it, exit status 1), and
    # the journal stays as it was
    before = journal.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--set", "epochs=2"])
    message = exit_.value.code
    assert isinstance(message, str) and f"{journal} was written with other settings (epochs)" in message
    assert journal.read_bytes() == before
    # report only: no evaluation, same table
    rep = main(["--out", str(out), "--report-only", "--articles", "2", "--seeds", "2", "--quiet", "--no-plot"])
    assert rep["summary"]["facts"]["n_rewards"] == 4


def test_paper_check_analysis_on_a_journal(tiny_run, capsys):
    from benchmarks import paper_check

    out, _, _ = tiny_run
    records = paper_check.load(out)
    order = ["none", "passage", "facts"]
    tab = paper_check.table(records, order, n_articles=2)
    assert len(tab) == 2
    rank = paper_check.ranking(tab, order, ties=set(), n_boot=200)
    assert rank["loglik"]["relations"] == 3 and 0.0 <= rank["loglik"]["p_all_hold"] <= 1.0
    q = paper_check.questions(tab, order)
    assert q["none"]["newly_right"] == q["none"]["newly_wrong"] == 0
    nz = paper_check.noise(records, tab, ["passage", "facts"], n_noise=2)
    assert nz["articles"] == 2 and len(nz["pairs"]) == len(REWARD_KINDS)
    # the passage's seed SD, by hand: two seeds per article, pooled over the two articles
    gains = [
        [r["info"]["loglik_gain"] for r in records if (r["policy"], r["article_id"]) == ("passage", a)] for a in tab
    ]
    assert [len(g) for g in gains] == [2, 2]
    seed_sd = math.sqrt(sum((x - y) ** 2 / 2 for x, y in gains) / 2)
    assert seed_sd > 0 and nz["seed_sd"]["passage"]["loglik"] == pytest.approx(seed_sd, rel=1e-9)
    assert paper_check.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert paper_check.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # scipy, with ties
    rho, n = paper_check.steps_vs_gain(tab, ["passage", "facts"])["loglik"]
    # two conditions per article: each article's rank correlation is the sign of (steps change x gain change)
    signs = [
        np.sign(
            (d["facts"]["train_steps"] - d["passage"]["train_steps"])
            * (d["facts"]["loglik_gain"] - d["passage"]["loglik_gain"])
        )
        for d in tab.values()
    ]
    assert n == sum(s != 0 for s in signs) > 0 and rho == pytest.approx(sum(signs) / n)
    pre = paper_check.leftover_preamble(records, tab, "facts", "passage")
    assert pre["with"] + pre["without"] == 2
    paper_check.main(
        [str(out), "--articles", "2", "--order", *order, "--tie", "passage", "facts", "--preamble", "facts"]
    )
    assert "paper relations holding" in capsys.readouterr().out
