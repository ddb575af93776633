"""Start a new task from the user's own data file: `<project> task init DATA_FILE`.

    <project> task init data/tickets.jsonl --name "Ticket triage"   # writes configs/ticket-triage.yaml

Reads the file (or folder) with dataset.py's loaders, decides the task's kind (extraction when at least 90% of
the answers are JSON objects), infers the answer's fields (keys in at least half the answers, first-seen
order) and a system prompt, and writes two configs: configs/default.yaml with its task and data sections
(and the settings that depend on the data's size) filled in, and configs/smoke.yaml likewise as
`<name>-smoke.yaml`: a tiny model built from the task's own rows, to run offline first. The task gets its
own `project` (registered model), so its first run becomes its champion instead of being compared with the
example's. Nothing is written when the file cannot be read or a config exists (unless `force`). The
returned lines say what was found and what to check.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, load_config
from ..tasks.answers import parse_prediction
from .dataset import DataError, DataSummary, shared_system_prompt, summarize_data, token_length

EXTRACTION_SHARE = 0.9  # answers that must be JSON objects for the task to be scored field by field
FIELD_SHARE = 0.5  # answers that must hold a key for it to become one of task.fields
SMOKE_EPOCHS = 10  # the random tiny model learns the answers' form only after many passes at its high rate
# A base config's comment quoting a measurement (0.079, 1.7x, 3.5 s, 231 tokens/s, 960 rows) describes the
# example's runs: it is dropped from the user's config, the setting kept.
FIGURE = re.compile(r"\d\.\d|\d(\.\d+)?x\b|\d+ s\b|tokens/s|\d{3,} (\w+ )?rows")
FORM_NAMES = {
    "messages": "chat `messages`",
    "prompt_completion": "`prompt` / `completion`",
    "instruction": "`instruction` / `input` / `output`",
}


class TaskInitError(DataError):
    """`task init` cannot write a config; the message names the file and the problem. Nothing was written."""


@dataclass
class TaskDraft:
    """What `task init` found in the data: the task section to write and the facts behind it."""

    name: str
    kind: str
    fields: list[str]
    coverage: dict[str, float]  # share of JSON answers holding each key, every key seen
    json_share: float
    system_prompt: str | None
    prompt_source: str  # where the system prompt comes from, in words
    data_format: str
    rows: dict[str, int]
    longest_tokens: int = 0  # a whole example, system prompt included
    longest_answer_tokens: int = 0
    measured: bool = False  # counted with the base model's tokenizer (else estimated from characters)
    notes: list[str] = field(default_factory=list)


def init_task(
    data_file: str | Path,
    *,
    name: str | None = None,
    out: str | Path | None = None,
    force: bool = False,
    base: str | Path = "configs/default.yaml",
    load_tokenizer: Callable[[str, str | None], Any] | None = None,
) -> tuple[Path, list[str]]:
    """Write a config for the task in `data_file`; return its path and the lines to show the user.

    `base` gives the config's structure and settings; `load_tokenizer(base_model, revision)` returns its
    model's tokenizer or None (then lengths are not measured), for data.max_seq_length and eval.max_new_tokens."""
    try:
        template = load_config(base)
    except ConfigError as err:
        raise TaskInitError(f"{base}: the config task init starts from cannot be used ({err})") from None
    summary = _read(str(data_file))
    tokenizer = load_tokenizer(template.model.base_model, template.model.revision) if load_tokenizer else None
    draft = draft_task(summary, name=name or _title(Path(data_file)), tokenizer=tokenizer)
    out = Path(out) if out else Path("configs") / f"{_slug(draft.name)}.yaml"
    project = _slug(draft.name) if _slug(draft.name) != template.project else f"{template.project}-task"
    texts = {out: config_text(_Base(base, template), draft, data_path=str(data_file), project=project, out=out)}
    smoke, smoke_out = Path(base).with_name("smoke.yaml"), out.with_name(f"{out.stem}-smoke.yaml")
    if smoke.exists():  # the tiny model has no tokenizer yet: lengths estimated at ~2 characters a token
        tiny = draft_task(summary, name=draft.name, tokenizer=None, chars_per_token=2)
        smoke_base = _Base(smoke, load_config(smoke), model=f"models/tiny-{_slug(draft.name)}")
        texts[smoke_out] = config_text(
            smoke_base, tiny, data_path=str(data_file), project=f"{project}-smoke", out=smoke_out
        )
    for path, text in texts.items():
        if path.exists() and not force:
            raise TaskInitError(f"{path} exists; pass --force to overwrite it, or --out to write another file")
        _check_written(text, draft, out=path)
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return out, describe(draft, data_file=str(data_file), written=list(texts), project=project)


@dataclass
class _Base:
    """The config a written one starts from: its file, its settings and, for the smoke one, the tiny model."""

    path: str | Path
    config: Config
    model: str | None = None  # models/tiny-<task>: a tiny model built from the task's own rows


def _read(data_file: str) -> DataSummary:
    try:
        summary = summarize_data(data_file)
    except DataError as err:
        raise TaskInitError(f"cannot read the data: {err}") from None
    if not any(summary.splits.values()):
        first = f": {summary.problems[0]}" if summary.problems else " (the file is empty)"
        raise TaskInitError(f"{data_file}: no usable rows{first}; `data validate` lists every problem")
    return summary


def draft_task(summary: DataSummary, *, name: str, tokenizer: Any = None, chars_per_token: int = 3) -> TaskDraft:
    """The task the data describes: kind, fields and their coverage, system prompt, layout and sizes."""
    rows = [messages for split in summary.splits.values() for messages in split]
    answers = [parse_prediction(messages[-1]["content"], strict=True) for messages in rows]
    objects = [answer for answer in answers if answer is not None]
    json_share = len(objects) / len(rows)
    kind = "extraction" if json_share >= EXTRACTION_SHARE else "generic"
    counts = Counter(key for answer in objects for key in answer)  # first-seen order, one pass
    coverage = {key: count / len(objects) for key, count in counts.items()}
    fields = [key for key, share in coverage.items() if share >= FIELD_SHARE] if kind == "extraction" else []
    prompt, source = shared_system_prompt(rows), "the system message every row starts with"
    if prompt is None and kind == "extraction":
        keys = f" Keys: {', '.join(fields)}." if fields else ""
        prompt, source = f"Reply with JSON only.{keys}", "proposed: the rows have no shared one"
    draft = TaskDraft(
        name=name,
        kind=kind,
        fields=fields,
        coverage=coverage,
        json_share=json_share,
        system_prompt=prompt,
        prompt_source=source if prompt else "none: the rows have no shared system message",
        data_format=max(summary.forms, key=lambda form: summary.forms[form]),
        rows={split: len(messages) for split, messages in summary.splits.items()},
    )
    if len(summary.forms) > 1:
        draft.notes.append(f"rows mix layouts ({', '.join(summary.forms)}): data.format is auto")
        draft.data_format = "auto"
    if summary.problems:
        draft.notes.append(f"{len(summary.problems)} row(s) cannot be used, first: {summary.problems[0]}")
    _measure(draft, [_with_prompt(messages, prompt) for messages in rows], tokenizer=tokenizer, chars=chars_per_token)
    return draft


def _measure(draft: TaskDraft, rows: list[list[dict[str, str]]], *, tokenizer: Any, chars: int) -> None:
    """The longest example and answer in tokens: counted as training counts them, or without the tokenizer
    estimated at `chars` characters a token plus a few for each message's template (~3 for an English BPE,
    ~2 for the tiny model's small vocabulary; both err long)."""
    draft.measured = tokenizer is not None
    if tokenizer is not None:
        draft.longest_tokens = max(token_length(messages, tokenizer) for messages in rows)
        draft.longest_answer_tokens = max(len(tokenizer(messages[-1]["content"])["input_ids"]) for messages in rows)
    else:
        draft.longest_tokens = max(sum(len(m["content"]) // chars + 5 for m in messages) for messages in rows)
        draft.longest_answer_tokens = max(len(messages[-1]["content"]) // chars + 1 for messages in rows)


def _with_prompt(messages: list[dict[str, str]], prompt: str | None) -> list[dict[str, str]]:
    if not prompt or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": prompt}, *messages]


def config_text(base: _Base, draft: TaskDraft, *, data_path: str, project: str, out: Path) -> str:
    """`base`'s YAML with its header, project, task and data sections replaced and the settings that depend on
    the data's size set: every other line stays as it is, less comments quoting the example's figures."""
    train_cfg = base.config.train
    per_epoch = math.ceil(draft.rows["train"] / (train_cfg.batch_size * train_cfg.gradient_accumulation_steps))
    epochs = SMOKE_EPOCHS if base.model else train_cfg.num_epochs
    steps = max(1, round(per_epoch * epochs))
    eval_every = max(1, steps // 3)
    lines = [_drop_figure(line) for line in _body(Path(base.path).read_text(encoding="utf-8"))]
    lines = _replace_section(lines, "task", _task_lines(draft), before="data")
    lines = _replace_section(lines, "data", _data_lines(draft, data_path), before="model")
    project_line = f"project: {project}  # {_project_comment(base)}"
    lines = [project_line if line.startswith("project:") else line for line in lines]
    length = f"{draft.rows['train']} training rows: {steps} optimizer steps"
    settings = {
        ("train", "max_steps" if base.model else "num_epochs"): (steps if base.model else epochs, length),
        ("train", "eval_steps"): (eval_every, "validation loss 3 times per run"),
        ("train", "save_steps"): (eval_every, "must be a multiple of eval_steps when early stopping is on"),
        ("eval", "max_samples"): (None, f"all {draft.rows['test']} test rows"),
    }
    if base.model:
        settings["model", "base_model"] = (base.model, "built from this task's training rows on first use")
        settings["model", "build_tiny"] = (True, "delete the folder to rebuild it")
    answer_room = _round_up(draft.longest_answer_tokens * 1.25, 16)
    settings["eval", "max_new_tokens"] = (answer_room, f"the longest answer is {_tokens(draft, answer=True)}")
    if draft.kind == "generic" and "field_accuracy" in base.config.tracking.promotion_metric:
        settings["tracking", "promotion_metric"] = ("finetuned.rouge_l", "ROUGE-L F1 of the answers on the test split")
    for (section, key), (value, comment) in settings.items():
        lines = _set_value(lines, section, key, value, comment)
    return "\n".join([f"# make data train evaluate CONFIG={out}", *_header(data_path, base), *lines]) + "\n"


def _project_comment(base: _Base) -> str:
    if base.model:
        return "this task's tiny-model runs: apart from the real model's, never compared with them"
    return "this task's registered model and MLflow experiment: its first run becomes its champion"


def _drop_figure(line: str) -> str:
    setting, hash_, comment = line.partition("  # ")
    return setting if hash_ and re.match(r"\s*\w+:", setting) and FIGURE.search(comment) else line


def _task_lines(draft: TaskDraft) -> list[str]:
    share = ", ".join(f"{key} {draft.coverage[key]:.0%}" for key in draft.fields)
    return [
        "task:",
        f"  name: {_scalar(draft.name)}  # short title: README intro and model card",
        '  description: ""  # write one sentence for people here: what goes in, what comes out',
        f"  kind: {draft.kind}  # {draft.json_share:.0%} of the answers are JSON objects",
        f"  fields: {_scalar(draft.fields)}  # answer keys scored per field, in this order ({share or 'none'})",
        f"  system_prompt: {_scalar(draft.system_prompt)}  # {draft.prompt_source}",
        "",
    ]


def _data_lines(draft: TaskDraft, data_path: str) -> list[str]:
    total = sum(draft.rows.values())
    split = " / ".join(f"{n} {name}" for name, n in draft.rows.items())
    length = f"the longest example is {_tokens(draft)}"
    return [
        "data:",
        f"  path: {_scalar(data_path)}  # {total} rows: {split}",
        f"  format: {draft.data_format}",
        f"  max_seq_length: {_max_seq_length(draft)}  # tokens; {length} (`data validate` checks every row)",
        "",
    ]


def _max_seq_length(draft: TaskDraft) -> int:
    return _round_up(draft.longest_tokens * 1.1, 64)


def _tokens(draft: TaskDraft, *, answer: bool = False) -> str:
    count = draft.longest_answer_tokens if answer else draft.longest_tokens
    return f"{count} tokens" if draft.measured else f"about {count} tokens, estimated from its characters"


def _header(data_path: str, base: _Base) -> list[str]:
    name = Path(base.path).name
    if base.model:
        return [
            f"# Written by `task init {data_path}` from {base.path}: your task, offline on a CPU, with a tiny random",
            f"# model built from your own training rows ({base.model}). Its results say the pipeline works on",
            "# your data, not that a model is good: the other config task init wrote trains a real one.",
        ]
    return [
        f"# Written by `task init {data_path}` from {base.path}: the task and data sections, the step counts",
        f"# and the answer length follow your data; the other settings are {name}'s. Check the",
        "# task section, then validate, train and evaluate with this file.",
    ]


def _body(text: str) -> list[str]:
    """The config's lines from its first key on (the header comment describes the file it came from)."""
    lines = text.splitlines()
    start = next((index for index, line in enumerate(lines) if re.match(r"\w", line)), 0)
    return lines[start:]


def _section_bounds(lines: list[str], section: str) -> tuple[int, int] | None:
    start = next((index for index, line in enumerate(lines) if line.startswith(f"{section}:")), None)
    if start is None:
        return None
    end = next((index for index in range(start + 1, len(lines)) if re.match(r"\w", lines[index])), len(lines))
    return start, end


def _replace_section(lines: list[str], section: str, new: list[str], *, before: str) -> list[str]:
    """`section`'s block replaced by `new`; a config without it gets `new` before the `before` section."""
    bounds = _section_bounds(lines, section) or _section_bounds(lines, before)
    if bounds is None:
        return [*lines, "", *new]
    start, end = bounds
    if not lines[start].startswith(f"{section}:"):  # no such section: insert it, keep `before`
        return [*lines[:start], *new, *lines[start:]]
    return [*lines[:start], *new, *lines[end:]]


def _set_value(lines: list[str], section: str, key: str, value: Any, comment: str) -> list[str]:
    """The `section.key` line set to `value # comment`; a config without the line gets it added."""
    new = f"  {key}: {_scalar(value)}  # {comment}"
    bounds = _section_bounds(lines, section)
    if bounds is None:
        return [*lines, "", f"{section}:", new]
    start, end = bounds
    for index in range(start + 1, end):
        if lines[index].startswith(f"  {key}:"):
            return [*lines[:index], new, *lines[index + 1 :]]
    return [*lines[: start + 1], new, *lines[start + 1 :]]


def _scalar(value: Any) -> str:
    # JSON strings and lists are valid YAML flow values, quoted where YAML would misread them.
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (str, list)) else str(value)


def _check_written(text: str, draft: TaskDraft, *, out: Path) -> None:
    """The config loads and says what the draft says (a guard against a base config this cannot edit)."""
    with tempfile.TemporaryDirectory() as scratch:  # never a half-checked file beside the user's
        probe = Path(scratch) / out.name
        probe.write_text(text, encoding="utf-8")
        try:
            task = load_config(probe).task
        except ConfigError as err:
            raise TaskInitError(f"{out}: the written config would not load ({err})") from None
    if (task.kind, task.fields, task.system_prompt) != (draft.kind, draft.fields, draft.system_prompt):
        raise TaskInitError(f"{out}: could not fill in the task section of the base config; edit it by hand")


def describe(draft: TaskDraft, *, data_file: str, written: list[Path], project: str) -> list[str]:
    """What `task init` found and what to check, for the terminal; `written[0]` is the real model's config,
    `written[1]`, if any, the tiny model's."""
    out = written[0]
    total = sum(draft.rows.values())
    form = FORM_NAMES.get(draft.data_format, "mixed layouts")
    lines = [
        f"read {data_file}: {total} rows ({form}); split {', '.join(f'{n} {s}' for s, n in draft.rows.items())}",
        f"kind: {draft.kind} ({draft.json_share:.0%} of the answers are JSON objects; extraction needs 90%)",
    ]
    if draft.kind == "extraction":
        covered = ", ".join(f"{key} {share:.0%}" for key, share in draft.coverage.items())
        lines.append(f"fields: {', '.join(draft.fields) or 'none'} (answers holding each key: {covered})")
    lines.append(f"system prompt: {json.dumps(draft.system_prompt)} ({draft.prompt_source})")
    lines.append(f"data.max_seq_length: {_max_seq_length(draft)} (the longest example is {_tokens(draft)})")
    if not draft.measured:
        lines.append("  the base model's tokenizer is not available offline: `data validate` measures every row")
    lines += [f"note: {note}" for note in draft.notes]
    lines += [
        f"wrote {out}. Check its task section:",
        f"  - task.name {json.dumps(draft.name)}: the title of the README and the model card",
        "  - task.description is empty: write one sentence (what goes in, what comes out)",
        "  - task.fields and task.system_prompt: the keys scored and the message put first in every prompt",
        f"registered model: {project} (this task's own; its first evaluated run becomes its champion)",
        f"then: make data train evaluate CONFIG={out}",
    ]
    if len(written) > 1:
        lines.append(f"offline first: make data train evaluate CONFIG={written[1]}")
        lines.append("  (a tiny model built from your rows: proves the pipeline on your data in about a minute)")
    if draft.rows.get("test", 0) < 100:
        lines.append(f"  (the test split has {draft.rows.get('test', 0)} rows: small differences in scores are noise)")
    return lines


def _title(path: Path) -> str:
    words = re.sub(r"[_\-.]+", " ", path.stem if path.suffix else path.name).strip()
    return words[:1].upper() + words[1:] if words else "My task"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "task"


def _round_up(value: float, step: int) -> int:
    return max(step, math.ceil(value / step) * step)
