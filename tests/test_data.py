"""Reading data files for a task: every format gives the same examples, and every problem names the
file, the rows and the fix."""
from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from classifine.core.data import (
    Examples,
    iter_records,
    label_stats,
    join_fields,
    load_examples,
    parse_label,
    read_table,
    records_to_texts,
    split_validation,
)
from classifine.errors import DataError
from classifine.core.task import parse_task


def make_task(kind: str = "single_label", text=("title", "body"), label_column: str = "label", **extra):
    raw = {"name": f"t-{kind}", "kind": kind, "text": list(text), "label_column": label_column}
    if kind in ("single_label", "multi_label"):
        raw["labels"] = ["pos", "neg", "mixed"]
    elif kind == "ordinal":
        raw["labels"] = [1, 2, 3, 4, 5]
    raw.update(extra)
    return parse_task(raw)


ROWS = [
    {"title": "Great phone", "body": "Battery lasts two days.", "label": "pos"},
    {"title": "Broken", "body": "Screen cracked, \"very\" sad", "label": "neg"},
    {"title": "", "body": "Only a body, with a comma", "label": "mixed"},
    {"title": "Only a title", "body": "", "label": "pos"},
    {"title": "한국어 제목", "body": "본문입니다\n두 줄", "label": "neg"},
]
EXPECTED_TEXTS = [
    "Great phone\nBattery lasts two days.",
    "Broken\nScreen cracked, \"very\" sad",
    "Only a body, with a comma",
    "Only a title",
    "한국어 제목\n본문입니다\n두 줄",
]
EXPECTED_LABELS = ["pos", "neg", "mixed", "pos", "neg"]


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_parquet(path)
    return path


WRITERS = {
    "csv": lambda p, rows: write_csv(p, rows),
    "tsv": lambda p, rows: write_csv(p, rows, delimiter="\t"),
    "jsonl": write_jsonl,
    "parquet": write_parquet,
}


def data_error(fn, *args, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    return info.value


def full_text(err: DataError) -> str:
    return "\n".join([err.summary, *err.problems])


# --- formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_loads_the_same_examples(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / f"train.{fmt}", ROWS)
    ex = load_examples(make_task(), path)
    assert isinstance(ex, Examples)
    assert ex.texts == EXPECTED_TEXTS
    assert ex.labels == EXPECTED_LABELS
    assert len(ex) == len(ROWS)
    assert list(ex.frame.columns) == ["title", "body", "label"]
    assert ex.source == str(path)


def test_text_fields_are_joined_in_spec_order(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS)
    ex = load_examples(make_task(text=("body", "title")), path)
    assert ex.texts[0] == "Battery lasts two days.\nGreat phone"
    assert ex.texts[2] == "Only a body, with a comma"  # empty title skipped, no stray newline
    assert ex.texts[3] == "Only a title"


def test_prediction_data_without_label_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "label"} for r in ROWS]
    path = write_csv(tmp_path / "unlabelled.csv", rows)
    ex = load_examples(make_task(), path, require_labels=False)
    assert ex.labels is None
    assert ex.texts == EXPECTED_TEXTS


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_labels_none_and_na_stay_strings(tmp_path, fmt):
    task = make_task(text=("text",), labels=["None", "NA", "null", "yes"])
    rows = [{"text": f"row {i}", "label": lab} for i, lab in enumerate(["None", "NA", "null", "yes", "None"])]
    path = WRITERS[fmt](tmp_path / f"d.{fmt}", rows)
    ex = load_examples(task, path)
    assert ex.labels == ["None", "NA", "null", "yes", "None"]
    assert all(isinstance(x, str) for x in ex.labels)
    frame = read_table(path)
    assert frame["label"].tolist() == ["None", "NA", "null", "yes", "None"]


def test_multi_label_pipe_json_and_empty_cells(tmp_path):
    task = make_task("multi_label", text=("text",))
    rows = [
        {"text": "one", "label": "pos|neg"},
        {"text": "two", "label": '["neg", "mixed"]'},
        {"text": "three", "label": ""},
        {"text": "four", "label": "mixed"},
        {"text": "five", "label": " pos | mixed "},
    ]
    ex = load_examples(task, write_csv(tmp_path / "m.csv", rows))
    assert ex.labels == [["pos", "neg"], ["neg", "mixed"], [], ["mixed"], ["pos", "mixed"]]


def test_multi_label_custom_separator():
    task = make_task("multi_label", text=("text",), label_separator=";")
    assert parse_label(task, "pos;neg") == (["pos", "neg"], None)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_multi_label_native_lists(tmp_path, fmt):
    task = make_task("multi_label", text=("text",))
    rows = [{"text": "a", "label": ["pos", "neg"]}, {"text": "b", "label": []}, {"text": "c", "label": ["mixed"]}]
    ex = load_examples(task, WRITERS[fmt](tmp_path / f"m.{fmt}", rows))
    assert ex.labels == [["pos", "neg"], [], ["mixed"]]


def test_multi_label_unknown_label_is_reported(tmp_path):
    task = make_task("multi_label", text=("text",))
    rows = [{"text": "a", "label": "pos|bogus"}, {"text": "b", "label": "bogus"}]
    err = data_error(load_examples, task, write_csv(tmp_path / "m.csv", rows))
    assert "'bogus' (2)" in full_text(err)


def test_extraction_reads_json_lists(tmp_path):
    task = make_task("extraction", text=("text",), label_column="ents", entity="company")
    rows = [{"text": "Samsung and LG", "ents": '["Samsung", "LG"]'}, {"text": "nothing", "ents": "[]"}]
    ex = load_examples(task, write_csv(tmp_path / "e.csv", rows))
    assert ex.labels == [["Samsung", "LG"], []]


def test_extraction_plain_string_is_an_error_naming_the_row(tmp_path):
    task = make_task("extraction", text=("text",), label_column="ents", entity="company")
    rows = [{"text": "ok", "ents": '["LG"]'}, {"text": "bad", "ents": "Samsung Electronics"}]
    path = write_csv(tmp_path / "e.csv", rows)
    err = data_error(load_examples, task, path)
    assert "e.csv" in err.summary
    p = next(p for p in err.problems if "Samsung Electronics" in p)
    assert "row(s) 2" in p
    assert "JSON list of strings" in p
    assert '["' in p  # shows the expected form


def test_extraction_list_of_non_strings_is_an_error(tmp_path):
    task = make_task("extraction", text=("text",), label_column="ents")
    rows = [{"text": "x", "ents": "[1, 2]"}]
    err = data_error(load_examples, task, write_csv(tmp_path / "e.csv", rows))
    assert "list of strings" in full_text(err)


@pytest.mark.parametrize("cell,expected", [("3.0", "3"), ("3", "3"), (" 5 ", "5"), (2.0, "2"), (4, "4")])
def test_ordinal_numeric_cells_map_to_labels(cell, expected):
    assert parse_label(make_task("ordinal"), cell) == (expected, None)


def test_ordinal_float_column_from_csv(tmp_path):
    rows = [{"text": f"r{i}", "label": v} for i, v in enumerate(["3.0", "1.0", "5.0", "2"])]
    ex = load_examples(make_task("ordinal", text=("text",)), write_csv(tmp_path / "o.csv", rows))
    assert ex.labels == ["3", "1", "5", "2"]


def test_ordinal_out_of_scale_value_is_unknown(tmp_path):
    rows = [{"text": "a", "label": "3.5"}, {"text": "b", "label": "6"}]
    err = data_error(load_examples, make_task("ordinal", text=("text",)), write_csv(tmp_path / "o.csv", rows))
    text = full_text(err)
    assert "'3.5' (1)" in text and "'6' (1)" in text


# --- errors ----------------------------------------------------------------------------------

def test_missing_column_lists_the_columns_found(tmp_path):
    rows = [{"Title": "x", "text": "y", "label": "pos"}]
    path = write_csv(tmp_path / "cols.csv", rows)
    err = data_error(load_examples, make_task(), path)
    assert "cols.csv" in err.summary
    assert "'title'" in err.summary and "'body'" in err.summary
    text = full_text(err)
    assert "columns found: ['Title', 'text', 'label']" in text
    assert "'title' may be 'Title'" in text  # case-insensitive hint
    assert "text/label_column" in text  # the fix


def test_unknown_labels_listed_with_counts(tmp_path):
    rows = [{"title": "t", "body": "b", "label": lab} for lab in ["pos", "posit1ve", "posit1ve", "negative", "pos"]]
    path = write_csv(tmp_path / "labels.csv", rows)
    err = data_error(load_examples, make_task(), path)
    assert "labels.csv" in err.summary
    p = next(p for p in err.problems if "unknown label" in p)
    assert "'posit1ve' (2)" in p and "'negative' (1)" in p
    assert "'pos' (" not in p
    assert "['pos', 'neg', 'mixed']" in p  # the task's labels
    assert "add them to 'labels'" in p  # the fix


def test_empty_text_rows_are_listed(tmp_path):
    rows = [{"title": "a", "body": "b", "label": "pos"},
            {"title": "", "body": "", "label": "pos"},
            {"title": "c", "body": "d", "label": "neg"},
            {"title": "  ", "body": "\t", "label": "neg"}]
    path = write_csv(tmp_path / "empty_text.csv", rows)
    err = data_error(load_examples, make_task(), path)
    assert "empty_text.csv" in err.summary
    p = next(p for p in err.problems if "empty text" in p)
    assert "row(s) 2, 4" in p  # 1-based data rows
    assert "fill them in or drop" in p


def test_many_empty_rows_are_abbreviated(tmp_path):
    rows = [{"title": "", "body": "", "label": "pos"} for _ in range(20)]
    err = data_error(load_examples, make_task(), write_csv(tmp_path / "e.csv", rows))
    p = next(p for p in err.problems if "empty text" in p)
    assert "(20 rows)" in p
    assert "row(s) 1, 2, 3" in p


def test_empty_label_rows_are_listed(tmp_path):
    rows = [{"title": "a", "body": "b", "label": "pos"}, {"title": "c", "body": "d", "label": ""}]
    err = data_error(load_examples, make_task(), write_csv(tmp_path / "e.csv", rows))
    assert "empty label in row(s) 2" in full_text(err)


def test_cp949_bytes_give_the_line_number(tmp_path):
    path = tmp_path / "korean.csv"
    header_and_first = "title,body,label\nhello,world,pos\n".encode("utf-8")
    path.write_bytes(header_and_first + "제목,본문,neg\n".encode("cp949"))
    err = data_error(load_examples, make_task(), path)
    assert "korean.csv" in err.summary and "UTF-8" in err.summary
    p = err.problems[0]
    assert "line 3" in p
    assert "re-save the file as UTF-8" in p


def test_ff_byte_gives_the_line_number(tmp_path):
    path = tmp_path / "ff.csv"
    path.write_bytes(b"title,body,label\na,b,pos\nc,d,neg\ne,\xff,pos\n")
    err = data_error(read_table, path)
    assert "ff.csv" in err.summary
    assert "0xff" in err.problems[0] and "line 4" in err.problems[0]


def test_empty_file(tmp_path):
    path = tmp_path / "zero.csv"
    path.write_bytes(b"")
    err = data_error(load_examples, make_task(), path)
    assert "zero.csv" in err.summary and "empty" in err.summary
    assert "header row" in full_text(err)


def test_header_only_csv(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("title,body,label\n", encoding="utf-8")
    err = data_error(load_examples, make_task(), path)
    assert "header.csv" in err.summary and "no data rows" in err.summary
    assert "['title', 'body', 'label']" in full_text(err)


def test_json_list_label_in_single_label_task_suggests_multi_label(tmp_path):
    rows = [{"title": "a", "body": "b", "label": "pos"}, {"title": "c", "body": "d", "label": '["pos", "neg"]'}]
    err = data_error(load_examples, make_task(), write_csv(tmp_path / "s.csv", rows))
    p = next(p for p in err.problems if "row(s) 2" in p)
    assert "multi_label" in p


def test_native_list_label_in_single_label_task_suggests_multi_label(tmp_path):
    rows = [{"title": "a", "body": "b", "label": ["pos", "neg"]}, {"title": "c", "body": "d", "label": "pos"}]
    err = data_error(load_examples, make_task(), write_jsonl(tmp_path / "s.jsonl", rows))
    p = next(p for p in err.problems if "row(s) 1" in p)
    assert "multi_label" in p and "list" in p


def test_pipe_label_in_single_label_task_suggests_multi_label(tmp_path):
    rows = [{"title": "a", "body": "b", "label": "pos|neg"}]
    err = data_error(load_examples, make_task(), write_csv(tmp_path / "s.csv", rows))
    assert "multi_label" in full_text(err)


def test_invalid_jsonl_line_gives_the_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"title": "a", "body": "b", "label": "pos"}\n\n{"title": "c", "body": \n[1, 2]\n',
                    encoding="utf-8")
    err = data_error(load_examples, make_task(), path)
    assert "bad.jsonl" in err.summary
    text = full_text(err)
    assert "line 3" in text  # the broken object (the blank line 2 is skipped but counted)
    assert "line 4" in text and "JSON object" in text


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"not really excel")
    err = data_error(load_examples, make_task(), path)
    assert "data.xlsx" in err.summary and ".xlsx" in err.summary
    assert ".csv" in full_text(err) and ".parquet" in full_text(err)


def test_missing_file(tmp_path):
    err = data_error(load_examples, make_task(), tmp_path / "nowhere.csv")
    assert "nowhere.csv" in err.summary and "not found" in err.summary
    assert err.problems


def test_corrupt_parquet_is_a_data_error(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    err = data_error(read_table, path)
    assert "bad.parquet" in err.summary and "parquet" in err.summary


def test_several_problems_reported_together(tmp_path):
    rows = [{"title": "a", "body": "b", "label": "pos"},
            {"title": "", "body": "", "label": "neg"},
            {"title": "c", "body": "d", "label": "unknown_one"}]
    err = data_error(load_examples, make_task(), write_csv(tmp_path / "multi.csv", rows))
    assert len(err.problems) >= 2
    assert any("empty text" in p and "row(s) 2" in p for p in err.problems)
    assert any("'unknown_one' (1)" in p for p in err.problems)
    assert "multi.csv" in err.summary and "2 problem" in err.summary


# --- split_validation ------------------------------------------------------------------------

def balanced_examples(tmp_path, n_classes: int = 5, per_class: int = 10):
    labels = [f"c{i}" for i in range(n_classes)]
    task = make_task(text=("text",), labels=labels)
    rows = [{"text": f"row {c} {j}", "label": c} for j in range(per_class) for c in labels]
    return task, load_examples(task, write_csv(tmp_path / "bal.csv", rows))


def test_split_validation_is_stratified(tmp_path):
    task, ex = balanced_examples(tmp_path)
    train, val = split_validation(task, ex, fraction=0.1, seed=3)
    assert len(train) + len(val) == len(ex) == 50
    assert len(val) == 5
    assert set(val.labels) == set(train.labels) == set(task.label_names)
    assert Counter(val.labels) == {c: 1 for c in task.label_names}
    # the parts are disjoint and cover the file; texts and labels stay paired
    assert sorted(train.texts + val.texts) == sorted(ex.texts)
    pairs = set(zip(ex.texts, ex.labels))
    assert all(p in pairs for p in zip(train.texts + val.texts, train.labels + val.labels))
    assert len(train.frame) == len(train) and len(val.frame) == len(val)
    assert "validation" in val.source


@pytest.mark.parametrize("fraction", [0.2, 0.3])
def test_split_validation_sizes_add_up(tmp_path, fraction):
    task, ex = balanced_examples(tmp_path)
    train, val = split_validation(task, ex, fraction=fraction, seed=0)
    assert len(val) == round(50 * fraction)
    assert len(train) + len(val) == 50
    assert set(val.labels) == set(task.label_names)


def test_split_validation_is_deterministic(tmp_path):
    task, ex = balanced_examples(tmp_path)
    a = split_validation(task, ex, seed=7)
    b = split_validation(task, ex, seed=7)
    assert a[0].texts == b[0].texts and a[1].texts == b[1].texts
    others = [split_validation(task, ex, seed=s)[1].texts for s in range(8, 14)]
    assert any(o != a[1].texts for o in others), "the seed has no effect"


def test_split_validation_multi_label(tmp_path):
    task = make_task("multi_label", text=("text",))
    rows = [{"text": f"r{i}", "label": ["pos", "neg|mixed", "mixed|pos"][i % 3]} for i in range(30)]
    ex = load_examples(task, write_csv(tmp_path / "m.csv", rows))
    train, val = split_validation(task, ex, fraction=0.2, seed=1)
    assert len(train) + len(val) == 30
    assert {tuple(x) for x in val.labels} == {("pos",), ("neg", "mixed"), ("mixed", "pos")}


def test_split_validation_needs_four_rows(tmp_path):
    task = make_task(text=("text",))
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "pos"}]
    ex = load_examples(task, write_csv(tmp_path / "tiny.csv", rows))
    err = data_error(split_validation, task, ex)
    assert "tiny.csv" in err.summary and "3 rows" in err.summary
    assert "at least 4" in full_text(err)


# --- label_stats -----------------------------------------------------------------------------

def test_label_stats_counts_equal_value_counts(tmp_path):
    task = make_task(text=("text",))
    labels = ["pos"] * 7 + ["neg"] * 4 + ["mixed"] * 3
    rows = [{"text": f"r{i}", "label": lab} for i, lab in enumerate(labels)]
    path = write_csv(tmp_path / "s.csv", rows)
    ex = load_examples(task, path)
    stats = label_stats(task, ex)
    expected = pd.read_csv(path, dtype=str)["label"].value_counts().to_dict()
    assert stats["per_label"] == expected
    assert list(stats["per_label"]) == task.label_names  # spec order
    assert stats["rows"] == len(labels)
    assert ex.warnings == []  # 7/3 is not imbalanced enough to warn


def test_label_stats_multi_label_counts(tmp_path):
    task = make_task("multi_label", text=("text",))
    cells = ["pos|neg", "pos", "", "neg|mixed", "pos|mixed"]
    ex = load_examples(task, write_csv(tmp_path / "m.csv", [{"text": f"r{i}", "label": c} for i, c in enumerate(cells)]))
    exploded = pd.Series([c for cell in cells for c in cell.split("|") if c]).value_counts().to_dict()
    assert label_stats(task, ex)["per_label"] == exploded


def test_label_stats_warns_about_imbalance(tmp_path):
    task = make_task(text=("text",), labels=["common", "rare"])
    rows = [{"text": f"r{i}", "label": "common"} for i in range(50)] + [{"text": f"s{i}", "label": "rare"} for i in range(5)]
    ex = load_examples(task, write_csv(tmp_path / "imb.csv", rows))
    stats = label_stats(task, ex)
    assert stats["per_label"] == {"common": 50, "rare": 5}
    assert stats["imbalance_ratio"] == pytest.approx(10.0)
    warning = next(w for w in ex.warnings if "imbalanced" in w)
    assert "'rare'" in warning and "5 rows" in warning
    assert "imb.csv" in warning


def test_label_stats_warns_about_labels_without_rows(tmp_path):
    task = make_task(text=("text",))  # pos, neg, mixed
    rows = [{"text": f"r{i}", "label": ["pos", "neg"][i % 2]} for i in range(10)]
    ex = load_examples(task, write_csv(tmp_path / "gap.csv", rows))
    stats = label_stats(task, ex)
    assert stats["per_label"]["mixed"] == 0
    warning = next(w for w in ex.warnings if "no rows" in w)
    assert "mixed" in warning and "pos" not in warning


def test_label_stats_extraction(tmp_path):
    task = make_task("extraction", text=("text",), label_column="ents")
    rows = [{"text": "a", "ents": '["A", "B"]'}, {"text": "b", "ents": "[]"}, {"text": "c", "ents": '["C"]'}]
    ex = load_examples(task, write_csv(tmp_path / "e.csv", rows))
    assert label_stats(task, ex) == {"rows": 3, "entities": 3, "rows_without_entities": 1}


# --- streaming -------------------------------------------------------------------------------

BIG = [{"id": str(i), "text": f"text number {i}", "label": ["pos", "neg", "mixed"][i % 3]} for i in range(1000)]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_iter_records_streams_in_batches(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / f"big.{fmt}", BIG)
    batches = list(iter_records(path, batch_size=64))
    assert len(batches) == math.ceil(1000 / 64)
    assert all(len(b) == 64 for b in batches[:-1])
    assert len(batches[-1]) == 1000 - 64 * (len(batches) - 1)
    flat = [r for b in batches for r in b]
    assert flat == BIG


def test_iter_records_feeds_records_to_texts(tmp_path):
    task = make_task(text=("title", "body"))
    path = write_jsonl(tmp_path / "in.jsonl", ROWS)
    texts = [t for batch in iter_records(path, batch_size=2) for t in records_to_texts(task, batch)]
    assert texts == EXPECTED_TEXTS


def test_iter_records_missing_and_unsupported(tmp_path):
    err = data_error(lambda: list(iter_records(tmp_path / "gone.csv")))
    assert "gone.csv" in err.summary
    (tmp_path / "x.txt").write_text("hello")
    err = data_error(lambda: list(iter_records(tmp_path / "x.txt")))
    assert ".txt" in err.summary


def test_iter_records_invalid_json_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    err = data_error(lambda: list(iter_records(path)))
    assert "in.jsonl" in err.summary and "line 2" in err.summary


def test_iter_records_undecodable_csv(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"text\nok\n" + "한글".encode("cp949") + b"\n")
    err = data_error(lambda: list(iter_records(path)))
    assert "in.csv" in err.summary and "line 3" in err.problems[0]


def test_iter_records_undecodable_jsonl(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    err = data_error(lambda: list(iter_records(path)))
    assert "in.jsonl" in err.summary and "line 2" in full_text(err)


def test_iter_records_rejects_non_object_jsonl_line(tmp_path):
    task = make_task(text=("text",))
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, [1, 2]])
    with pytest.raises(DataError) as info:
        for batch in iter_records(path):
            records_to_texts(task, batch, source=str(path))
    assert "line 2" in full_text(info.value)


# --- records_to_texts ------------------------------------------------------------------------

def test_records_to_texts_joins_fields():
    task = make_task(text=("title", "body"))
    records = [{"title": "T", "body": "B", "extra": 1}, {"title": None, "body": "only body"}]
    assert records_to_texts(task, records) == ["T\nB", "only body"]


def test_records_to_texts_joins_like_the_table_path():
    # a record (server, JSONL) and the same row read from a table must give the model the same text
    task = make_task(text=("title", "body"))
    records = [{"title": "  padded  ", "body": 7}, {"title": float("nan"), "body": "b"}, {"title": "", "body": "  "},
               {"title": "x\ny", "body": None}, {"title": True, "body": 2.5}]
    frame = pd.DataFrame(records, columns=["title", "body"], dtype=object)
    assert records_to_texts(task, records) == join_fields(frame, ["title", "body"])
    assert records_to_texts(task, records) == ["padded\n7", "b", "", "x\ny", "True\n2.5"]


def test_records_to_texts_names_a_missing_field():
    task = make_task(text=("title", "body"))
    err = data_error(records_to_texts, task, [{"title": "a", "body": "b"}, {"title": "c", "text": "d"}],
                     source="request")
    assert "request" in err.summary
    assert "'body'" in err.summary and "'title'" not in err.summary
    assert "fields found: ['body', 'text', 'title']" in full_text(err)
