"""The task spec: one YAML file that describes the job (README.md, "The task spec").

Everything else (prompts, heads, metrics, schemas) is derived from a ``TaskSpec``. ``load_task``
collects every problem of a spec (YAML syntax, unknown keys, wrong types, cross-field rules) and
raises one ``TaskError`` that lists them all with the fix.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import TaskError

KINDS = ("single_label", "multi_label", "ordinal", "extraction")
NORMALIZERS = ("casefold", "whitespace", "strip_suffixes")


class Subset(BaseModel):
    """Rows reported separately: those whose reference is one of ``label_in`` (recall into the
    group), or those whose data column ``column`` holds one of ``values`` (the task's headline rate
    on them; e.g. the economic articles of a company-extraction task, which has no labels)."""

    model_config = ConfigDict(extra="forbid")
    label_in: list[str] | None = None
    column: str | None = None
    values: list[str] | None = None

    @field_validator("label_in", "values", mode="before")
    @classmethod
    def _strs(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v


class DataPaths(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: str | None = None
    validation: str | None = None
    test: str | None = None


class TaskSpec(BaseModel):
    """A validated task. ``labels`` maps each label to its description (empty when none was given),
    in the order of the spec; for ordinal tasks that order is the scale, lowest first."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["single_label", "multi_label", "ordinal", "extraction"]
    text: list[str] = Field(min_length=1)
    label_column: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    instruction: str | None = None
    output: Literal["json", "label"] = "label"
    slices: list[str] = Field(default_factory=list)
    subsets: dict[str, Subset] = Field(default_factory=dict)
    # multi_label: probability threshold (0-1) or top_k; ordinal: the label at and above which a
    # row counts as positive for the binary F1.
    threshold: int | float | str | None = None  # int first: an ordinal label 4 must not become 4.0
    top_k: int | None = Field(default=None, ge=1)
    # multi_label columns may hold "a|b" instead of a JSON list.
    label_separator: str = "|"
    # extraction
    entity: str = "entities"
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    normalize: list[Literal["casefold", "whitespace", "strip_suffixes"]] = Field(default_factory=list)
    data: DataPaths = Field(default_factory=DataPaths)
    # directory of the YAML file, used to resolve data paths; not part of the spec itself
    base_dir: str | None = Field(default=None, exclude=True)

    @field_validator("text", "slices", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> Any:
        # A list of labels or a mapping label -> description; ordinal scales are often numbers.
        if v is None:
            return {}
        if isinstance(v, list):
            return {str(x): "" for x in v}
        if isinstance(v, dict):
            return {str(k): "" if d is None else str(d) for k, d in v.items()}
        return v

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)

    def data_path(self, split: str) -> Path | None:
        value = getattr(self.data, split)
        if value is None:
            return None
        path = Path(value)
        if not path.is_absolute() and self.base_dir:
            path = Path(self.base_dir) / path
        return path

    def to_yaml(self) -> str:
        # defaults are left out: they load back the same, and kind-specific keys must not appear on other kinds
        data = self.model_dump(mode="json", exclude={"base_dir"}, exclude_defaults=True)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


class _DuplicateKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys; a duplicate label must be reported instead."""

    duplicates: list[str]

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                self.duplicates.append(f"{key!s} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> tuple[Any, list[str]]:
    loader = None
    try:
        loader = _DuplicateKeyLoader(text)  # the reader refuses control characters already here
        loader.duplicates = []
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise TaskError(f"{source} is not valid YAML", [f"{e}. Fix the syntax at the line shown."]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, loader.duplicates


def _field_message(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = ".".join(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = raw
        for part in err["loc"][:-1]:
            parent = parent.get(part, {}) if isinstance(parent, dict) else {}
        known = _known_keys(err["loc"][:-1])
        hint = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(known)}"
        return f"unknown key '{loc}': {fix}"
    if err["type"] == "missing":
        return f"'{loc}' is required: add it to the spec"
    if err["type"] == "literal_error" and err["loc"][0] == "kind":
        return f"unknown kind {err['input']!r}: use one of {', '.join(KINDS)}"
    if err["type"] == "literal_error" and err["loc"][0] == "normalize":
        return f"unknown normalizer {err['input']!r} in 'normalize': use any of {', '.join(NORMALIZERS)}"
    return f"'{loc}': {err['msg']} (got {err.get('input')!r})"


def _known_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = TaskSpec
    if loc and loc[0] == "data":
        model = DataPaths
    elif loc and loc[0] == "subsets":
        model = Subset
    return [k for k in model.model_fields if k != "base_dir"]


def _cross_checks(raw: dict[str, Any]) -> list[str]:
    """Rules between fields. Runs on the raw mapping so they are reported together with type errors."""
    problems: list[str] = []
    kind = raw.get("kind")
    labels = raw.get("labels")
    names: list[str] = []
    if isinstance(labels, list):
        names = [str(x) for x in labels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"duplicate labels {dupes}: each label must appear once")
    elif isinstance(labels, dict):
        names = [str(x) for x in labels]
    if kind in ("single_label", "multi_label", "ordinal"):
        if not names:
            problems.append(f"'labels' is empty: a {kind} task needs at least two labels")
        elif len(names) < 2 and kind != "multi_label":
            problems.append(f"'labels' has one label ({names[0]!r}): a {kind} task needs at least two")
        blank = [n for n in names if not n.strip()]
        if blank:
            problems.append("a label is empty or whitespace: give every label a name")
    threshold = raw.get("threshold")
    if threshold is not None:
        if kind == "multi_label":
            try:
                ok = 0.0 < float(threshold) < 1.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                problems.append(f"threshold {threshold!r} is out of range: for multi_label use a probability between 0 and 1 (e.g. 0.5)")
        elif kind == "ordinal":
            if names and str(threshold) not in names:
                problems.append(f"threshold {threshold!r} is not one of the ordinal labels {names}: use the lowest label that counts as positive")
            elif names and str(threshold) == names[0]:
                problems.append(f"threshold {threshold!r} is the lowest label, so every row would be positive: use a higher label")
        else:
            problems.append(f"'threshold' has no meaning for kind {kind!r}: remove it (it is for multi_label and ordinal)")
    if raw.get("top_k") is not None and kind != "multi_label":
        problems.append("'top_k' is only for multi_label tasks: remove it")
    if kind != "extraction":
        for key in ("min_confidence", "normalize"):
            if key in raw:
                problems.append(f"'{key}' is only for extraction tasks: remove it")
    elif isinstance(labels, (list, dict)) and names:
        problems.append("extraction tasks have no 'labels': name the entity type with 'entity: company' instead")
    if kind == "extraction" and "entity" in raw:
        ent = raw["entity"]
        # the answer is {"<entity>": [...]}: the key must be writable as a plain JSON string
        if not isinstance(ent, str) or not ent.strip() or any(c in ent for c in '"\\') or any(ord(c) < 32 for c in ent):
            problems.append(f"entity {ent!r} cannot be a JSON key of the answer: use a plain name such as 'companies'")
    subsets = raw.get("subsets")
    for sname, sub in (subsets.items() if isinstance(subsets, dict) else ()):
        if not isinstance(sub, dict):
            continue
        by_label, by_column = "label_in" in sub, "column" in sub or "values" in sub
        if by_label == by_column:
            problems.append(f"subset '{sname}' needs either label_in: [labels] or column: NAME with values: [...]")
        elif by_column and not (sub.get("column") and isinstance(sub.get("values"), list) and sub["values"]):
            problems.append(f"subset '{sname}' needs both column: NAME and a non-empty values: [...]")
        elif by_label and kind == "extraction":
            problems.append(f"subset '{sname}': extraction tasks have no labels; select its rows by a data column "
                            "instead (column: category, values: [economic])")
        elif by_label and names and isinstance(sub.get("label_in"), list):
            unknown = [str(x) for x in sub["label_in"] if str(x) not in names]
            if unknown:
                problems.append(f"subset '{sname}' names unknown labels {unknown}: use labels from {names}")
    text = raw.get("text")
    fields = [text] if isinstance(text, str) else text if isinstance(text, list) else []
    if raw.get("label_column") is not None and raw["label_column"] in fields:
        problems.append(f"label_column {raw['label_column']!r} is also a text field: the model would see the answer")
    return problems


def parse_task(raw: Any, source: str = "task spec", duplicates: list[str] | None = None,
               base_dir: str | Path | None = None) -> TaskSpec:
    """Validate a spec given as a mapping; every problem is reported in one TaskError."""
    if not isinstance(raw, dict):
        raise TaskError(f"{source} must be a YAML mapping of keys (name, kind, text, ...), found {type(raw).__name__}")
    problems = [f"duplicate key {d}: each key (and each label) may appear once" for d in duplicates or []]
    spec = None
    try:
        spec = TaskSpec.model_validate({**raw, "base_dir": str(base_dir) if base_dir else None})
    except ValidationError as e:
        problems += [_field_message(err, raw) for err in e.errors()]
    problems += _cross_checks(raw)
    if problems:
        raise TaskError(f"{source} has {len(problems)} problem{'s' if len(problems) > 1 else ''}:", problems)
    assert spec is not None
    return spec


def load_task(path: str | Path) -> TaskSpec:
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task spec {path} not found", ["pass the path of a task YAML file (see examples/)"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"{path} is not UTF-8 text", [f"{e}: re-save the file as UTF-8"]) from None
    raw, duplicates = _parse_yaml(text, str(path))
    return parse_task(raw, str(path), duplicates, base_dir=path.resolve().parent)


def check_task_set(tasks: list[TaskSpec]) -> None:
    """Specs trained into one model answer about the same records, and their combined table is
    broken down by the same columns: every disagreement is reported at once, with the fix."""
    first, problems = tasks[0], []
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"task names {dupes} appear more than once: give every spec its own 'name'")
    for t in tasks[1:]:
        if t.text != first.text:
            problems.append(f"task {t.name!r} reads text fields {t.text}, task {first.name!r} reads {first.text}: "
                            f"use the same 'text' in every spec (the model answers every task about the same records)")
        if sorted(t.slices) != sorted(first.slices):
            problems.append(f"task {t.name!r} has slices {t.slices}, task {first.name!r} has {first.slices}: "
                            "use the same 'slices' in every spec (the combined table is broken down by them)")
    if problems:
        raise TaskError(f"the {len(tasks)} task specs cannot be trained into one model:", problems)


def as_task(task: TaskSpec | str | Path | dict) -> TaskSpec:
    """Accept a spec, a path to one, or a mapping (the Python API takes any of these)."""
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, dict):
        return parse_task(task)
    return load_task(task)
