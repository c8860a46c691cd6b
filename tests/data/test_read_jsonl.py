"""`read_jsonl` gives the rows `datasets.load_dataset("json")` gives, without pyarrow."""

import json
import subprocess
import sys

import pytest

from quartet.data.sources import DataError, load_rows, read_jsonl

ROWS = [
    {"prompt": "Question: 2 + 3?", "answer": 5, "score": 1.5, "tags": ["a", "b"]},
    {"prompt": "Ünïcode ✓", "answer": 7, "score": 2,
     "messages": [{"role": "user", "content": "hi"}]},
    {"prompt": "no answer", "score": None, "flag": True},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    return path


def test_rows_match_what_datasets_reads(tmp_path):
    import datasets

    path = _write(tmp_path / "d.jsonl", ROWS)
    want = [dict(r) for r in datasets.load_dataset("json", data_files=str(path),
                                                   split="train",
                                                   cache_dir=str(tmp_path / "cache"))]
    got = read_jsonl(path)
    assert got == want
    assert [type(r["score"]) for r in got] == [type(r["score"]) for r in want]
    assert got[1]["score"] == 2.0 and isinstance(got[1]["score"], float)  # ints among floats
    assert got[2]["answer"] is None and got[0]["flag"] is None  # every row, every column
    assert load_rows(str(path))[0].rows == want


def test_a_bad_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: a row must be a JSON object"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_reading_a_jsonl_file_imports_neither_datasets_nor_pyarrow(tmp_path):
    path = _write(tmp_path / "d.jsonl", ROWS)
    code = ("import sys; from quartet.data.sources import load_rows; "
            f"load_rows({str(path)!r}); "
            "print(sorted(m for m in ('datasets', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert out == "[]"
