"""`load_tokenizer` loads a plain saved tokenizer as `TokenizersBackend` directly, without
importing `transformers.models.auto`; it must be the tokenizer `AutoTokenizer` gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from quartet.config.model import ModelConfig
from quartet.models.loading import PLAIN_TOKENIZER_MODEL_TYPES, load_tokenizer, plain_tokenizer_dir

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = Path.home() / ".cache" / "quartet" / "smollm2-135m-instruct-hf"


def test_the_plain_model_types_are_loaded_as_tokenizers_backend_by_auto_tokenizer():
    from transformers.models.auto.tokenization_auto import (
        MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS,
        TOKENIZER_MAPPING_NAMES,
    )

    for model_type in PLAIN_TOKENIZER_MODEL_TYPES:
        assert model_type not in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS, model_type
        assert TOKENIZER_MAPPING_NAMES.get(model_type) != "MistralCommonBackend", model_type


def _models(tiny_model_path):
    return [tiny_model_path] + ([SMOLLM2] if (SMOLLM2 / "tokenizer.json").is_file() else [])


def test_it_is_the_tokenizer_auto_tokenizer_loads(tiny_model_path):
    from transformers import AutoTokenizer

    texts = ["hello world", "Tom has 2 apples and gets 3 more.  How many?", " x\n\ty  ", "é ü 数"]
    for path in _models(tiny_model_path):
        cfg = ModelConfig(model_name_or_path=str(path))
        assert plain_tokenizer_dir(cfg) == path
        ours, auto = load_tokenizer(cfg), AutoTokenizer.from_pretrained(str(path))
        if auto.pad_token_id is None:
            auto.pad_token = auto.eos_token
        assert type(ours) is type(auto)
        assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token_id, len(ours)) == (
            auto.pad_token_id, auto.eos_token_id, auto.bos_token_id, len(auto))
        assert ours.all_special_tokens == auto.all_special_tokens
        for text in texts:
            ids = auto(text)["input_ids"]
            assert ours(text)["input_ids"] == ids
            assert ours.decode(ids, skip_special_tokens=True) == auto.decode(
                ids, skip_special_tokens=True)
        if auto.chat_template:
            chat = [{"role": "user", "content": texts[1]}]
            assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
                auto.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_other_tokenizers_go_through_auto_tokenizer(tiny_model_path, tmp_path):
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        shutil.copy(tiny_model_path / name, tmp_path / name)
    cfg = ModelConfig(model_name_or_path=str(tmp_path))
    assert plain_tokenizer_dir(cfg) == tmp_path
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    assert plain_tokenizer_dir(cfg) is None
    assert plain_tokenizer_dir(ModelConfig(model_name_or_path=str(tiny_model_path),
                                           trust_remote_code=True)) is None
    assert plain_tokenizer_dir(ModelConfig(model_name_or_path="HuggingFaceTB/SmolLM2")) is None


def test_loading_a_plain_tokenizer_skips_transformers_auto(tiny_model_path):
    probe = ("import sys; from quartet.config.model import ModelConfig; "
             "from quartet.models.loading import load_tokenizer; "
             f"load_tokenizer(ModelConfig(model_name_or_path={str(tiny_model_path)!r})); "
             "print('transformers.models.auto' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_gguf_tokenizer_is_not_plain(tiny_model_path):
    assert plain_tokenizer_dir(ModelConfig(model_name_or_path=str(tiny_model_path),
                                           gguf_file="m.gguf")) is None
