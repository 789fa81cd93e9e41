"""seal_env.journal: durable appends, a torn last line dropped, corruption reported; any str written and read back
identical; whole files replaced atomically; failed writes (full disk) leaving complete records; folder locks held
against other processes."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

from seal_env.journal import (
    FolderInUseError,
    FolderLock,
    Journal,
    JournalWriteError,
    read_json,
    read_records,
    write_json_atomic,
)

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_append_read_and_torn_last_line(tmp_path):
    path = tmp_path / "sub" / "journal.jsonl"
    assert read_records(path) == []
    with Journal(path) as journal:
        journal.append({"a": 1})
        journal.append({"b": np.float32(0.5), "c": np.arange(2)})  # numpy values become plain JSON
    assert read_records(path) == [{"a": 1}, {"b": 0.5, "c": [0, 1]}]
    with open(path, "a") as f:
        f.write('{"d": 3, "cut sh')  # a kill mid-write
    assert read_records(path) == [{"a": 1}, {"b": 0.5, "c": [0, 1]}]
    with Journal(path) as journal:  # reopening cuts the torn line off, so the next record has a line of its own
        journal.append({"d": 3})
    assert read_records(path) == [{"a": 1}, {"b": 0.5, "c": [0, 1]}, {"d": 3}]


def test_a_corrupt_complete_line_is_an_error(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match=r"journal.jsonl:2: corrupt"):
        read_records(path)


# Text that is not valid Unicode: lone surrogates (as from a replay file, a custom policy or a completion), alone,
# inside words, as dict keys, next to non-ASCII text; and a surrogate escape of a non-UTF-8 byte (os.fsdecode).
ODD = ["\ud800", "a\udfffb", "é \udc80 ü", "\udbff\ud800", "\udcff" * 3, "ok"]


def python(code: str, *args: str, **popen) -> subprocess.Popen:
    """A new Python process running ``code`` with ``args``, this checkout first on its path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True, **popen)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new Python process to its end."""
    with python(code, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_any_str_is_journaled_and_read_back_identical(tmp_path):
    """Lone surrogates are written as \\uXXXX escapes and read back as the same str; the file is valid UTF-8 and
    keeps other non-ASCII text as it is."""
    path = tmp_path / "journal.jsonl"
    record = {"self_edits": ODD, "by_key": {s: s for s in ODD}, "n": 1}
    with Journal(path) as journal:
        assert journal.append(record) == record
        journal.append({"after": "x"})
    assert read_records(path) == [record, {"after": "x"}]
    text = path.read_bytes().decode("utf-8")  # strict UTF-8
    assert "é" in text and "\\ud800" in text and "\\udc80" in text
    with Journal(path) as journal:  # a resumed run appends after them
        journal.append({"resumed": "\ud800"})
    assert read_records(path)[-1] == {"resumed": "\ud800"}


def test_a_surrogate_pair_is_read_back_as_the_character_it_encodes(tmp_path):
    """A high surrogate followed by a low one is, in JSON, one character: append returns what will be read back."""
    with Journal(tmp_path / "j.jsonl") as journal:
        assert journal.append({"s": "a\ud83d\ude00b"}) == {"s": "a\U0001f600b"}
    assert read_records(tmp_path / "j.jsonl") == [{"s": "a\U0001f600b"}]


def test_write_json_atomic_writes_any_str(tmp_path):
    obj = {"odd": ODD, "value": np.float32(0.5)}
    write_json_atomic(tmp_path / "a.json", obj)
    assert json.loads((tmp_path / "a.json").read_bytes().decode("utf-8")) == {"odd": ODD, "value": 0.5}
    (tmp_path / "torn.json").write_text('{"a": [1, ')
    with pytest.raises(ValueError, match=r"torn.json is not valid JSON"):
        read_json(tmp_path / "torn.json")


# A process whose file writes fail part-way, as on a full disk or at a quota: writes past ``limit`` bytes of a file
# get EFBIG after writing what fits (RLIMIT_FSIZE; SIGXFSZ ignored so that the write fails instead of the process).
LIMITED = """
import resource, signal, sys
def limit(size):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
"""


def test_a_file_rewrite_that_fails_part_way_leaves_the_old_file(tmp_path):
    """A write that fails half-way (the process could as well have been killed there) leaves the old file whole and
    no other file; so does a failure just before the rename."""
    path = tmp_path / "results.json"
    path.write_text('{"old": 1}')
    code = LIMITED + (
        "from seal_env.journal import write_json_atomic\n"
        "limit(1000)\n"
        "try:\n"
        "    write_json_atomic(sys.argv[1], {'new': 'x' * 5000})\n"
        "except OSError as e:\n"
        "    print('failed', e.errno)\n"
    )
    done = run_python(code, str(path))
    assert done.stdout.split() == ["failed", str(errno.EFBIG)], done.stderr
    assert path.read_text() == '{"old": 1}' and sorted(os.listdir(tmp_path)) == ["results.json"]


def test_a_failed_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"old": 1})

    def killed(src, dst):
        raise OSError(errno.EIO, "killed before the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(OSError, match="killed before the rename"):
        write_json_atomic(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1} and sorted(os.listdir(tmp_path)) == ["results.json"]


def test_a_journal_write_that_fails_part_way_leaves_complete_records_and_resumes(tmp_path):
    """A record that does not fit (the write stops part-way) raises an error naming the journal and the cause, the
    journal is cut back to its complete records, and once there is room again the run appends where it was."""
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        journal.append({"n": 1})
        journal.append({"n": 2})
    before = path.read_bytes()
    code = LIMITED + (
        "import os\n"
        "from seal_env.journal import Journal\n"
        "journal = Journal(sys.argv[1])\n"
        "limit(os.path.getsize(sys.argv[1]) + 100)\n"
        "try:\n"
        "    journal.append({'n': 3, 'text': 'x' * 1000})\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, e.errno, e, flush=True)\n"
        "print('size', os.path.getsize(sys.argv[1]), flush=True)\n"
        "limit(resource.RLIM_INFINITY)\n"
        "journal.append({'n': 4})\n"
    )
    done = run_python(code, str(path))
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith(f"JournalWriteError {errno.EFBIG} ") and str(path) in first
    assert os.strerror(errno.EFBIG) in first and "resume" in first
    assert second == f"size {len(before)}"  # nothing of the record that did not fit
    assert read_records(path) == [{"n": 1}, {"n": 2}, {"n": 4}]


def test_a_full_disk_error_names_the_journal_and_the_cause(tmp_path, monkeypatch):
    """ENOSPC after half a record reached the disk: no torn line is left, and a new Journal appends fine."""
    path = tmp_path / "journal.jsonl"
    write = Journal._write

    def full_disk(self, data):
        write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with Journal(path) as journal:
        journal.append({"n": 1})
        monkeypatch.setattr(Journal, "_write", full_disk)
        with pytest.raises(JournalWriteError, match="No space left on device") as err:
            journal.append({"n": 2, "text": "x" * 100})
        assert err.value.errno == errno.ENOSPC and str(path) in str(err.value)
        assert path.read_text() == '{"n": 1}\n'
    monkeypatch.undo()
    with Journal(path) as journal:
        journal.append({"n": 2})
    assert read_records(path) == [{"n": 1}, {"n": 2}]


HOLD = """
import sys
from seal_env.journal import FolderLock
lock = FolderLock(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_folder_locked_by_another_process_is_refused_until_it_ends(tmp_path):
    holder = python(HOLD, str(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(FolderInUseError, match=f"{tmp_path} is in use by another process"):
            FolderLock(tmp_path)
    finally:
        holder.communicate("", timeout=60)  # it ends, and its lock with it
    with FolderLock(tmp_path):
        pass
