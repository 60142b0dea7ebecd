"""The task spec: valid specs of every kind parse, and every invalid spec gives one TaskError that
names each problem together with its fix."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from classifine.errors import TaskError
from classifine.core.task import KINDS, TaskSpec, load_task, parse_task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SPECS = sorted(ROOT.glob("examples/*/task.yaml"))


def write_spec(tmp_path: Path, text: str, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def base(kind: str = "single_label", **extra) -> dict:
    raw = {"name": "t", "kind": kind, "text": ["title", "body"], "label_column": "label"}
    if kind in ("single_label", "multi_label", "ordinal"):
        raw["labels"] = ["a", "b", "c"]
    raw.update(extra)
    return raw


def problems_of(raw, **kw) -> list[str]:
    with pytest.raises(TaskError) as info:
        parse_task(raw, **kw)
    assert info.value.problems, info.value.summary
    return info.value.problems


def one_problem_matching(problems: list[str], *needles: str) -> str:
    """The problem that contains every needle (case-insensitive); fails listing all problems."""
    hits = [p for p in problems if all(n.lower() in p.lower() for n in needles)]
    assert hits, f"no problem mentions {needles}: {problems}"
    return hits[0]


# --- the examples in the repo ---------------------------------------------------------------

def test_the_repo_has_example_specs():
    assert EXAMPLE_SPECS, "examples/*/task.yaml not found"


@pytest.mark.parametrize("path", EXAMPLE_SPECS, ids=lambda p: p.parent.name)
def test_every_example_spec_loads(path):
    spec = load_task(path)
    assert spec.kind in KINDS
    assert spec.name
    assert spec.text
    # the data files the example points at lie next to it
    for split in ("train", "validation", "test"):
        p = spec.data_path(split)
        if p is not None:
            assert p.is_file(), p


def test_news_example_content():
    spec = load_task(ROOT / "examples/news_category/task.yaml")
    assert spec.kind == "single_label"
    assert spec.text == ["title", "body"]
    assert spec.label_names[:3] == ["economic", "economic_incident", "economic_crime"]
    assert len(spec.label_names) == 6
    assert all(spec.labels.values()), "every label of the example has a description"
    assert spec.subsets["economic"].label_in == ["economic", "economic_incident", "economic_crime"]


# --- valid specs of each kind -----------------------------------------------------------------

def test_single_label_parses():
    spec = parse_task(base("single_label", instruction="Classify.", slices="lang"))
    assert isinstance(spec, TaskSpec)
    assert spec.kind == "single_label"
    assert spec.label_names == ["a", "b", "c"]
    assert spec.labels == {"a": "", "b": "", "c": ""}
    assert spec.slices == ["lang"]
    assert spec.threshold is None and spec.top_k is None


def test_multi_label_with_threshold_parses(tmp_path):
    path = write_spec(tmp_path, """
        name: tags
        kind: multi_label
        text: body
        label_column: tags
        labels: [sports, business, weather]
        threshold: 0.4
        label_separator: ";"
    """)
    spec = load_task(path)
    assert spec.kind == "multi_label"
    assert spec.threshold == pytest.approx(0.4)
    assert spec.label_separator == ";"
    assert spec.label_names == ["sports", "business", "weather"]


def test_multi_label_with_top_k_parses():
    spec = parse_task(base("multi_label", top_k=2))
    assert spec.top_k == 2


def test_ordinal_int_labels_become_strings_in_order(tmp_path):
    path = write_spec(tmp_path, """
        name: stars
        kind: ordinal
        text: review
        label_column: stars
        labels: [1, 2, 3, 4, 5]
        threshold: 4
    """)
    spec = load_task(path)
    assert spec.kind == "ordinal"
    assert spec.label_names == ["1", "2", "3", "4", "5"]
    assert all(isinstance(k, str) for k in spec.labels)
    assert spec.threshold is not None


def test_ordinal_threshold_names_a_label(tmp_path):
    path = write_spec(tmp_path, """
        name: stars
        kind: ordinal
        text: review
        label_column: stars
        labels: [1, 2, 3, 4, 5]
        threshold: 4
    """)
    spec = load_task(path)
    # report.py passes str(task.threshold) to metrics.ordinal: it must name a label, not '4.0'
    assert str(spec.threshold) in spec.labels
    assert str(spec.threshold) == "4"


def test_extraction_parses():
    spec = parse_task({"name": "orgs", "kind": "extraction", "text": "body", "label_column": "companies",
                       "entity": "company", "min_confidence": 0.5, "normalize": ["casefold", "whitespace"]})
    assert spec.kind == "extraction"
    assert spec.entity == "company"
    assert spec.min_confidence == 0.5
    assert spec.normalize == ["casefold", "whitespace"]
    assert spec.labels == {}


def test_labels_as_mapping_keep_descriptions_and_order(tmp_path):
    path = write_spec(tmp_path, """
        name: news
        kind: single_label
        text: body
        label_column: y
        labels:
          zeta: the last letter
          alpha: the first letter
          mid:
    """)
    spec = load_task(path)
    # spec order, not sorted
    assert spec.label_names == ["zeta", "alpha", "mid"]
    assert spec.labels["zeta"] == "the last letter"
    assert spec.labels["alpha"] == "the first letter"
    assert spec.labels["mid"] == ""


def test_text_string_becomes_one_element_list():
    spec = parse_task(base(text="body"))
    assert spec.text == ["body"]


def test_data_path_resolves_relative_to_spec_folder(tmp_path, monkeypatch):
    folder = tmp_path / "spec_dir"
    folder.mkdir()
    write_spec(folder, """
        name: t
        kind: single_label
        text: body
        label_column: y
        labels: [a, b]
        data:
          train: data/train.csv
          test: /abs/test.csv
    """)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    spec = load_task(Path("spec_dir") / "task.yaml")
    assert spec.data_path("train").resolve() == (folder / "data" / "train.csv").resolve()
    assert spec.data_path("test") == Path("/abs/test.csv")
    assert spec.data_path("validation") is None


# --- error cases: each problem names the issue and the fix -------------------------------------

def test_unknown_kind_lists_valid_kinds():
    p = one_problem_matching(problems_of(base("single_lable")), "single_lable")
    for kind in KINDS:
        assert kind in p


def test_empty_labels():
    p = one_problem_matching(problems_of(base(labels=[])), "labels", "empty")
    assert "at least two" in p


def test_one_label_for_single_label():
    p = one_problem_matching(problems_of(base(labels=["only"])), "one label", "'only'")
    assert "at least two" in p


def test_duplicate_labels_in_a_list():
    p = one_problem_matching(problems_of(base(labels=["a", "b", "a"])), "duplicate")
    assert "'a'" in p and "'b'" not in p
    assert "once" in p


def test_duplicate_labels_in_a_list_after_str_conversion():
    # 1 and "1" are the same label once labels are strings
    one_problem_matching(problems_of(base("ordinal", labels=[1, "1", 2])), "duplicate", "1")


def test_duplicate_labels_as_mapping_keys(tmp_path):
    path = write_spec(tmp_path, """
        name: t
        kind: single_label
        text: body
        label_column: y
        labels:
          a: first a
          b: bee
          a: second a
    """)
    # plain PyYAML would silently keep only the last 'a'
    assert len(yaml.safe_load(path.read_text())["labels"]) == 2
    with pytest.raises(TaskError) as info:
        load_task(path)
    p = one_problem_matching(info.value.problems, "duplicate", "a")
    assert "line 8" in p  # the line of the second 'a'
    assert "once" in p


def test_multi_label_threshold_out_of_range():
    p = one_problem_matching(problems_of(base("multi_label", threshold=1.5)), "threshold", "1.5")
    assert "between 0 and 1" in p


def test_ordinal_threshold_not_a_label():
    raw = base("ordinal", labels=[1, 2, 3, 4, 5], threshold=7)
    p = one_problem_matching(problems_of(raw), "threshold", "7")
    assert "not one of" in p and "'5'" in p


def test_unknown_top_level_key_suggests_the_right_one(tmp_path):
    path = write_spec(tmp_path, """
        name: t
        kind: single_label
        text: body
        label_column: y
        labels: [a, b]
        lables: [a, b]
    """)
    with pytest.raises(TaskError) as info:
        load_task(path)
    p = one_problem_matching(info.value.problems, "lables")
    assert "did you mean 'labels'" in p


def test_unknown_key_inside_data_suggests_test():
    p = one_problem_matching(problems_of(base(data={"train": "t.csv", "tset": "x.csv"})), "tset")
    assert "data.tset" in p
    assert "'test'" in p


def test_top_k_on_single_label():
    p = one_problem_matching(problems_of(base(top_k=2)), "top_k")
    assert "multi_label" in p and "remove" in p


def test_min_confidence_on_single_label():
    p = one_problem_matching(problems_of(base(min_confidence=0.3)), "min_confidence")
    assert "extraction" in p and "remove" in p


def test_labels_on_extraction():
    raw = {"name": "e", "kind": "extraction", "text": "body", "label_column": "ents", "labels": ["org"]}
    p = one_problem_matching(problems_of(raw), "labels", "extraction")
    assert "entity" in p


def test_subset_naming_an_unknown_label():
    raw = base(subsets={"ab": {"label_in": ["a", "zzz"]}})
    p = one_problem_matching(problems_of(raw), "subset", "ab", "zzz")
    assert "'a'" not in p.split("use labels")[0]  # only the unknown one is listed as unknown
    assert "use labels from" in p


def test_label_column_also_a_text_field():
    p = one_problem_matching(problems_of(base(label_column="body")), "label_column", "'body'")
    assert "text field" in p


def test_invalid_yaml_names_the_file(tmp_path):
    path = write_spec(tmp_path, "name: t\nkind: [single_label\ntext: body\n", name="broken.yaml")
    with pytest.raises(TaskError) as info:
        load_task(path)
    assert "broken.yaml" in info.value.summary
    assert "YAML" in info.value.summary
    assert any("line" in p and "Fix" in p for p in info.value.problems)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TaskError) as info:
        load_task(missing)
    assert "nope.yaml" in info.value.summary and "not found" in info.value.summary
    assert info.value.problems  # the fix


def test_yaml_that_is_a_list(tmp_path):
    path = write_spec(tmp_path, "- name: t\n- kind: single_label\n", name="list.yaml")
    with pytest.raises(TaskError) as info:
        load_task(path)
    assert "list.yaml" in info.value.summary
    assert "mapping" in info.value.summary and "list" in info.value.summary


def test_missing_required_key():
    raw = base()
    del raw["label_column"]
    p = one_problem_matching(problems_of(raw), "label_column")
    assert "required" in p


def test_task_error_is_rendered_with_every_problem():
    with pytest.raises(TaskError) as info:
        parse_task(base(top_k=2, min_confidence=0.3))
    text = str(info.value)
    assert info.value.summary in text
    for p in info.value.problems:
        assert p in text


# --- all problems at once --------------------------------------------------------------------

def test_all_problems_are_reported_at_once(tmp_path):
    path = write_spec(tmp_path, """
        name: t
        kind: multi_label
        text: [body, tags]
        label_column: tags
        labels: [a, b, a]
        threshold: 1.5
        min_confidence: 0.2
        lables: [x]
        data:
          tset: test.csv
    """)
    with pytest.raises(TaskError) as info:
        load_task(path)
    problems = info.value.problems
    assert len(problems) >= 6, problems
    one_problem_matching(problems, "duplicate")
    one_problem_matching(problems, "threshold", "1.5")
    one_problem_matching(problems, "min_confidence")
    one_problem_matching(problems, "lables")
    one_problem_matching(problems, "tset")
    one_problem_matching(problems, "label_column", "text field")
    assert str(len(problems)) in info.value.summary


# --- round trip ------------------------------------------------------------------------------

ROUND_TRIP = {
    "single_label": base("single_label", labels={"a": "first", "b": "", "c": "third"}, instruction="Pick one.",
                         slices=["lang"], subsets={"ab": {"label_in": ["a", "b"]}},
                         data={"train": "train.csv", "test": "test.csv"}),
    "multi_label": base("multi_label", threshold=0.4, top_k=2, label_separator=";"),
    "ordinal": base("ordinal", labels=["1", "2", "3", "4", "5"], threshold="4"),
    "extraction": {"name": "e", "kind": "extraction", "text": "body", "label_column": "ents", "entity": "company",
                   "min_confidence": 0.5, "normalize": ["casefold", "strip_suffixes"]},
}


@pytest.mark.parametrize("kind", list(ROUND_TRIP))
def test_to_yaml_round_trips(kind):
    spec = parse_task(ROUND_TRIP[kind])
    again = parse_task(yaml.safe_load(spec.to_yaml()))
    assert again == spec
    assert again.label_names == spec.label_names


def test_to_yaml_round_trips_ordinal_with_int_threshold(tmp_path):
    path = write_spec(tmp_path, """
        name: stars
        kind: ordinal
        text: review
        label_column: stars
        labels: [1, 2, 3, 4, 5]
        threshold: 4
    """)
    spec = load_task(path)
    again = parse_task(yaml.safe_load(spec.to_yaml()))
    assert again == spec.model_copy(update={"base_dir": None})  # base_dir is not part of the YAML
    assert str(again.threshold) == "4"


@pytest.mark.parametrize("entity", ['', 'com"panies', "a\\b"])
def test_extraction_entity_must_be_a_plain_json_key(entity):
    with pytest.raises(TaskError) as e:
        parse_task({"name": "x", "kind": "extraction", "text": "t", "label_column": "y", "entity": entity})
    assert "JSON key" in str(e.value)
