"""Preference pairs for DPO: the SFT model's own mistakes (on-policy), topped up with rule-made ones.

    <project> data prefs --config configs/dpo.yaml [--adapter outputs/<run>] [--out data/prefs] [--min-pairs N]
    <project> train --config configs/dpo.yaml    # train.stage: dpo, on the pairs written here

Pairs come from the TRAINING split only: the test split scores the DPO model, so a pair made from it would
leak. Each is TRL's conversational preference row: {"prompt": [system?, user], "chosen": [assistant],
"rejected": [assistant]}.
- on-policy: the SFT model's greedy answer to a training prompt, when it differs from the reference (as a
  JSON object for the extraction task), is `rejected` and the reference `chosen`: it targets this model's
  actual mistakes, which is what DPO learns most from.
- corruption: while there are fewer than `dpo.min_pairs` (a good SFT model makes few mistakes), other training
  answers with one field made wrong (extraction task): another value of a categorical field (values seen in
  training answers), a dropped field, or an id-like value (an order id) with a digit changed. Seeded.
Users' own pairs (JSONL/CSV/Parquet with prompt/chosen/rejected; text or chat messages) load with
`load_preferences`, every problem named with its file and line as for SFT data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, DpoConfig
from ..data.dataset import ROLES, Problem, read_data_file, split_files, training_rows
from ..errors import BadInput
from ..tasks.answers import parse_prediction
from ..tasks.kinds import TaskKind, task_kind

if TYPE_CHECKING:
    from datasets import DatasetDict

    from ..registry import ModelSource

PREFS_INFO = "prefs_info.json"
PREF_COLUMNS = ("prompt", "chosen", "rejected")
# A field with 2 to this many distinct text values in the training answers is categorical (intent, urgency,
# sentiment); more (products, ids) and a random other value would be an unrealistic mistake.
MAX_CATEGORIES = 12
_DIGIT = re.compile(r"\d")

Message = dict[str, str]


class PrefsError(BadInput, ValueError):
    """Preference pairs cannot be built or loaded, or do not fit the DPO run (built from another SFT model or for
    another task); the message names the file and line (or setting) and the fix. Exit code 2."""


@dataclass(frozen=True)
class Pair:
    prompt: list[Message]  # every message before the answer: system (if any) and user
    chosen: str
    rejected: str
    kind: str  # on_policy, wrong_value, dropped_field or changed_id

    def row(self) -> dict[str, Any]:
        """TRL's conversational preference row."""
        return {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


# ---- building pairs -------------------------------------------------------------------------------------


def build_preferences(
    config: Config,
    *,
    adapter: str,
    out_dir: Path,
    min_pairs: int | None = None,
    force: bool = False,
    refresh: bool = False,
) -> dict[str, Any]:
    """Write `out_dir`/train.jsonl, validation.jsonl and prefs_info.json from the training split and the SFT
    `adapter`; return the info record. Nothing is written when any check fails. `refresh` (make dpo): keep pairs
    that this SFT model built for this task, rebuild pairs that another one did (never overwrite the user's own)."""
    wanted = config.dpo.min_pairs if min_pairs is None else min_pairs
    source = resolve_sft_adapter(adapter, output_dir=config.train.output_dir)
    key = pairs_key(config, source=source)
    if refresh and out_dir.is_dir() and any(out_dir.iterdir()):
        info_file = out_dir / PREFS_INFO
        existing = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else None
        if existing is None or {name: existing.get(name) for name in key} == key:
            return (existing or {}) | {"reused": True}  # the user's own pairs, or this model's for this task
        force = True  # built by `data prefs` from another SFT model or for another task: rebuilt
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise PrefsError(f"{out_dir} is not empty; pass --force to overwrite it, or choose another --out")
    rows = training_rows(config)
    prompts = sample_rows(rows, n=config.dpo.prompts, seed=config.train.seed)
    answers = _greedy_answers(config, source=source, rows=prompts)
    kind = task_kind(config.task)
    pairs = on_policy_pairs(prompts, answers, kind=kind)
    if len(pairs) < wanted and kind.json_answers:  # rule-made mistakes need fields to make wrong
        taken = {prompt_digest(pair.prompt) for pair in pairs}
        spare = [row for row in rows if prompt_digest(row[:-1]) not in taken]
        answers_seen = [row[-1]["content"] for row in rows]
        pairs += corrupted_pairs(spare, train_answers=answers_seen, n=wanted - len(pairs), seed=config.train.seed)
    if len(pairs) < 2:
        raise PrefsError(
            f"only {len(pairs)} preference pair(s) from {len(prompts)} training prompts: DPO needs a training and a "
            "validation pair at least; raise dpo.prompts or --min-pairs (extraction task)"
        )
    splits = split_pairs(pairs, validation_fraction=config.dpo.validation_fraction, seed=config.train.seed)
    info = key | {
        "adapter": adapter,
        "adapter_run_id": source.run_id,
        "adapter_version": source.version,
        "base_model": source.base_model,
        "source_split": "train",  # never validation or test: those score the models
        "prompts_answered": len(prompts),
        "min_pairs": wanted,
        "seed": config.train.seed,
        "kinds": dict(sorted(Counter(pair.kind for pair in pairs).items())),
        "rows": {name: len(split) for name, split in splits.items()},
    }
    _write_atomically(out_dir, splits=splits, info=info)
    return info


def resolve_sft_adapter(source: str, *, output_dir: str | Path = "outputs") -> ModelSource:
    """The SFT model of `model.adapter` / `--adapter`: any model source (registry.resolve_model_source), refused
    when it is itself a DPO or GRPO run (they start from an SFT model; a chain of them drifts from it unchecked)."""
    from ..model.load import ModelSourceError
    from ..registry import LATEST, is_model_uri, resolve_model_source

    try:
        parent = resolve_model_source(source, output_dir=output_dir, given_as="model.adapter")
    except ModelSourceError:
        if is_model_uri(source) or source == LATEST:
            raise  # the store or outputs/ has no such model: the resolver's message says so
        raise PrefsError(
            f"model.adapter={source!r}: no SFT adapter there (neither a run folder holding adapter/ nor an "
            "adapter folder); train one first (`make train`), or name a model URI like models:/<project>@champion"
        ) from None
    own = _run_settings(parent)
    stage = own.get("train", {}).get("stage", "sft")
    if stage != "sft":
        raise PrefsError(
            f"model.adapter={source!r} is a {stage.upper()} run (its config.yaml has train.stage: {stage}; its own "
            f"parent was {own.get('model', {}).get('adapter')!r}); DPO and GRPO start from an SFT model: set "
            "model.adapter (or ADAPTER=) to an SFT run folder outputs/<run> or a registered SFT version "
            "models:/<project>/<version>"
        )
    return parent


def _run_settings(source: ModelSource) -> dict[str, Any]:
    """The raw config.yaml that trained `source` ({} when none is found): read as YAML, not validated, so a
    config of an older version of this project still tells its stage."""
    import yaml

    path = source.config_path()
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path else {}


def pairs_key(config: Config, *, source: ModelSource) -> dict[str, Any]:
    """What a set of pairs belongs to: the SFT adapter's weights (sha256: the same run, version or folder gives
    the same digest) and the task's answer format. prefs_info.json records it; DPO training checks it."""
    digest = hashlib.sha256()
    for path in sorted(source.adapter_dir.glob("adapter_model.*")):  # .safetensors (or .bin): the LoRA weights
        digest.update(path.read_bytes())
    return {"adapter_sha256": digest.hexdigest(), "task": {"kind": config.task.kind, "fields": config.task.fields}}


def check_pairs_fit(config: Config, *, parent: ModelSource) -> None:
    """Refuse (PrefsError) pairs that `data prefs` built from another SFT model than `parent` or for another task,
    before any model loads: DPO on them would tune against answers this model never gave. Pairs of the user's
    own (no prefs_info.json) are taken as they are."""
    info_file = Path(config.dpo.data_path) / PREFS_INFO
    if not info_file.is_file():
        return
    info, key = json.loads(info_file.read_text(encoding="utf-8")), pairs_key(config, source=parent)
    differing = [name for name in key if info.get(name) != key[name]]
    if differing:
        what = "another SFT model" if "adapter_sha256" in differing else "another task"
        raise PrefsError(
            f"dpo.data_path={config.dpo.data_path!r} holds pairs built from {what} (prefs_info.json: adapter "
            f"{info.get('adapter')!r}, task {info.get('task')}) than model.adapter={config.model.adapter!r} and this "
            f"task ({key['task']}); rebuild them: `data prefs --config <this config> --force` (make dpo rebuilds "
            "them), or set dpo.data_path to the pairs of this SFT model"
        )


def sample_rows(rows: list[list[Message]], *, n: int, seed: int) -> list[list[Message]]:
    """`n` training rows drawn with `seed`, in their file order (all of them when there are fewer)."""
    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [rows[index] for index in chosen]


def _greedy_answers(config: Config, *, source: ModelSource, rows: list[list[Message]]) -> list[str]:
    """The SFT model's greedy answers, batched exactly as `evaluate` generates them."""
    from ..model.device import resolve_device
    from ..model.generate import generate_answers
    from ..model.load import load_finetuned, load_tokenizer

    device = resolve_device(config.train.device)
    model_cfg = config.model.model_copy(update={"base_model": source.base_model})
    model = load_finetuned(model_cfg, adapter_dir=source.adapter_dir, device=device)
    tokenizer = load_tokenizer(source.tokenizer_dir)
    return generate_answers(model, tokenizer=tokenizer, rows=rows, eval_cfg=config.eval, device=device)


def on_policy_pairs(rows: list[list[Message]], answers: list[str], *, kind: TaskKind) -> list[Pair]:
    """A pair for each answer that differs from the row's reference answer; empty answers are skipped (a pair
    needs two real answers). Extraction answers compare as JSON objects, so spacing alone is no mistake."""
    pairs = []
    for row, answer in zip(rows, answers, strict=True):
        reference = row[-1]["content"]
        if answer.strip() and not kind.same_answer(answer, reference):
            pairs.append(Pair(prompt=row[:-1], chosen=reference, rejected=answer.strip(), kind="on_policy"))
    return pairs


def corrupted_pairs(rows: list[list[Message]], *, train_answers: list[str], n: int, seed: int) -> list[Pair]:
    """Up to `n` pairs whose rejected answer is the reference with one field made wrong (seeded)."""
    categories = categorical_values(train_answers)
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    pairs: list[Pair] = []
    for index in order:
        if len(pairs) >= n:
            break
        reference = rows[index][-1]["content"]
        fields = parse_prediction(reference, strict=True)
        corrupted = corrupt_answer(fields, categories=categories, rng=rng) if fields else None
        if corrupted is not None:
            wrong, kind = corrupted
            pairs.append(Pair(rows[index][:-1], chosen=reference, rejected=_dump_like(wrong, reference), kind=kind))
    return pairs


def categorical_values(answers: list[str]) -> dict[str, list[str]]:
    """Each categorical field of the answers (2 to MAX_CATEGORIES distinct text values) and its values."""
    seen: dict[str, set[str]] = {}
    for text in answers:
        for field, value in (parse_prediction(text, strict=True) or {}).items():
            if isinstance(value, str):
                seen.setdefault(field, set()).add(value)
    return {field: sorted(values) for field, values in seen.items() if 2 <= len(values) <= MAX_CATEGORIES}


def corrupt_answer(
    fields: dict[str, Any], *, categories: dict[str, list[str]], rng: random.Random
) -> tuple[dict[str, Any], str] | None:
    """`fields` with one mistake, and its kind; None when no rule applies."""
    options: list[tuple[str, str]] = [("dropped_field", field) for field in fields] if len(fields) > 1 else []
    for field, value in fields.items():
        if field in categories:
            options.append(("wrong_value", field))
        elif isinstance(value, str) and _DIGIT.search(value):
            options.append(("changed_id", field))
    if not options:
        return None
    kind, field = rng.choice(options)
    wrong = dict(fields)
    if kind == "dropped_field":
        del wrong[field]
    elif kind == "wrong_value":
        wrong[field] = rng.choice([value for value in categories[field] if value != fields[field]])
    else:
        digits = [match.start() for match in _DIGIT.finditer(fields[field])]
        at = rng.choice(digits)
        new_digit = str((int(fields[field][at]) + rng.randint(1, 9)) % 10)  # never the same digit
        wrong[field] = fields[field][:at] + new_digit + fields[field][at + 1 :]
    return wrong, kind


def _dump_like(fields: dict[str, Any], reference: str) -> str:
    """JSON in the reference's own spacing, so the pair differs in content, not in layout."""
    compact = '": ' not in reference and '", ' not in reference
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":") if compact else None)


def prompt_digest(prompt: list[Message]) -> str:
    """sha256 of a prompt (the messages before the answer) as canonical JSON: the same prompt, the same digest."""
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_pairs(pairs: list[Pair], *, validation_fraction: float, seed: int) -> dict[str, list[Pair]]:
    """Shuffled (seeded) into train and validation; validation gets at least one pair."""
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    size = max(1, round(len(shuffled) * validation_fraction))
    return {"train": shuffled[size:], "validation": shuffled[:size]}


def _write_atomically(out_dir: Path, *, splits: dict[str, list[Pair]], info: dict[str, Any]) -> None:
    """Written to a sibling staging folder, then renamed: a failure leaves no half-written pairs."""
    staging = out_dir.with_name(f"{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, pairs in splits.items():
        lines = [json.dumps(pair.row(), ensure_ascii=False) + "\n" for pair in pairs]
        (staging / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8", newline="\n")
    (staging / PREFS_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8", newline="\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)  # empty, or --force
    staging.rename(out_dir)


# ---- loading pairs (ours or the user's) -----------------------------------------------------------------


def load_preferences(cfg: DpoConfig, *, seed: int = 0, system_prompt: str | None = None) -> DatasetDict:
    """train/validation preference splits of `cfg.data_path` (prompt, chosen, rejected as chat messages);
    PrefsError naming the file and line of the first problem (and how many more). A missing validation file
    is split off train with `cfg.validation_fraction`; `system_prompt` is put first in prompts without one."""
    from datasets import Dataset, DatasetDict

    files = _pref_files(cfg.data_path)
    pairs: dict[str, list[dict[str, Any]]] = {}
    problems: list[Problem] = []
    for split, path in files.items():
        rows, found = read_data_file(path)
        problems += found
        pairs[split] = []
        for row in rows:
            try:
                pairs[split].append(pair_from_values(row.values, system_prompt=system_prompt))
            except ValueError as err:
                problems.append(Problem(row.file, row.line, str(err)))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise PrefsError(f"{problems[0]}{more}")
    if "validation" not in pairs:
        random.Random(seed).shuffle(pairs["train"])
        size = max(1, round(len(pairs["train"]) * cfg.validation_fraction))
        pairs["validation"], pairs["train"] = pairs["train"][:size], pairs["train"][size:]
    for split, rows in pairs.items():
        if not rows:
            raise PrefsError(f"{cfg.data_path}: the {split} split has no preference pairs; add rows")
    return DatasetDict({split: Dataset.from_list(rows) for split, rows in pairs.items()})


def _pref_files(path_or_folder: str) -> dict[str, Path]:
    path = Path(path_or_folder)
    if path.is_dir():
        files = split_files(path)
        files.pop("test", None)  # DPO scores on the SFT data's test split, never on pairs
        return files
    if path.is_file():
        return {"train": path}
    raise PrefsError(
        f"dpo.data_path={path_or_folder!r}: no such file or folder; build the pairs with `data prefs` (or "
        "`make dpo`), or point it at your own .jsonl/.csv/.parquet with prompt, chosen and rejected"
    )


def pair_from_values(values: dict[str, Any], *, system_prompt: str | None = None) -> dict[str, list[Message]]:
    """One row as TRL's conversational preference row; ValueError saying what is wrong and how to fix it."""
    missing = [column for column in PREF_COLUMNS if column not in values]
    if missing:
        found = ", ".join(values) or "none"
        raise ValueError(
            f"missing column(s) {', '.join(missing)}: found {found}; a pair needs prompt, chosen, rejected"
        )
    prompt = _messages(values["prompt"], column="prompt", role="user")
    if prompt[-1]["role"] == "assistant" or not any(message["role"] == "user" for message in prompt):
        raise ValueError("`prompt` must hold the conversation before the answer: a user message last, no answer")
    if system_prompt and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system_prompt}, *prompt]
    chosen = _messages(values["chosen"], column="chosen", role="assistant")
    rejected = _messages(values["rejected"], column="rejected", role="assistant")
    for column, answer in (("chosen", chosen), ("rejected", rejected)):
        if any(message["role"] != "assistant" for message in answer):
            raise ValueError(f"`{column}` must hold only the assistant's answer; put earlier turns in `prompt`")
    if chosen == rejected:
        raise ValueError("`chosen` equals `rejected`: the pair teaches no preference; fix or remove the row")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _messages(value: Any, *, column: str, role: str) -> list[Message]:
    """A text cell as one message of `role`; a list (or, from CSV, its JSON text) as chat messages."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        with contextlib.suppress(json.JSONDecodeError):  # else plain text that happens to start like JSON
            value = json.loads(value)
    if value is None or isinstance(value, str):
        if value is None or not value.strip():
            raise ValueError(f"empty `{column}`; fill it in or remove the row")
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise ValueError(f"`{column}` must be text or a non-empty list of {{role, content}} messages")
    messages = []
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"`{column}` message {number} needs a role ({', '.join(ROLES)}) and content")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"`{column}` message {number} ({message['role']}) has empty content")
        messages.append({"role": message["role"], "content": content})
    return messages
