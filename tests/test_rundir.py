"""Run directories of the agents: self-edits that are not valid Unicode journaled and resumed, a full disk that
stops a run resumably, a folder left by a kill while creating a run, and a run that a second process cannot open."""

import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.journal import FolderInUseError, Journal, read_records

import pytest

from agents import restem
from agents.policies import PromptPolicy
from agents.rundir import Run

from conftest import assert_same_run, crashed_copy, journal

ROOT = Path(__file__).resolve().parents[1]
# The tiny preset (its policy updates train on these self-edits too), every reward computed.
ARGS = ["--preset", "tiny", "--no-cache"]
ODD = "\ud800 \udcff a\ud83d\ude00b"  # lone surrogates, and a high + low pair (joined by JSON into one character)


@pytest.fixture(scope="module")
def odd_policy():
    """The tiny model's self-edits with ODD appended to each (a custom policy's or a replay file's text)."""
    propose = PromptPolicy.propose
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            PromptPolicy,
            "propose",
            lambda self, obs, k=1, seed=0: [[s + ODD for s in p] for p in propose(self, obs, k, seed)],
        )
        yield


@pytest.fixture(scope="module")
def reference(odd_policy, tmp_path_factory):
    """An uninterrupted run with ODD self-edits, logged to wandb offline."""
    runs = tmp_path_factory.mktemp("runs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = restem.main(ARGS + ["--wandb-mode", "offline", "--runs-dir", str(runs), "--name", "ref"])
    assert not [w for w in caught if "wandb" in str(w.message)]  # wandb logging never stopped
    return runs / "ref", results


def test_self_edits_that_are_not_unicode_are_journaled_and_logged(reference):
    run_dir, results = reference
    rewards = [r for r in journal(run_dir) if r["event"] == "reward"]
    assert len(rewards) == 11 and all(r["self_edit"].endswith("\ud800 \udcff a\U0001f600b") for r in rewards)
    learned = [r["stats"] for r in journal(run_dir) if r["event"] == "learn"]
    assert len(learned) == 2 and all(s["sft_steps"] > 0 for s in learned)  # the policy trained on such text
    assert json.loads((run_dir / "results.json").read_text())["rounds"] == results["rounds"]
    tables = list(run_dir.glob("wandb/offline-run-*/files/media/table/**/*.table.json"))
    assert len(tables) == 3 and all("\\ud800" in t.read_text() for t in tables)  # one self-edit table a round


def test_a_run_killed_after_journaling_them_resumes_to_the_same_result(reference, tmp_path):
    """Killed in round 2 (after its first article's rewards, while writing the next record): the resumed run reads
    the journaled self-edits back and ends where the uninterrupted run did."""
    ref_dir, ref = reference
    records = journal(ref_dir)
    cut = next(i for i, r in enumerate(records) if (r["event"], r["round"]) == ("reward", 2)) + 2
    run_dir = crashed_copy(ref_dir, tmp_path / "crash", cut, torn=True)
    resumed = restem.main(["--resume", str(run_dir), "--wandb-mode", "disabled"])
    assert_same_run(run_dir, resumed, ref_dir, ref)


def test_a_full_disk_stops_the_run_and_resume_completes_it(reference, tmp_path, monkeypatch, capsys):
    """ENOSPC while a reward record is written (half of it reached the disk): the run stops with an error that
    names the journal and the cause, the journal holds complete records only, and --resume then ends where the
    uninterrupted run did."""
    ref_dir, ref = reference
    write, writes = Journal._write, []

    def full_disk(self, data):
        writes.append(data)
        if len(writes) == 7:  # round 1's second article, its first reward
            write(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, data)

    monkeypatch.setattr(Journal, "_write", full_disk)
    with pytest.raises(SystemExit, match=r"journal.jsonl: No space left on device.*resume"):
        restem.main(ARGS + ["--wandb-mode", "disabled", "--runs-dir", str(tmp_path), "--name", "full"])
    run_dir = tmp_path / "full"
    assert f"--resume {run_dir}" in capsys.readouterr().err
    text = (run_dir / "journal.jsonl").read_bytes()
    assert text.endswith(b"\n") and [r["event"] for r in read_records(run_dir / "journal.jsonl")] == [
        "samples",
        "reward",
        "round",
        "samples",
        "reward",
        "reward",
    ]
    assert not (run_dir / "results.json").exists()
    monkeypatch.undo()
    resumed = restem.main(["--resume", str(run_dir), "--wandb-mode", "disabled"])
    assert_same_run(run_dir, resumed, ref_dir, ref)


def python(code: str, *args: str, **popen) -> subprocess.Popen:
    """A new Python process running ``code`` with ``args``, this checkout first on its path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True, **popen)


HOLD = """
import sys
from agents.rundir import Run
run = Run(sys.argv[1])
print("open", flush=True)
sys.stdin.read()
run.close()
"""


def test_a_run_that_another_process_has_open_is_refused(reference, tmp_path):
    """A second process resuming (or creating) a run that a first one has open stops with an error naming the
    folder; once the first one ends, the run resumes."""
    ref_dir, ref = reference
    run_dir = crashed_copy(ref_dir, tmp_path / "r", 6)
    with python(HOLD, str(run_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout.readline() == "open\n"
            with pytest.raises(SystemExit, match=f"{run_dir} is in use by another process"):
                restem.main(["--resume", str(run_dir), "--wandb-mode", "disabled"])
            with pytest.raises(FolderInUseError, match=f"{run_dir} is in use by another process"):
                Run.create(run_dir, {})
        finally:
            holder.communicate("", timeout=60)
    assert len(journal(run_dir)) == 6  # the refused process wrote nothing
    resumed = restem.main(["--resume", str(run_dir), "--wandb-mode", "disabled"])
    assert_same_run(run_dir, resumed, ref_dir, ref)


CREATE = """
import resource, signal, sys
from agents.rundir import Run
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG) after writing what fits
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
try:
    Run.create(sys.argv[1], {"algorithm": "restem", "config": {"x": "x" * 5000}})
except OSError as e:
    print("failed", e.errno)
"""


def test_a_run_folder_whose_creation_failed_is_not_a_run_and_can_be_created_again(tmp_path):
    """Creating a run stops while config.json is written (a full disk; a kill there leaves the same at most a
    temporary file): the folder holds no config.json, so --resume refuses it as not a run directory and a new run
    may be created in it. A folder with a journal but no config.json is refused as a new run's folder."""
    folder = tmp_path / "half"
    with python(CREATE, str(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=120)
    assert out.split() == ["failed", str(errno.EFBIG)], err
    assert not (folder / "config.json").exists() and not list(folder.glob("*.tmp*"))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Run(folder)
    Run.create(folder, {"algorithm": "restem", "config": {}}).close()
    assert json.loads((folder / "config.json").read_text()) == {"algorithm": "restem", "config": {}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "journal.jsonl").write_text('{"event": "round", "round": 0}\n')
    with pytest.raises(FileExistsError, match="journal.jsonl but no config.json"):
        Run.create(tmp_path / "old", {})


def test_compare_policies_journals_replayed_self_edits_that_are_not_unicode_and_resumes(tmp_path):
    """A replay file whose self-edits hold lone surrogates (JSON escapes): compare_policies journals them, writes
    its report, and a second invocation finds every reward in the journal."""
    from seal_env.articles import load_articles

    from benchmarks.compare_policies import main

    article = load_articles("bundled", limit=1)[0]
    edit = f"{article.title} \ud800 is notable \udcff."
    replay = tmp_path / "odd.json"
    replay.write_text(json.dumps([{"title": article.title, "context": article.context, "completions": [edit]}]))
    argv = ["--out", str(tmp_path / "cmp"), "--articles", "1", "--quiet", "--no-plot", "--bootstrap", "100"]
    argv += ["--policy", f"odd=replay:{replay}", "--model", "tiny-random", "--set", "epochs=1", "--set", "lora_rank=4"]
    argv += ["--set", "answer_max_tokens=4", "--set", "max_sequences=3", "--set", "max_sequence_tokens=64"]
    assert main(argv)["run"] == {"evaluated": 1, "skipped": 0}
    records = read_records(tmp_path / "cmp" / "journal.jsonl")
    assert [r["self_edits"] for r in records if r["type"] == "self_edits"] == [[edit]]
    assert [r["self_edit"] for r in records if r["type"] == "result"] == [edit]
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["records"][0]["self_edit"] == edit
    assert main(argv)["run"] == {"evaluated": 0, "skipped": 1}


HOLD_FOLDER = """
import sys
from seal_env.journal import FolderLock
lock = FolderLock(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def test_benchmark_output_folders_in_use_by_another_process_are_refused(tmp_path, capsys):
    """compare_policies and learning_curve stop at once, naming the folder, while another process uses their --out."""
    from benchmarks import compare_policies, learning_curve

    with python(HOLD_FOLDER, str(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout.readline() == "locked\n"
            with pytest.raises(SystemExit, match=f"{tmp_path} is in use by another process"):
                compare_policies.main(["--out", str(tmp_path), "--model", "tiny-random", "--quiet"])
            with pytest.raises(SystemExit):
                learning_curve.main(["--out", str(tmp_path), "--preset", "tiny", "--runs", "1"])
            assert f"{tmp_path} is in use by another process" in capsys.readouterr().err
        finally:
            holder.communicate("", timeout=60)
    assert not (tmp_path / "journal.jsonl").exists() and not list(tmp_path.glob("run-*"))
