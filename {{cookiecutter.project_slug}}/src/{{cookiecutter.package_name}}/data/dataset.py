"""Load, validate, format and split training data into chat `messages` rows.

    <project> data synth --out data/shop_extraction     # the shipped example (see shop_example.py)
    <project> data validate --config configs/smoke.yaml  # every problem, with file and line

`data.path` is a folder of train/validation/test files (.jsonl, .csv, .parquet), one such file, or a
Hugging Face hub dataset id. Rows are `messages`, `prompt`/`completion` or `instruction`/`input`/
`output`; each becomes [system?, user..., assistant] so training, evaluation and serving share one form.
Locations: JSONL and CSV report the 1-based file line; Parquet and hub data the 1-based row number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, DataConfig, TaskConfig
from ..errors import BadInput
from ..tasks.answers import parse_prediction
from ..tasks.kinds import task_kind

if TYPE_CHECKING:
    from datasets import DatasetDict

SPLITS = ("train", "validation", "test")
# File stems accepted for each split, so data exported by other tools loads unchanged.
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
EXTENSIONS = (".jsonl", ".csv", ".parquet")
ROLES = ("system", "user", "assistant")
FORMS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),  # `input` is optional
}
ACCEPTED_FORMS = "`messages`, `prompt` + `completion`, or `instruction` + `output` (+ optional `input`)"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Characters one row may hold (its JSON line, or the text of its cells): about 250,000 tokens, far beyond any
# data.max_seq_length. A longer row is refused before it is parsed or tokenized (one 50 MB row took 98 s and 15 GB).
MAX_ROW_CHARS = 1_000_000


class DataError(BadInput, ValueError):
    """The data cannot be loaded; the message names the file and line and says how to fix it."""


@dataclass(frozen=True)
class Problem:
    """One problem found in the data: where it is and what is wrong."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass(frozen=True)
class _Row:
    values: dict[str, Any]
    file: str
    line: int


@dataclass(frozen=True)
class _Example:
    messages: list[dict[str, str]]
    file: str
    line: int
    form: str  # the row's layout: a key of FORMS

    @property
    def prompt_key(self) -> str:
        # Everything the model sees before the answer: two rows with the same key teach conflicting
        # or duplicated answers, and the same key in train and test inflates the test score.
        return json.dumps(self.messages[:-1], sort_keys=True, ensure_ascii=False)


def load_splits(cfg: DataConfig, seed: int = 0, *, system_prompt: str | None = None) -> DatasetDict:
    """train/validation/test as `datasets` splits holding one `messages` column; raise DataError on bad data.

    A missing validation or test split is split off train with `cfg.validation_fraction` and
    `cfg.test_fraction`, shuffled with `seed` (fixed, so every run and command sees the same split).
    `system_prompt` (the config's task.system_prompt) is put first in every row that has no system message.
    """
    from datasets import Dataset, DatasetDict

    examples, problems = _collect(cfg, seed=seed, system_prompt=system_prompt)
    problems += _empty_split_problems(examples, cfg)
    if problems:
        more = f" (and {len(problems) - 1} more problems; `data validate` lists them all)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}")
    if cfg.max_train_samples:
        examples["train"] = examples["train"][: cfg.max_train_samples]
    return DatasetDict(
        {name: Dataset.from_dict({"messages": [ex.messages for ex in rows]}) for name, rows in examples.items()}
    )


def shared_system_prompt(rows: Iterable[list[dict[str, str]]]) -> str | None:
    """The system message every row starts with, when all rows start with the same one; else None."""
    prompts = {messages[0]["content"] if messages[0]["role"] == "system" else None for messages in rows}
    return prompts.pop() if len(prompts) == 1 else None


def with_recorded_system_prompt(config: Config, train_rows: Iterable[list[dict[str, str]]]) -> Config:
    """`config` whose null task.system_prompt is set to the system message all training rows share: what
    `train` writes to the run's config.yaml, so the run says which prompt the model learned with (and
    serving puts that one first). A set prompt, or rows without a shared one, leave it as it is."""
    if config.task.system_prompt is not None:
        return config
    prompt = shared_system_prompt(train_rows)
    return config.model_copy(update={"task": config.task.model_copy(update={"system_prompt": prompt})})


def validate_data(
    cfg: DataConfig, tokenizer: Any = None, seed: int = 0, *, task: TaskConfig | None = None
) -> list[Problem]:
    """Every problem in the data: row layout, empty fields, answers that do not fit `task` (extraction: not
    a JSON object, or missing one of task.fields), duplicates, leakage, and token lengths.

    Answers are checked only when a `task` is given, token lengths only when a tokenizer is (its chat
    template formats the rows exactly as training will). Raises DataError only when nothing can be read
    (missing path, bad extension).
    """
    examples, problems = _collect(cfg, seed=seed, system_prompt=task.system_prompt if task else None)
    problems += _empty_split_problems(examples, cfg)
    if task is not None and task_kind(task).json_answers:
        problems += _schema_problems([ex for rows in examples.values() for ex in rows], task.fields, cfg.path)
    for rows in examples.values():
        problems += _duplicate_problems(rows)
    for held_out in ("validation", "test"):
        problems += _leakage_problems(examples["train"], examples[held_out], held_out)
    if tokenizer is not None:
        for rows in examples.values():
            problems += _length_problems(rows, tokenizer, cfg.max_seq_length)
    return problems


@dataclass(frozen=True)
class DataSummary:
    """A data file or folder as `task init` sees it: each split's usable rows as messages (no system prompt
    added), how many rows had each layout (a key of FORMS), and the rows that could not be used."""

    splits: dict[str, list[list[dict[str, str]]]]
    forms: dict[str, int]
    problems: list[Problem]


def summarize_data(path: str, seed: int = 0) -> DataSummary:
    """Read `path` (a local file or folder) the way `load_splits` does; DataError when nothing is readable."""
    if not Path(path).exists():
        raise DataError(f"{path}: no such file or folder")
    examples, problems = _collect(DataConfig(path=path), seed=seed)
    forms: dict[str, int] = {}
    for example in (example for rows in examples.values() for example in rows):
        forms[example.form] = forms.get(example.form, 0) + 1
    splits = {name: [example.messages for example in rows] for name, rows in examples.items()}
    return DataSummary(splits=splits, forms=forms, problems=problems)


# ---------------------------------------------------------------------------------------------
# Reading: path -> rows per split, each row remembering its file and line.


def _collect(
    cfg: DataConfig, seed: int, system_prompt: str | None = None
) -> tuple[dict[str, list[_Example]], list[Problem]]:
    rows, problems = _read_source(cfg.path)
    rows = _split_missing(rows, cfg, seed=seed)
    examples: dict[str, list[_Example]] = {}
    for name in SPLITS:
        examples[name], found = _convert_split(rows[name], cfg, system_prompt=system_prompt)
        problems += found
    return examples, problems


def _read_source(path_or_id: str) -> tuple[dict[str, list[_Row]], list[Problem]]:
    path = Path(path_or_id)
    if path.is_dir():
        files = split_files(path)
    elif path.is_file():
        files = {"train": path}
    elif _HUB_ID.fullmatch(path_or_id):
        return _read_hub(path_or_id), []
    else:
        raise DataError(
            f"{path_or_id}: no such file or folder (and not a hub dataset id of the form org/name). "
            "Create the example data with `make data`, or set data.path to a .jsonl/.csv/.parquet file or a folder."
        )
    rows: dict[str, list[_Row]] = {}
    problems: list[Problem] = []
    for split, file in files.items():
        rows[split], found = read_data_file(file)
        problems += found
    return rows, problems


def split_files(folder: Path) -> dict[str, Path]:
    """The data file of each split in a folder; train is required, the others are split off it if absent."""
    files: dict[str, Path] = {}
    for split, stems in SPLIT_NAMES.items():
        candidates = [folder / f"{stem}{ext}" for stem in stems for ext in EXTENSIONS]
        matches = [path for path in candidates if path.is_file()]
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches)
            raise DataError(f"{folder}: several files for the {split} split ({names}); keep one")
        if matches:
            files[split] = matches[0]
    if "train" not in files:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise DataError(
            f"{folder}: no train file; expected train.jsonl, train.csv or train.parquet "
            f"(plus optional validation/valid/val/dev and test files), found: {found}"
        )
    return files


def read_data_file(path: Path) -> tuple[list[_Row], list[Problem]]:
    readers = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use one of {', '.join(EXTENSIONS)}")
    try:
        return reader(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the file as UTF-8") from None


def _read_jsonl(path: Path) -> tuple[list[_Row], list[Problem]]:
    rows, problems = [], []
    # utf-8-sig: a byte-order mark (some Windows editors write one) is skipped, as for CSV.
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, start=1):
            if len(line) > MAX_ROW_CHARS:
                problems.append(Problem(str(path), number, _too_long(len(line))))
                continue
            if not line.strip():
                continue  # blank lines (e.g. a trailing one) are harmless
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                fix = "each line must hold one complete JSON object"
                problems.append(Problem(str(path), number, f"invalid JSON: {err.msg} at column {err.colno}; {fix}"))
                continue
            if not isinstance(value, dict):
                problems.append(Problem(str(path), number, f"expected a JSON object, got {type(value).__name__}"))
                continue
            rows.append(_Row(value, str(path), number))
    return rows, problems


def _read_csv(path: Path) -> tuple[list[_Row], list[Problem]]:
    # Cells up to the row cap are read (the csv module's own limit is 131,072 characters); a longer one stops
    # the reader at once, before it is held in memory whole. The module-wide limit is restored after.
    previous_limit = csv.field_size_limit(MAX_ROW_CHARS)
    try:
        return _read_csv_rows(path)
    finally:
        csv.field_size_limit(previous_limit)


def _read_csv_rows(path: Path) -> tuple[list[_Row], list[Problem]]:
    rows, problems = [], []
    # utf-8-sig: spreadsheet exports often start with a byte-order mark that would corrupt the first column name.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        start = 2  # line 1 is the header
        try:
            for record in reader:
                if None in record:  # DictReader files surplus cells under the key None
                    fix = "quote cells with commas"
                    problems.append(Problem(str(path), start, f"more cells than header columns; {fix}"))
                else:
                    values = {k: _from_json_cell(v) if k == "messages" else v for k, v in record.items()}
                    rows.append(_Row(values, str(path), start))
                start = reader.line_num + 1  # a quoted cell may span several lines
        except csv.Error as err:  # a cell over the limit, or a NUL byte: the rest of the file cannot be read
            message = f"cannot read this row ({err}); rows after it were not read"
            if "field larger than field limit" in str(err):
                cap = f"{MAX_ROW_CHARS:,} characters"
                message = f"a cell over the {cap} a row may hold; shorten it (the rows after it were not read)"
            problems.append(Problem(str(path), start, message))
    return rows, problems


def _from_json_cell(cell: str | None) -> Any:
    """A CSV `messages` cell holds the list as JSON text; keep it as text if it does not parse (reported later)."""
    try:
        return json.loads(cell) if cell else cell
    except json.JSONDecodeError:
        return cell


def _read_parquet(path: Path) -> tuple[list[_Row], list[Problem]]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DataError(f"{path}: cannot read as Parquet ({err})") from None
    return [_Row(record, str(path), index) for index, record in enumerate(records, start=1)], []


def _read_hub(dataset_id: str) -> dict[str, list[_Row]]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id)
    except Exception as err:  # offline, unknown id, gated...: the library raises many types
        raise DataError(
            f"{dataset_id}: not a local file or folder, and loading it as a hub dataset id failed: {err}. "
            "Check the path (or run `make data` for the example data), or download the dataset while online."
        ) from None
    rows: dict[str, list[_Row]] = {}
    for split, stems in SPLIT_NAMES.items():
        name = next((stem for stem in stems if stem in dataset), None)
        if name is not None:
            label = f"{dataset_id} [{name}]"
            rows[split] = [_Row(dict(record), label, index) for index, record in enumerate(dataset[name], start=1)]
    if "train" not in rows:
        raise DataError(f"{dataset_id}: hub dataset has no train split (found: {', '.join(dataset)})")
    return rows


def _split_missing(rows: dict[str, list[_Row]], cfg: DataConfig, seed: int) -> dict[str, list[_Row]]:
    """Carve missing validation/test splits out of train, reproducibly."""
    missing = [split for split in ("validation", "test") if split not in rows]
    if not missing:
        return rows
    train = list(rows["train"])
    random.Random(seed).shuffle(train)
    fractions = {"validation": cfg.validation_fraction, "test": cfg.test_fraction}
    result = dict(rows)
    for split in missing:
        # At least one row each when there is anything to split, so a small file still evaluates.
        size = max(1, round(len(rows["train"]) * fractions[split])) if len(train) > 1 else 0
        result[split], train = train[:size], train[size:]
    result["train"] = sorted(train, key=lambda row: (row.file, row.line))  # keep file order for reading
    return result


# ---------------------------------------------------------------------------------------------
# Formatting: any accepted row form -> messages.


def _convert_split(
    rows: list[_Row], cfg: DataConfig, system_prompt: str | None
) -> tuple[list[_Example], list[Problem]]:
    examples, problems = [], []
    for row in rows:
        if (size := _text_size(row.values)) > MAX_ROW_CHARS:  # CSV, Parquet and hub rows (JSONL: when read)
            problems.append(Problem(row.file, row.line, _too_long(size)))
            continue
        try:
            form = _detect_form(row.values, cfg.format)
            messages = _with_system_prompt(_to_messages(row.values, form), system_prompt)
        except ValueError as err:
            problems.append(Problem(row.file, row.line, str(err)))
            continue
        examples.append(_Example(messages, row.file, row.line, form))
    return examples, problems


def _text_size(value: Any) -> int:
    """Characters of text in a row's values, nested lists and mappings included (keys are not counted)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_text_size(item) for item in value)
    return 0


def _too_long(size: int) -> str:
    return (
        f"row of {size:,} characters, over the {MAX_ROW_CHARS:,} characters a row may hold; "
        "shorten it or remove it (it was not read further)"
    )


def _detect_form(values: dict[str, Any], wanted: str) -> str:
    forms = list(FORMS) if wanted == "auto" else [wanted]
    for form in forms:
        if all(column in values for column in FORMS[form]):
            return form
    found = ", ".join(values) or "none"
    expected = ACCEPTED_FORMS if wanted == "auto" else " + ".join(f"`{c}`" for c in FORMS[wanted])
    raise ValueError(f"missing columns: found {found}; expected {expected} (data.format={wanted})")


def _to_messages(values: dict[str, Any], form: str) -> list[dict[str, str]]:
    if form == "messages":
        return _check_messages(values["messages"])
    if form == "prompt_completion" and isinstance(values["prompt"], list):
        # TRL's conversational prompt/completion: both sides are already message lists.
        completion = values["completion"]
        turns = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        return _check_messages([*values["prompt"], *turns])
    if form == "prompt_completion":
        user, answer = _text(values, "prompt"), _text(values, "completion")
    else:
        user, answer = _text(values, "instruction"), _text(values, "output")
        extra = values.get("input")
        if isinstance(extra, str) and extra.strip():
            user = f"{user}\n\n{extra.strip()}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _with_system_prompt(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    # A row's own system message wins, as a served request's does (serve/routes/chat.py).
    if not system_prompt or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def _text(values: dict[str, Any], column: str) -> str:
    value = values[column]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"empty `{column}`; fill it in or remove the row")
    if not isinstance(value, str):
        raise ValueError(f"`{column}` must be text, got {type(value).__name__}")
    return value


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list of {role, content} objects")
    checked = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {number} must be an object with `role` and `content`")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"message {number} has unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"message {number} ({role}) has empty content")
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer (role 'assistant'), the turn it learns")
    if not any(message["role"] == "user" for message in checked):
        raise ValueError("no user message: the model needs something to answer")
    return checked


# ---------------------------------------------------------------------------------------------
# Checks across rows.


def _empty_split_problems(examples: dict[str, list[_Example]], cfg: DataConfig) -> list[Problem]:
    return [
        Problem(cfg.path, None, f"the {split} split has no usable rows; add rows or fix the ones reported")
        for split, rows in examples.items()
        if not rows
    ]


def _schema_problems(examples: list[_Example], fields: list[str], path: str) -> list[Problem]:
    """Extraction answers that are not a JSON object, rows missing one of `fields`, and a summary for each
    field missing from most answers (then task.fields does not describe this data)."""
    problems, missing_counts, answers = [], dict.fromkeys(fields, 0), 0
    for example in examples:
        answer = parse_prediction(example.messages[-1]["content"], strict=True)
        if answer is None:
            fix = 'write it as one JSON object such as {"key": "value"}, or set task.kind=generic for free text'
            problems.append(Problem(example.file, example.line, f"the answer is not a JSON object; {fix}"))
            continue
        answers += 1
        missing = [field for field in fields if field not in answer]
        for field in missing:
            missing_counts[field] += 1
        if missing:
            fix = "add them (null when a value is absent) or fix task.fields"
            problems.append(Problem(example.file, example.line, f"the answer lacks {', '.join(missing)}; {fix}"))
    for field, count in missing_counts.items():
        if count > answers / 2:
            message = (
                f"task.fields: `{field}` is missing from {count} of {answers} answers: the schema does not match "
                "the data; fix task.fields (`task init` infers it from the data) or the answers"
            )
            problems.append(Problem(path, None, message))
    return problems


def _duplicate_problems(rows: Iterable[_Example]) -> list[Problem]:
    first_seen: dict[str, _Example] = {}
    problems = []
    for example in rows:
        original = first_seen.setdefault(example.prompt_key, example)
        if original is not example:
            where = f"line {original.line}" if original.file == example.file else f"{original.file}:{original.line}"
            problems.append(Problem(example.file, example.line, f"duplicate prompt (same as {where}); remove one"))
    return problems


def _leakage_problems(train: list[_Example], held_out: list[_Example], split: str) -> list[Problem]:
    seen = {example.prompt_key: example for example in train}
    problems = []
    for example in held_out:
        if (original := seen.get(example.prompt_key)) is not None:
            message = (
                f"leakage: the same prompt is in train ({original.file}:{original.line}); "
                f"the {split} score would be inflated, so remove it from one split"
            )
            problems.append(Problem(example.file, example.line, message))
    return problems


def _length_problems(rows: Iterable[_Example], tokenizer: Any, max_seq_length: int) -> list[Problem]:
    problems = []
    for example in rows:
        length = token_length(example.messages, tokenizer)
        if length > max_seq_length:
            message = (
                f"{length} tokens, longer than data.max_seq_length={max_seq_length}; "
                "shorten the example or raise data.max_seq_length (training would cut off the answer)"
            )
            problems.append(Problem(example.file, example.line, message))
    return problems


def token_length(messages: list[dict[str, str]], tokenizer: Any) -> int:
    """Tokens in one example exactly as training feeds it to the model: TRL's SFTTrainer renders the chat
    template and tokenizes in this one call (special tokens come from the template alone, no second BOS), for
    `messages` and prompt/completion rows alike. `data validate` and `train`'s refusal both count with it."""
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


# ---------------------------------------------------------------------------------------------
# Provenance: what train_log.json records about the data a run saw (the report shows it).

DATASET_INFO = "dataset_info.json"  # `data synth` writes it next to the files it generates: generator, seed, rows
USER_DATA = "your data"


def data_record(cfg: DataConfig, *, rows: dict[str, int]) -> dict[str, Any]:
    """train_log.json's `data`: path, origin, digest (sha256 over the split files' bytes, in split order;
    None for a hub dataset, which has no local files) and the rows per split that training used."""
    files = _source_files(cfg.path)
    digest = hashlib.sha256()
    for path in files.values():
        digest.update(path.read_bytes())
    return {
        "path": cfg.path,
        "origin": _origin(files),
        "digest": digest.hexdigest() if files else None,
        "rows": rows,
    }


def _source_files(path_or_id: str) -> dict[str, Path]:
    path = Path(path_or_id)
    if path.is_dir():
        return split_files(path)
    return {path.stem: path} if path.is_file() else {}


def _origin(files: dict[str, Path]) -> str:
    """Generated (by which command, with which seed) when the files sit next to `data synth`'s
    dataset_info.json and still hold the rows it wrote (an edited or replaced file is the user's); else USER_DATA."""
    folders = {path.parent for path in files.values()}
    if len(folders) != 1:
        return USER_DATA
    try:
        info = json.loads((folders.pop() / DATASET_INFO).read_text(encoding="utf-8"))
        written = info["rows"]
        generated = all(
            path.suffix == ".jsonl" and written.get(split) == _count_rows(path) for split, path in files.items()
        )
        return f"generated by `{info['generator']}` (seed {info['seed']})" if generated else USER_DATA
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no (or a broken) dataset_info.json
        return USER_DATA


def _count_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as lines:
        return sum(1 for line in lines if line.strip())


def epochs_seen(*, steps: int, batch_size: int, accumulation: int, train_rows: int, devices: int = 1) -> float | None:
    """Passes over the training rows: rows consumed (steps x batch x accumulation x devices) / training rows,
    2 decimals; None without rows. `train` records it; `report` warns when it is high (overfitting)."""
    if train_rows <= 0:
        return None
    return round(steps * batch_size * accumulation * devices / train_rows, 2)


def training_rows(config: Config) -> list[list[dict[str, str]]]:
    """The training split's conversations: where the baselines take their answers and examples from."""
    return list(load_splits(config.data, system_prompt=config.task.system_prompt)["train"]["messages"])
