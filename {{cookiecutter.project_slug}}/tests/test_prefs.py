"""Preference pairs: on-policy pairs from the SFT model, rule-made corruptions, and users' own pair files."""

import hashlib
import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import DpoConfig, dump_config, load_config
from {{ cookiecutter.package_name }}.data.dataset import load_splits
from {{ cookiecutter.package_name }}.preference.pairs import (
    PREFS_INFO,
    PrefsError,
    build_preferences,
    categorical_values,
    check_pairs_fit,
    corrupt_answer,
    corrupted_pairs,
    load_preferences,
    on_policy_pairs,
    prompt_digest,
    resolve_sft_adapter,
)
from {{ cookiecutter.package_name }}.tasks.answers import parse_prediction
from {{ cookiecutter.package_name }}.tasks.kinds import task_kind

SYSTEM = {"role": "system", "content": "Answer in JSON."}
REFERENCE = '{"intent":"track","order_id":"A12345","urgency":"high"}'


def _row(text: str, answer: str = REFERENCE) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}, {"role": "assistant", "content": answer}]


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_on_policy_pairs_keep_only_real_mistakes():
    rows = [_row("a"), _row("b"), _row("c"), _row("d")]
    answers = [
        '{"intent": "track", "order_id": "A12345", "urgency": "high"}',  # same object, other spacing: no mistake
        '{"intent":"cancel","order_id":"A12345","urgency":"high"}',  # a wrong field
        "not json at all",  # broken output: the most useful rejected answer
        "   ",  # nothing generated: no pair (it needs two real answers)
    ]
    pairs = on_policy_pairs(rows, answers, kind=task_kind("extraction"))
    assert [(pair.prompt[-1]["content"], pair.rejected) for pair in pairs] == [
        ("b", answers[1]),
        ("c", "not json at all"),
    ]
    assert all(pair.chosen == REFERENCE and pair.kind == "on_policy" for pair in pairs)
    assert pairs[0].row() == {
        "prompt": [SYSTEM, {"role": "user", "content": "b"}],
        "chosen": [{"role": "assistant", "content": REFERENCE}],
        "rejected": [{"role": "assistant", "content": answers[1]}],
    }


def test_categorical_fields_come_from_the_training_answers(synth_dir):
    answers = [json.loads(line)["messages"][-1]["content"] for line in (synth_dir / "train.jsonl").open()]
    categories = categorical_values(answers)
    assert categories["urgency"] == ["high", "low", "medium"]
    assert categories["sentiment"] == ["negative", "neutral", "positive"]
    assert len(categories["intent"]) == 9
    assert "order_id" not in categories  # hundreds of distinct ids: an id, not a category


@pytest.mark.parametrize("seed", range(20))
def test_each_corruption_makes_exactly_one_mistake(seed):
    fields = json.loads(REFERENCE)
    wrong, kind = corrupt_answer(fields, categories={"intent": ["cancel", "track"]}, rng=random.Random(seed))
    changed = {key for key in fields if wrong.get(key) != fields[key]}
    assert len(changed) == 1
    (key,) = changed
    if kind == "dropped_field":
        assert key not in wrong and len(wrong) == 2
    elif kind == "wrong_value":
        assert (key, wrong[key]) == ("intent", "cancel")
    else:
        assert kind == "changed_id" and key == "order_id"
        assert len(wrong[key]) == 6 and sum(a != b for a, b in zip(wrong[key], "A12345", strict=True)) == 1


def test_corrupted_pairs_are_seeded_and_keep_the_answer_layout():
    rows = [_row(f"message {i}") for i in range(30)]
    first = corrupted_pairs(rows, train_answers=[REFERENCE, REFERENCE.replace("high", "low")], n=10, seed=3)
    again = corrupted_pairs(rows, train_answers=[REFERENCE, REFERENCE.replace("high", "low")], n=10, seed=3)
    assert first == again and len(first) == 10
    for pair in first:
        assert pair.chosen == REFERENCE != pair.rejected
        assert (
            parse_prediction(pair.rejected, strict=True) is not None and ": " not in pair.rejected
        )  # compact, as the reference
    assert {pair.kind for pair in first} <= {"wrong_value", "dropped_field", "changed_id"}


def test_user_pairs_load_from_text_and_messages(tmp_path):
    folder = tmp_path / "prefs"
    folder.mkdir()
    rows = [{"prompt": f"Where is order {i}?", "chosen": "On its way.", "rejected": "No idea."} for i in range(9)]
    rows.append(
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        }
    )
    _write_jsonl(folder / "train.jsonl", rows)
    splits = load_preferences(DpoConfig(data_path=str(folder), validation_fraction=0.2), system_prompt="Be kind.")
    assert (len(splits["train"]), len(splits["validation"])) == (8, 2)
    first = next(row for row in [*splits["train"], *splits["validation"]] if row["chosen"][0]["content"] == "Hello!")
    assert first["prompt"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert first["rejected"] == [{"role": "assistant", "content": "Go away."}]


def test_user_pairs_load_from_csv_and_parquet(tmp_path):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text('prompt,chosen,rejected\n"Hi, there",Hello,Bye\nQ2,A,B\nQ3,C,D\n', encoding="utf-8")
    splits = load_preferences(DpoConfig(data_path=str(csv_file)))
    assert len(splits["train"]) + len(splits["validation"]) == 3
    parquet_file = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["Q1", "Q2"], "chosen": ["A", "B"]}), parquet_file)
    with pytest.raises(PrefsError) as err:
        load_preferences(DpoConfig(data_path=str(parquet_file)))
    assert str(err.value) == (
        f"{parquet_file}:1: missing column(s) rejected: found prompt, chosen; a pair needs prompt, chosen, rejected "
        "(and 1 more problems)"
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "Q", "chosen": "Same", "rejected": "Same"}, "`chosen` equals `rejected`: the pair teaches no"),
        ({"prompt": "Q", "chosen": "  ", "rejected": "B"}, "empty `chosen`; fill it in or remove the row"),
        ({"prompt": "", "chosen": "A", "rejected": "B"}, "empty `prompt`; fill it in or remove the row"),
        ({"prompt": "Q", "chosen": "A", "rejected": None}, "empty `rejected`; fill it in or remove the row"),
        ({"prompt": "Q", "chosen": "A"}, "missing column(s) rejected: found prompt, chosen;"),
        (
            {"prompt": "Q", "chosen": [{"role": "user", "content": "A"}], "rejected": "B"},
            "`chosen` must hold only the assistant's answer; put earlier turns in `prompt`",
        ),
    ],
)
def test_bad_pair_rows_are_named_with_file_and_line(tmp_path, row, message):
    path = tmp_path / "train.jsonl"
    _write_jsonl(path, [{"prompt": "Q0", "chosen": "A", "rejected": "B"}, row])
    with pytest.raises(PrefsError) as err:
        load_preferences(DpoConfig(data_path=str(path)))
    assert str(err.value).startswith(f"{path}:2: {message}")


def test_missing_pair_data_says_how_to_make_it(tmp_path):
    with pytest.raises(PrefsError, match=r"dpo.data_path='.*nowhere': no such file or folder; build the pairs"):
        load_preferences(DpoConfig(data_path=str(tmp_path / "nowhere")))


def test_missing_sft_adapter_is_refused_before_anything_is_written(smoke_config, tmp_path):
    out = tmp_path / "prefs"
    with pytest.raises(PrefsError, match=r"model.adapter='.*no-run': no SFT adapter there"):
        build_preferences(smoke_config(), adapter=str(tmp_path / "no-run"), out_dir=out)
    assert not out.exists()


def test_cli_prefs_without_an_adapter_exits_2(tmp_path):
    smoke = Path(__file__).parents[1] / "configs" / "smoke.yaml"  # no model.adapter in it
    result = CliRunner().invoke(app, ["data", "prefs", "--config", str(smoke), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert "no SFT adapter: pass --adapter or set model.adapter" in result.output
    assert not (tmp_path / "p").exists()


@pytest.mark.e2e
def test_pairs_come_from_training_prompts_only(smoke_run, smoke_config, tmp_path):
    config = smoke_config("dpo.prompts=32", "dpo.min_pairs=48")
    out = tmp_path / "prefs"
    info = build_preferences(config, adapter=str(smoke_run), out_dir=out)
    assert sorted(path.name for path in out.iterdir()) == [PREFS_INFO, "train.jsonl", "validation.jsonl"]
    rows = [json.loads(line) for name in ("train", "validation") for line in (out / f"{name}.jsonl").open()]
    assert len(rows) == sum(info["rows"].values()) == max(48, info["kinds"]["on_policy"])
    assert json.loads((out / PREFS_INFO).read_text()) == info
    assert info["adapter"] == str(smoke_run) and info["source_split"] == "train"
    assert info["adapter_run_id"] == json.loads((smoke_run / "tracking.json").read_text())["run_id"]

    splits = load_splits(config.data)
    digests = {name: {prompt_digest(row[:-1]) for row in splits[name]["messages"]} for name in splits}
    used = {prompt_digest(row["prompt"]) for row in rows}
    assert used <= digests["train"]
    assert not used & (digests["test"] | digests["validation"])  # the rows that score the models stay unseen
    assert len(used) == len(rows)  # one pair per prompt

    assert info["kinds"]["on_policy"] > 0  # the tiny SFT model gets most answers wrong
    references = {prompt_digest(row[:-1]): row[-1]["content"] for row in splits["train"]["messages"]}
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert chosen == references[prompt_digest(row["prompt"])]  # the training answer is always `chosen`
        assert parse_prediction(rejected, strict=True) != parse_prediction(
            chosen, strict=True
        )  # a real mistake, not another spacing


def _other_sft_run(served_adapter: Path, tmp_path: Path, *, stage: str = "sft") -> Path:
    """A copy of the served adapter's run folder with one LoRA weight changed: another SFT model (or, with
    stage="dpo", a DPO run whose config names the original as its parent)."""
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / f"other-{stage}"
    shutil.copytree(served_adapter.parent, run)
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + torch.ones_like(weights[name])
    save_file(weights, run / "adapter" / "adapter_model.safetensors")
    own = load_config(run / "config.yaml")
    if stage == "dpo":
        changes = {"train": own.train.model_copy(update={"stage": "dpo"}), "model": own.model.model_copy(
            update={"adapter": str(served_adapter.parent)})}  # fmt: skip
        dump_config(own.model_copy(update=changes), run / "config.yaml")
    return run


def test_pairs_are_keyed_to_their_sft_model_kept_for_it_and_rebuilt_or_refused_for_another(
    served_adapter, smoke_config, tmp_path
):
    out = tmp_path / "prefs"
    settings = ("dpo.prompts=4", "dpo.min_pairs=6", f"dpo.data_path={out}", "train.stage=dpo")
    config = smoke_config(*settings, f"model.adapter={served_adapter.parent}", root=tmp_path)
    info = build_preferences(config, adapter=str(served_adapter.parent), out_dir=out)
    weights = (served_adapter / "adapter_model.safetensors").read_bytes()
    assert info["adapter_sha256"] == hashlib.sha256(weights).hexdigest()
    assert info["task"] == {"kind": "extraction", "fields": config.task.fields}
    pairs = (out / "train.jsonl").read_bytes()
    kept = build_preferences(config, adapter=str(served_adapter), out_dir=out, refresh=True)  # its adapter folder
    assert kept["reused"] and (out / "train.jsonl").read_bytes() == pairs
    check_pairs_fit(config, parent=resolve_sft_adapter(str(served_adapter)))  # the same model: fine

    other = _other_sft_run(served_adapter, tmp_path)
    other_config = smoke_config(*settings, f"model.adapter={other}", root=tmp_path)
    with pytest.raises(PrefsError, match=r"dpo.data_path='.*prefs' holds pairs built from another SFT model .* "
                       r"rebuild them: `data prefs --config <this config> --force` \(make dpo rebuilds"):  # fmt: skip
        check_pairs_fit(other_config, parent=resolve_sft_adapter(str(other)))
    generic = smoke_config(*settings, f"model.adapter={served_adapter.parent}", "task.kind=generic", root=tmp_path)
    with pytest.raises(PrefsError, match=r"holds pairs built from another task .* and this task \(\{'kind': 'gen"):
        check_pairs_fit(generic, parent=resolve_sft_adapter(str(served_adapter)))

    rebuilt = build_preferences(other_config, adapter=str(other), out_dir=out, refresh=True)
    assert "reused" not in rebuilt and rebuilt["adapter_sha256"] != info["adapter_sha256"]
    check_pairs_fit(other_config, parent=resolve_sft_adapter(str(other)))
    own_pairs = tmp_path / "own"
    shutil.copytree(out, own_pairs)
    (own_pairs / PREFS_INFO).unlink()  # the user's own pairs: no record of a model, taken as they are
    assert build_preferences(other_config, adapter=str(served_adapter), out_dir=own_pairs, refresh=True) == {
        "reused": True
    }


def test_a_dpo_config_that_cannot_run_exits_2_before_any_model_loads(served_adapter, smoke_config, tmp_path):
    dpo_parent = _other_sft_run(served_adapter, tmp_path, stage="dpo")
    refused = r"model.adapter='.*other-dpo' is a DPO run \(its config.yaml has train.stage: dpo; its own parent "
    with pytest.raises(PrefsError, match=refused + r"was '.*untrained'\); DPO and GRPO start from an SFT"):
        resolve_sft_adapter(str(dpo_parent))
    out = tmp_path / "prefs"
    config = smoke_config("dpo.prompts=4", "dpo.min_pairs=6", f"dpo.data_path={out}", root=tmp_path)
    build_preferences(config, adapter=str(served_adapter), out_dir=out)
    other = _other_sft_run(served_adapter, tmp_path)
    config_file = tmp_path / "dpo.yaml"
    dump_config(smoke_config(f"dpo.data_path={out}", "train.stage=dpo", f"model.adapter={other}", root=tmp_path),
                config_file)  # fmt: skip
    for adapter, message in ((other, "holds pairs built from another SFT model"), (dpo_parent, "is a DPO run")):
        result = CliRunner().invoke(app, ["train", "--config", str(config_file), f"model.adapter={adapter}"])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "outputs").exists()
