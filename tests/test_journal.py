"""seal_env.journal: durable appends, a torn last line dropped, corruption reported."""

from seal_env.journal import Journal, read_records

import numpy as np
import pytest


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
