"""Model loading, the tiny offline model, chat templates, LoRA config, merging and their errors."""

import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import LoraConfig, ModelConfig
from {{ cookiecutter.package_name }}.model.device import quantization_config, resolve_device, resolve_dtype
from {{ cookiecutter.package_name }}.model.load import (
    CHAT_TEMPLATE,
    ModelError,
    check_model_source,
    end_token_ids,
    load_base_model,
    load_finetuned,
    load_tokenizer,
    lora_config,
    merge_adapter,
    newest_adapter,
    prepare_chat_template,
)

HUB_STYLE_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}
CONVERSATION = [
    {"role": "system", "content": "Reply with JSON only."},
    {"role": "user", "content": "Where is order A12345?"},
    {"role": "assistant", "content": '{"intent":"track","order_id":"A12345"}'},
]


def test_tiny_model_is_saved_like_a_hub_model(tiny_model):
    assert {p.name for p in tiny_model.iterdir()} == HUB_STYLE_FILES
    tokenizer = load_tokenizer(tiny_model)
    model = load_base_model(ModelConfig(base_model=str(tiny_model)), device="cpu")
    assert model.config.num_hidden_layers == 2
    assert len(tokenizer) == model.config.vocab_size <= 1024
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    # Byte-level BPE: any text round-trips, including characters the corpus never had.
    assert tokenizer.decode(tokenizer("Ünïcode ✓ #A1", add_special_tokens=False)["input_ids"]) == "Ünïcode ✓ #A1"


def test_chat_template_marks_exactly_the_reply_and_its_end_token(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    out = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    marked = [token for token, mask in zip(out["input_ids"], out["assistant_masks"], strict=True) if mask]
    assert tokenizer.decode(marked) == CONVERSATION[-1]["content"] + "<|im_end|>"
    prompt = tokenizer.apply_chat_template(CONVERSATION[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_template_with_markers_trains_on_assistant_tokens(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    assert prepare_chat_template(tokenizer) == "assistant_only"


def test_known_family_template_gets_trls_marked_twin(tiny_model):
    templates = pytest.importorskip("trl.chat_template_utils")
    if not hasattr(templates, "qwen2_5_training_chat_template"):
        pytest.skip("this TRL release ships no training templates")
    tokenizer = load_tokenizer(tiny_model)  # has Qwen's <|im_start|>/<|im_end|> tokens too
    tokenizer.chat_template = templates.qwen2_5_chat_template  # what Qwen2.5-Instruct (gpu.yaml) ships
    assert prepare_chat_template(tokenizer) == "assistant_only"
    assert tokenizer.chat_template == templates.qwen2_5_training_chat_template
    # Identical text to Qwen's own template, so the adapter is served with the format it was trained on.
    qwen_text = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, chat_template=templates.qwen2_5_chat_template
    )
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == qwen_text


def test_template_without_markers_is_kept_and_falls_back_to_completion_loss(tiny_model, plain_chat_template):
    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = plain_chat_template
    assert prepare_chat_template(tokenizer) == "completion_only"
    assert tokenizer.chat_template == plain_chat_template  # the model's own format is what it is served with


def test_no_template_gets_the_project_template_when_chatml_tokens_exist(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = None
    assert prepare_chat_template(tokenizer) == "assistant_only"
    assert tokenizer.chat_template == CHAT_TEMPLATE.read_text()


def test_no_template_and_no_chatml_tokens_is_a_clear_error():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "</s>": 1}, unk_token="a")))
    bare.eos_token = "</s>"
    with pytest.raises(ModelError, match="no chat template"):
        prepare_chat_template(bare)


def test_folder_without_config_or_weights_is_rejected(tmp_path, tiny_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"empty: model folder without config.json"):
        check_model_source(str(empty))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="model folder without weights"):
        check_model_source(str(no_weights))


@pytest.mark.parametrize("name", ["./no/such/folder", "/no/such/folder", "a/b/c"])
def test_path_that_is_neither_folder_nor_hub_id_is_rejected(name):
    with pytest.raises(ModelError, match="no such folder, and not a hub id"):
        check_model_source(name)


def test_unknown_hub_id_offline_says_so():
    with pytest.raises(ModelError, match=r"'no-such-org/no-such-model'.*not in the Hugging Face cache"):
        check_model_source("no-such-org/no-such-model")


def test_an_unreachable_hub_without_hf_hub_offline_fails_at_once(monkeypatch, free_port):
    """No ~25 s of the hub client's retries: one refused connection, then the cache only."""
    import time

    from huggingface_hub import constants

    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ModelError) as refused:
        check_model_source("no-such-org/no-such-model")
    assert time.monotonic() - started < 10
    assert "not in the Hugging Face cache (the hub cannot be reached: 127.0.0.1: Connection refused)" in str(
        refused.value
    )


def test_cpu_weights_follow_its_bf16_hardware_and_missing_devices_are_errors(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert resolve_dtype("auto", device="cpu") == torch.float32
    assert resolve_dtype("auto", device="cpu", precision="bf16") == torch.bfloat16  # training: its precision's
    assert resolve_dtype("bfloat16", device="cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_dtype("auto", device="cpu") == torch.bfloat16
    assert resolve_dtype("auto", device="cpu", precision="fp32") == torch.float32
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match=r"train\.device=cuda"):
            resolve_device("cuda")


def test_end_token_ids_join_the_tokenizers_eos_and_the_models_end_of_turn_ids(tiny_model):
    """One list for evaluation's and serving's `generate`: sorted, without duplicates or None."""

    def ids(model_eos, tokenizer_eos):
        model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=model_eos))
        return end_token_ids(model, SimpleNamespace(eos_token_id=tokenizer_eos))

    assert ids([7, 2], 2) == [2, 7]
    assert ids(5, None) == [5]
    assert ids(None, 3) == [3]
    tokenizer = load_tokenizer(tiny_model)
    model = load_base_model(ModelConfig(base_model=str(tiny_model)), device="cpu")
    assert end_token_ids(model, tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_4bit_without_cuda_is_a_clear_error():
    with pytest.raises(ModelError, match="load_in_4bit needs a CUDA GPU"):
        quantization_config(device="cpu")


def test_lora_config_maps_every_setting():
    peft_config = lora_config(LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]))
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (4, 8, 0.1)
    assert set(peft_config.target_modules) == {"q_proj", "v_proj"}
    assert peft_config.task_type == "CAUSAL_LM"


def test_newest_adapter_and_missing_adapter(tmp_path):
    with pytest.raises(ModelError, match="no trained adapter under"):
        newest_adapter(tmp_path)
    for i, name in enumerate(["old", "new"]):
        adapter = tmp_path / name / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text("{}")
        os.utime(adapter / "adapter_config.json", (1_000_000 + i, 1_000_000 + i))
    assert newest_adapter(tmp_path) == tmp_path / "new" / "adapter"


@pytest.mark.parametrize("command", ["serve", "evaluate", "merge"])
def test_corrupt_adapter_config_names_the_file_and_line(tmp_path, command):
    from {{ cookiecutter.package_name }}.serve.loader import resolve_model_source

    adapter = tmp_path / "outputs" / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{\n  "r": 16,\n  "base_model_name_or_path": \n}\n')
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    expected = rf"{adapter / 'adapter_config.json'}:4: not valid JSON \(Expecting value\)"
    with pytest.raises(ModelError, match=expected):
        if command == "serve":
            resolve_model_source(str(adapter), output_dir=tmp_path / "outputs")
        elif command == "evaluate":  # `evaluate` without --adapter, and `serve --model latest`, pick the newest
            newest_adapter(tmp_path / "outputs")
        else:
            merge_adapter(adapter, tmp_path / "merged")


def test_cli_merge_with_a_missing_adapter_fails_cleanly(tmp_path):
    result = CliRunner().invoke(app, ["merge", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 1
    assert "nope: not a LoRA adapter folder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "merged").exists()


@pytest.mark.e2e
def test_adapter_on_another_base_is_refused(smoke_run, tmp_path, tiny_model):
    other = shutil.copytree(tiny_model, tmp_path / "other-base")
    with pytest.raises(ModelError, match="was trained on"):
        load_finetuned(ModelConfig(base_model=str(other)), adapter_dir=smoke_run / "adapter", device="cpu")


@pytest.mark.e2e
def test_merged_model_predicts_like_base_plus_adapter(smoke_run, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = smoke_run / "adapter"
    merged_dir = merge_adapter(adapter, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in merged_dir.iterdir()
    }
    assert not (merged_dir / "adapter_config.json").exists()  # plain transformers folder, no peft needed
    base_model = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    with_adapter = load_finetuned(
        ModelConfig(base_model=base_model, dtype="float32"), adapter_dir=adapter, device="cpu"
    )
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = load_tokenizer(merged_dir).apply_chat_template(CONVERSATION, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected = with_adapter(input_ids=ids["input_ids"]).logits
        got = merged(input_ids=ids["input_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ModelError, match="already exists and is not empty"):
        merge_adapter(adapter, merged_dir)
