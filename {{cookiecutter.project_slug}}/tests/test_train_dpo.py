"""DPO after SFT: one base model in memory (the reference is the SFT adapter's frozen copy), a normal run folder,
an MLflow run tagged with its stage and SFT parent, a registered candidate that `evaluate` scores unchanged.

The DPO run and its evaluation use an MLflow store of their own (the SFT parent is named by its run folder), so
the session's registry holds the same versions whatever order the test files run in."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from {{ cookiecutter.package_name }}.config import ConfigError, load_config
from {{ cookiecutter.package_name }}.preference.pairs import PrefsError, build_preferences

CONFIGS = Path(__file__).parents[1] / "configs"


def test_dpo_stage_without_an_adapter_is_refused(smoke_config):
    with pytest.raises(ConfigError) as err:
        smoke_config("train.stage=dpo")
    assert "train.stage=dpo needs model.adapter, the SFT adapter to start from" in str(err.value)


def test_shipped_dpo_config_is_a_dpo_stage_on_the_smoke_data():
    dpo, smoke = load_config(CONFIGS / "dpo.yaml"), load_config(CONFIGS / "smoke.yaml")
    losses = (dpo.dpo.loss_type, dpo.dpo.loss_weights)
    assert (dpo.train.stage, losses, dpo.dpo.beta) == ("dpo", (["sigmoid", "sft"], [1.0, 1.0]), 0.1)
    assert dpo.model.adapter.startswith("models:/") and dpo.model.adapter.endswith("@champion")  # never @candidate
    # evaluate compares a run with the SFT one on the same rows: the task and data must not differ
    assert (dpo.task, dpo.data, dpo.eval) == (smoke.task, smoke.data, smoke.eval)


def test_combined_loss_reaches_trls_dpo_config_and_mismatched_weights_are_refused(smoke_config, tmp_path):
    from {{ cookiecutter.package_name }}.preference.dpo import dpo_config

    config = smoke_config("dpo.loss_type=[sigmoid, sft]", "dpo.loss_weights=[1.0, 0.5]")
    args = dpo_config(config, output_dir=tmp_path, device="cpu", precision="fp32")
    assert (args.loss_type, args.loss_weights, args.beta) == (["sigmoid", "sft"], [1.0, 0.5], 0.1)
    default = dpo_config(smoke_config(), output_dir=tmp_path, device="cpu", precision="fp32")
    assert default.loss_type == ["sigmoid", "sft"]  # the measured least harmful (configs/dpo.yaml's header)
    with pytest.raises(ConfigError, match=r"dpo.loss_weights has 1 weight\(s\) for 2 loss\(es\) .* \[1.0, 1.0\]"):
        smoke_config("dpo.loss_type=[sigmoid, sft]", "dpo.loss_weights=[1.0]")


def test_a_fall_of_the_chosen_answers_likelihood_is_warned_about():
    from {{ cookiecutter.package_name }}.preference.dpo import chosen_logps_fell

    history = [{"loss": 0.69, "logps/chosen": -4.0}, {"eval_logps/chosen": -9.0}, {"logps/chosen": -4.5}]
    assert chosen_logps_fell(history) == (
        "the chosen answers' log-probability fell during DPO (-4.000 at the first logged step, -4.500 at the last): "
        "the right answers became less likely too, which lowers accuracy. Evaluate before trusting this run; "
        "dpo.loss_type: [sigmoid, sft] (an SFT term on the chosen answers) or a lower train.learning_rate keeps them "
        "likely"
    )
    assert chosen_logps_fell([{"logps/chosen": -4.0}, {"logps/chosen": -3.0}]) is None  # rose
    assert chosen_logps_fell([{"logps/chosen": -4.0}]) is None  # one value: no trend


def test_missing_sft_adapter_fails_before_any_output(smoke_config, tmp_path):
    from {{ cookiecutter.package_name }}.preference.dpo import DPO
    from {{ cookiecutter.package_name }}.train.sft import TrainError, train

    config = smoke_config(
        "train.stage=dpo", f"model.adapter={tmp_path / 'outputs' / 'gone'}", "train.run_name=dpo", root=tmp_path
    )
    with pytest.raises(PrefsError, match=r"model.adapter='.*gone': no SFT adapter there"):
        train(config, config_name="dpo", recipe=DPO)
    # A DPO config never trains as SFT by mistake: the recipe must be the stage's (cli.recipe_for picks it).
    with pytest.raises(TrainError, match=r"train.stage=dpo, but the recipe given is sft"):
        train(config, config_name="dpo")
    assert not (tmp_path / "outputs").exists()


@pytest.fixture(scope="module")
def dpo_run(smoke_run, smoke_config, tmp_path_factory):
    """A short DPO run on the session's SFT run, counting how many models were loaded from disk."""
    from transformers import AutoModelForCausalLM

    from {{ cookiecutter.package_name }}.preference.dpo import DPO
    from {{ cookiecutter.package_name }}.train.sft import train

    root = tmp_path_factory.mktemp("dpo")
    prefs = root / "prefs"
    build_preferences(smoke_config("dpo.prompts=16", "dpo.min_pairs=40"), adapter=str(smoke_run), out_dir=prefs)
    config = smoke_config(
        "train.stage=dpo",
        f"model.adapter={smoke_run}",
        f"dpo.data_path={prefs}",
        "train.max_steps=4",
        "train.batch_size=8",
        "train.eval_steps=4",
        "train.save_steps=4",
        "train.logging_steps=2",
        "train.learning_rate=1e-3",
        "tracking.enabled=true",
        root=root,
    )
    seen: dict = {"loads": [], "config": config}
    original_load, original_build = AutoModelForCausalLM.from_pretrained, DPO.build_trainer

    def counting_load(*args, **kwargs):
        seen["loads"].append(args[0])
        return original_load(*args, **kwargs)

    def keeping_build(*args, **kwargs):
        trainer = original_build(*args, **kwargs)
        # The adapters while training, before the reference copy is dropped for saving.
        seen["trainer"], seen["adapters"] = trainer, sorted(trainer.model.peft_config)
        seen["trainable"] = {name.split(".")[-2] for name, p in trainer.model.named_parameters() if p.requires_grad}
        return trainer

    with pytest.MonkeyPatch.context() as store:
        store.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")  # a registry of its own
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(AutoModelForCausalLM, "from_pretrained", counting_load)
            recipe = dataclasses.replace(DPO, build_trainer=keeping_build)
            seen["run_dir"] = train(config, config_name="dpo", recipe=recipe)
        yield seen  # the module's tests read and evaluate the run in its own store


@pytest.mark.e2e
def test_dpo_loads_one_base_model_and_uses_the_adapter_as_reference(dpo_run):
    from peft import PeftModel

    assert len(dpo_run["loads"]) == 1  # the base once: no second copy for the reference model
    trainer = dpo_run["trainer"]
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    assert dpo_run["adapters"] == ["default", "ref"]  # the SFT adapter trained, its frozen copy the reference
    assert dpo_run["trainable"] == {"default"}  # only the SFT adapter's LoRA weights train: never the reference
    assert list(trainer.model.peft_config) == ["default"]  # the copy is dropped before saving


@pytest.mark.e2e
def test_dpo_run_folder_holds_a_tuned_copy_of_the_sft_adapter(dpo_run, smoke_run):
    from {{ cookiecutter.package_name }}.preference.dpo import chosen_logps_fell

    run_dir = dpo_run["run_dir"]
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()
    sft = load_file(smoke_run / "adapter" / "adapter_model.safetensors")
    dpo = load_file(adapter / "adapter_model.safetensors")
    assert sft.keys() == dpo.keys()  # the same LoRA layers, tuned further
    assert any(not torch.equal(sft[key], dpo[key]) for key in sft)
    saved = load_config(run_dir / "config.yaml")
    assert (saved.train.stage, saved.model.adapter) == ("dpo", str(smoke_run))
    log = json.loads((run_dir / "train_log.json").read_text())
    assert log["data"]["path"] == dpo_run["config"].dpo.data_path
    assert any("rewards/margins" in " ".join(entry) for entry in log["log_history"])  # DPO's own metrics
    chosen = [entry["logps/chosen"] for entry in log["log_history"] if "logps/chosen" in entry]  # logged by TRL
    assert len(chosen) == 2 and (chosen_logps_fell(log["log_history"]) is None) == (chosen[-1] >= chosen[0])


@pytest.mark.e2e
def test_dpo_run_records_its_sft_parent_and_is_scored_like_any_candidate(dpo_run, smoke_run):
    from {{ cookiecutter.package_name }}.evaluate.evaluate import evaluate
    from {{ cookiecutter.package_name }}.tracking import client as tracking_client

    tracked = json.loads((dpo_run["run_dir"] / "tracking.json").read_text())
    parent = json.loads((smoke_run / "tracking.json").read_text())
    client = tracking_client()
    tags = client.get_run(tracked["run_id"]).data.tags
    assert tags["stage"] == "dpo"
    assert (tags["parent.run_id"], tags["parent.model_version"]) == (parent["run_id"], parent["model_version"])
    config = dpo_run["config"]
    version = client.get_model_version(config.project, tracked["model_version"])
    assert version.tags["stage"] == "dpo" and version.tags["parent.run_id"] == parent["run_id"]
    assert client.get_model_version_by_alias(config.project, "candidate").version == version.version

    # The gate is left out (other tests rely on the session's champion); 8 rows, no few-shot column: seconds.
    tracking = config.tracking.model_copy(update={"promote": False})
    eval_cfg = config.eval.model_copy(update={"max_samples": 8, "few_shot": 0})
    report = evaluate(config.model_copy(update={"tracking": tracking, "eval": eval_cfg}))
    assert report["run"]["model_version"] == tracked["model_version"]
    metrics = client.get_run(tracked["run_id"]).data.metrics
    assert metrics["finetuned.eval_loss"] == pytest.approx(report["finetuned"]["eval_loss"])


def _dpo_trainer(served_adapter: Path, smoke_config, tmp_path: Path):
    """A DPOTrainer on the served (untrained) SFT adapter and four hand-written pairs: seconds, no training run."""
    from datasets import Dataset, DatasetDict

    from {{ cookiecutter.package_name }}.preference.dpo import DPO, build_dpo_trainer, load_sft_policy
    from {{ cookiecutter.package_name }}.preference.pairs import resolve_sft_adapter
    from {{ cookiecutter.package_name }}.train.sft import Run

    config = smoke_config("train.stage=dpo", f"model.adapter={served_adapter}", "train.batch_size=2", root=tmp_path)
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Where is my order A{1000 + i}? It is late, I need it today."}],
            "chosen": [{"role": "assistant", "content": '{"intent":"track","urgency":"high"}'}],
            "rejected": [{"role": "assistant", "content": '{"intent":"track","urgency":"low"}'}],
        }
        for i in range(4)
    ]
    splits = DatasetDict({"train": Dataset.from_list(pairs), "validation": Dataset.from_list(pairs[:2])})
    parent = resolve_sft_adapter(str(served_adapter))
    model, tokenizer, loss_mode = load_sft_policy(config, splits, device="cpu", precision="fp32", parent=parent)
    parts = {"model": model, "tokenizer": tokenizer, "loss_mode": loss_mode, "splits": splits, "parent": parent}
    run = Run(
        config=config, config_name="test", run_dir=tmp_path / "run", device="cpu", precision="fp32", recipe=DPO, **parts
    )
    return build_dpo_trainer(run)


def test_the_dpo_trainer_projects_only_the_answer_tokens_on_a_cpu(
    served_adapter, smoke_config, tmp_path, head_rows_of_one_step
):
    trainer = _dpo_trainer(served_adapter, smoke_config, tmp_path)
    projected, batch, loss = head_rows_of_one_step(trainer)
    answer_tokens = int(batch["completion_mask"][:, 1:].sum())
    assert projected == [answer_tokens, answer_tokens]  # the policy and its reference (the frozen `ref` adapter)
    assert answer_tokens < batch["input_ids"].numel() / 3 and torch.isfinite(loss) and loss.requires_grad
