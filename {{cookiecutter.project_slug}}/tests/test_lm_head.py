"""The LM head on answer tokens only (lm_head.py): TRL's loss, metrics and gradients, from the labelled positions."""

import json

import pytest
import torch
from peft import get_peft_model
from trl.trainer.utils import add_fused_lm_head

from {{ cookiecutter.package_name }}.data.dataset import load_splits
from {{ cookiecutter.package_name }}.model.load import (
    load_base_model,
    load_tokenizer,
    lora_config,
    prepare_chat_template,
)
from {{ cookiecutter.package_name }}.train.lm_head import answer_tokens_only
from {{ cookiecutter.package_name }}.train.sft import SFT, Run, build_trainer


def _fused_model(config, *, ours: bool):
    """The tiny model as SFTTrainer prepares it (TRL's fused head, then LoRA), with or without ours in front."""
    torch.manual_seed(0)
    base = load_base_model(config.model, device="cpu")
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # DPOTrainer's outputs
    model = get_peft_model(base, lora_config(config.lora))
    for name, weight in model.named_parameters():  # LoRA B starts at zero; make every gradient informative
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.02)
    if ours:
        assert answer_tokens_only(model.get_base_model())
    return model.eval()  # no dropout: both runs see the same network


def test_answer_only_head_gives_trls_loss_metrics_and_gradients(smoke_config, tiny_model):
    config = smoke_config()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 1000, (3, 24), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 18:] = 0  # a shorter, right-padded row
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :14] = -100  # the prompt
    results = {}
    for ours in (False, True):
        model = _fused_model(config, ours=ours)
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
        results[ours] = out, grads
    (trl_out, trl_grads), (our_out, our_grads) = results[False], results[True]
    assert torch.equal(our_out.label_mask, trl_out.label_mask)
    assert int(our_out.label_mask.sum()) == 10 + 10 + 4  # tokens 14..23 are labelled, in the padded row 14..17
    torch.testing.assert_close(our_out.loss, trl_out.loss, rtol=1e-5, atol=1e-6)
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(our_out, field), getattr(trl_out, field), rtol=1e-4, atol=1e-5)
    assert torch.equal(our_out.is_top1.bool(), trl_out.is_top1.bool())
    assert our_grads.keys() == trl_grads.keys() and len(our_grads) > 0
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_trainer_projects_only_the_answer_tokens_on_a_cpu(
    smoke_config, tiny_model, tmp_path, head_rows_of_one_step
):
    config = smoke_config("data.max_train_samples=8", "train.batch_size=4", root=tmp_path)
    tokenizer = load_tokenizer(tiny_model)
    splits = load_splits(config.data)
    trainer = build_trainer(
        Run(
            config=config,
            config_name="test",
            model=load_base_model(config.model, device="cpu"),
            tokenizer=tokenizer,
            splits=splits,
            loss_mode=prepare_chat_template(tokenizer),
            run_dir=tmp_path / "run",
            device="cpu",
            precision="fp32",
            recipe=SFT,
        )
    )
    projected, batch, loss = head_rows_of_one_step(trainer)
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert projected == [answer_tokens] and answer_tokens < batch["input_ids"].numel() / 3
    assert torch.isfinite(loss) and loss.requires_grad


def test_models_that_rescale_their_logits_keep_trls_head(smoke_config, tiny_model):
    model = load_base_model(smoke_config().model, device="cpu")
    model.config.final_logit_softcapping = 30.0  # as Gemma's config has it
    forward = model.forward
    assert answer_tokens_only(model) is False
    assert model.forward == forward


@pytest.mark.skipif(not torch.cpu._is_amx_tile_supported(), reason="needs a CPU with AMX (bf16 in hardware)")
def test_bf16_autocast_training_on_a_cpu_lowers_the_loss(smoke_config, tmp_path):
    from {{ cookiecutter.package_name }}.train.sft import train

    config = smoke_config(
        "train.precision=bf16", "train.device=cpu", "train.max_steps=12", "train.logging_steps=3", root=tmp_path
    )
    run_dir = train(config, config_name="bf16")
    history = json.loads((run_dir / "train_log.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0]
