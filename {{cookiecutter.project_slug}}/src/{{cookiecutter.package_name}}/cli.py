"""Command-line interface: one Typer app, each subcommand a thin call into one pipeline function.

    <project> config show --config configs/smoke.yaml train.max_steps=5
    <project> config keys
    <project> task init data/tickets.jsonl [--name "Ticket triage"]   # a config for your own task
    <project> train --config configs/smoke.yaml [--resume] [key=value ...]
    <project> data prefs --config configs/dpo.yaml && <project> train --config configs/dpo.yaml   # DPO after SFT
    <project> evaluate [--adapter outputs/<run>/adapter] [--config FILE [--other-data]]
    <project> merge --adapter outputs/<run>/adapter --out outputs/<run>/merged
    <project> serve [--model outputs/<run>/adapter] [--host 127.0.0.1] [--port 8000]
    <project> serve-vllm [--model outputs/<run>/adapter] [--print]   # vLLM on a GPU
    <project> report --config configs/smoke.yaml    # plots, README results, MODEL_CARD.md
    <project> publish --dry-run [--private] [--hf] [--anyway]

Heavy libraries (torch, transformers, mlflow) are imported inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
import yaml

from .clouds.cli import cloud_app
from .clouds.entrypoint import recipe_for
# >>> multi_gpu
from .config import Config, describe_keys, load_config
# <<< multi_gpu
# >>> !multi_gpu
from .config import describe_keys, load_config
# <<< !multi_gpu
from .errors import BadInput, ErrorBoundary, ProjectError

# ErrorBoundary is the CLI's one error boundary: an expected error (errors.ProjectError) ends as `error: <message>`
# and its class's exit code (bad input 2, failure 1), with no traceback; anything else is a bug and keeps its own.
app = typer.Typer(
    cls=ErrorBoundary,
    help="Fine-tune, evaluate, track and serve a LoRA-adapted LLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect configuration files and the settings they can hold.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(cloud_app, name="cloud")  # clouds/cli.py: import a run trained elsewhere (notebook, cloud job)
# Library warnings known to be harmless, as (message, category, module): each is silenced on its own, so a
# newcomer does not read it as an error, and every other warning still shows.
HARMLESS_WARNINGS = [
    # peft asks each model `is_gradient_checkpointing`, which transformers 5 renamed; the answer is the same.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
    # mlflow.data.from_pandas with a local path: MLflow has its local-artifact source registered twice and says
    # which one it took; both are the same class, so the logged dataset is the same.
    (
        r"The specified dataset source can be interpreted in multiple ways",
        UserWarning,
        r"mlflow\.data\.dataset_source_registry",
    ),
]
# MLflow checks a logged model by decoding with clean_up_tokenization_spaces=True; transformers skips that
# clean-up for BPE tokenizers (it would eat spaces) and logs so: the decoded text is right either way.
HARMLESS_LOG_RECORDS = [("transformers.tokenization_utils_tokenizers", "Ignoring clean_up_tokenization_spaces=True")]


class _DropRecordsStartingWith(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@app.callback()
def _silence_harmless_warnings() -> None:
    """Runs before every command: the narrow filters above, each added once."""
    for message, category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for logger_name, prefix in HARMLESS_LOG_RECORDS:
        logger = logging.getLogger(logger_name)
        if not any(getattr(known, "prefix", None) == prefix for known in logger.filters):
            logger.addFilter(_DropRecordsStartingWith(prefix))
    moved = moved_project_warning(Path.cwd(), package_dir=Path(__file__).parent)
    if moved:
        typer.secho(moved, err=True, fg=typer.colors.YELLOW)


def moved_project_warning(project: Path, *, package_dir: Path) -> str | None:
    """A project folder whose src/ is not the code running: its .venv was made (`make install`) before the
    project was moved or copied, and still runs the old folder's code. An installed copy (site-packages: a
    container, a cloud job) is not another folder's source, and is not warned about."""
    own = project / "src" / package_dir.name
    if not own.is_dir() or own.resolve() == package_dir.resolve() or "site-packages" in package_dir.parts:
        return None
    return (
        f"warning: this command runs the code in {package_dir.parents[1]}, not {project}: the project was moved "
        "or copied after `make install`. Fix: rm -rf .venv && make install (or move the project back)."
    )


DEFAULT_CONFIG = Path("configs/smoke.yaml")  # the offline tiny model: every command works without a download
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file (see configs/).")]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides as key.sub=value (e.g. train.max_steps=20 lora.r=8).", show_default=False),
]


@config_app.command("show")
def config_show(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None) -> None:
    """Print the resolved config (file + overrides + defaults) as YAML."""
    resolved = load_config(config, overrides or [])
    typer.echo(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False), nl=False)


@config_app.command("keys")
def config_keys() -> None:
    """List every config key with its default and what it does."""
    for key, default, text in describe_keys():
        typer.echo(f"{key} = {default}\n    {text}")


# --- data ------------------------------------------------------------------------------------

data_app = typer.Typer(help="Create the example dataset and check any dataset before training.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder for train/validation/test.jsonl.")] = Path("data/shop_extraction"),
    n: Annotated[int, typer.Option(min=20, help="Unique examples in all, split 80/10/10.")] = 1200,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite the files in a non-empty --out folder.")] = False,
) -> None:
    """Generate the shop-message extraction dataset (chat `messages` JSONL)."""
    from .data.shop_example import synthesize

    if out.is_dir() and any(out.iterdir()) and not force:
        raise BadInput(f"{out} is not empty; pass --force to overwrite it")
    counts = synthesize(out, n=n, seed=seed)
    typer.echo(f"wrote {out}: " + ", ".join(f"{split} {rows}" for split, rows in counts.items()))


@data_app.command("validate")
def data_validate(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None) -> None:
    """Report every data problem with file and line: schema, empty fields, duplicates, leakage, lengths."""
    from .data.dataset import validate_data

    resolved = load_config(config, overrides or [])
    tokenizer = _offline_tokenizer(resolved.model.base_model, resolved.model.revision)
    if tokenizer is None and resolved.model.build_tiny and not Path(resolved.model.base_model).exists():
        typer.echo(f"note: {resolved.model.base_model} is not built yet (`train` builds it from the training rows); "
                   "token lengths are checked once it exists")  # fmt: skip
    elif tokenizer is None:
        note = f"note: tokenizer of {resolved.model.base_model} is not available offline; token lengths not checked"
        typer.echo(note)
    # Nothing readable (a missing path, a bad extension) is a DataError (exit 2); problems found are listed (exit 1).
    problems = validate_data(resolved.data, tokenizer=tokenizer, task=resolved.task)
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        typer.secho(f"{len(problems)} problem(s) in {resolved.data.path}", fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.secho(f"{resolved.data.path}: no problems found", fg=typer.colors.GREEN)


# >>> preference_tuning
@data_app.command("prefs")
def data_prefs(
    config: ConfigOption = Path("configs/dpo.yaml"),
    overrides: Overrides = None,
    adapter: Annotated[
        str | None,
        typer.Option(help="SFT adapter: outputs/<run>, its adapter/ or models:/... (default: model.adapter)"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the pairs (default dpo.data_path).")] = None,
    min_pairs: Annotated[
        int | None, typer.Option(min=0, help="Top up with rule-made pairs to this many (default dpo.min_pairs).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the files in a non-empty --out folder.")] = False,
    refresh: Annotated[
        bool, typer.Option(help="Keep pairs built from this SFT model for this task (or your own); rebuild others.")
    ] = False,
) -> None:
    """Build DPO preference pairs from the training split: the SFT model's wrong answers, then corruptions."""
    from .preference.pairs import build_preferences

    resolved = load_config(config, overrides or [])
    source = adapter or resolved.model.adapter
    if not source:
        raise BadInput("no SFT adapter: pass --adapter or set model.adapter")
    _show_progress_messages()
    folder = out or Path(resolved.dpo.data_path)
    info = build_preferences(
        resolved, adapter=source, out_dir=folder, min_pairs=min_pairs, force=force, refresh=refresh
    )
    if info.get("reused"):
        typer.echo(f"kept {folder}: built from this SFT model for this task, or pairs of your own (--force rebuilds)")
        return
    kinds = ", ".join(f"{kind} {count}" for kind, count in info["kinds"].items())
    typer.echo(f"wrote {folder}: train {info['rows']['train']}, validation {info['rows']['validation']} ({kinds})")


# <<< preference_tuning
def _offline_tokenizer(base_model: str, revision: str | None):  # -> PreTrainedTokenizerBase | None
    """The base model's tokenizer if a local folder or the hub cache has it; never downloads."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_model, revision=revision, local_files_only=True)
    except (OSError, ValueError):  # not downloaded / not a model folder
        return None


# --- task ------------------------------------------------------------------------------------

task_app = typer.Typer(help="Start a task of your own from your data.", no_args_is_help=True)
app.add_typer(task_app, name="task")


@task_app.command("init")
def task_init(
    data_file: Annotated[Path, typer.Argument(help="Your data: a .jsonl/.csv/.parquet file or a folder of splits.")],
    name: Annotated[str | None, typer.Option(help="Short title of the task; default: from the file name.")] = None,
    out: Annotated[Path | None, typer.Option(help="Config to write; default: configs/<name>.yaml.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --out file.")] = False,
    base: Annotated[Path, typer.Option(help="Config whose other settings the new one takes.")] = Path(
        "configs/default.yaml"
    ),
) -> None:
    """Infer the task from your data (kind, JSON fields, system prompt) and write a config; print what to check."""
    from .data.task_init import init_task

    # Unreadable data or an existing --out: bad input (exit 2), nothing written.
    _, lines = init_task(data_file, name=name, out=out, force=force, base=base, load_tokenizer=_offline_tokenizer)
    for line in lines:
        typer.echo(line)


# --- train, evaluate, merge ------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each message: test runners (CliRunner) swap it per command, and a
    handler holding the first command's stream would write to a closed file afterwards."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # StreamHandler.__init__ sets it; the property always answers the current sys.stderr


def _show_progress_messages() -> None:
    """Print this package's INFO messages (run folder, model built, reports written) on stderr; in a launch of
    several processes only the main one does (the others print warnings and errors only)."""
    from .model.device import is_main_process

    logger = logging.getLogger(__package__)
    if not is_main_process():
        logger.setLevel(logging.WARNING)
        return
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    # Printed here only: a library that configures the root logger (a module-level logging.info() does) would
    # print each message a second time, as "INFO:<module>:...".
    logger.propagate = False


@app.command()
def train(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run's last checkpoint (train.run_name, else the newest run).")
    ] = False,
    # >>> multi_gpu
    nproc: Annotated[
        int, typer.Option(min=1, help="Processes per machine (a GPU each; CPU: cores); >1 launches accelerate.")
    ] = 1,
    strategy: Annotated[
        str, typer.Option(help="ddp | fsdp | deepspeed: the accelerate config in configs/accelerate/ to launch with.")
    ] = "ddp",
    num_machines: Annotated[int, typer.Option(min=1, help="Machines in a multi-node run (run this on each).")] = 1,
    machine_rank: Annotated[int, typer.Option(min=0, help="This machine's rank, 0 on the main machine.")] = 0,
    main_process_ip: Annotated[str | None, typer.Option(help="Address of machine 0 (multi-node).")] = None,
    main_process_port: Annotated[int, typer.Option(help="Port of the processes' rendezvous on machine 0.")] = 29500,
    # <<< multi_gpu
) -> None:
    """Fine-tune the base model with LoRA; writes outputs/<run>/adapter/ and config.yaml."""
    from .model.device import is_main_process
    from .train.sft import train as run_training

    resolved = load_config(config, overrides or [])
    # >>> multi_gpu
    if nproc * num_machines > 1 or strategy != "ddp":  # several processes: this one only launches them
        args = ["--config", str(config), *(["--resume"] if resume else []), *(overrides or [])]
        machines = {"num_machines": num_machines, "machine_rank": machine_rank, "main_process_ip": main_process_ip}
        launch = {**machines, "nproc": nproc, "strategy": strategy, "main_process_port": main_process_port}
        raise typer.Exit(_launch_training(resolved, train_args=args, launch=launch))
    # <<< multi_gpu
    _show_progress_messages()
    run_dir = run_training(resolved, config_name=config.stem, resume=resume, recipe=recipe_for(resolved))
    if is_main_process():  # launched by accelerate, the other processes print nothing
        typer.secho(f"adapter: {run_dir / 'adapter'}", fg=typer.colors.GREEN)


# >>> multi_gpu
def _launch_training(resolved: Config, *, train_args: list[str], launch: dict) -> int:
    """Run `train` in several processes through `accelerate launch` (the command of distributed.launch_command,
    printed first); return its exit status. What cannot run here is refused first (DistributedError: exit 2),
    nothing started."""
    import shlex
    import subprocess

    from .distributed import launch as distributed
    from .model.device import resolve_device

    shape = distributed.LaunchShape(**launch)
    try:
        # train.device=cpu needs no torch import here (seconds before the launch starts)
        device = "cpu" if resolved.train.device == "cpu" else resolve_device(resolved.train.device)
        distributed.check_launch(
            nproc=shape.nproc,
            strategy=shape.strategy,
            device=device,
            load_in_4bit=resolved.model.load_in_4bit,
            devices_available=distributed.devices_available(device),
        )
        command = distributed.launch_command(shape, train_args=train_args)
    except ProjectError as err:  # e.g. train.device=cuda without a GPU: a launch that cannot run, as the rest
        raise distributed.DistributedError(str(err)) from None
    beside_python = Path(sys.executable).with_name(command[0])  # this environment's accelerate, not another's
    typer.echo(f"$ {shlex.join(command)}", err=True)
    if beside_python.is_file():
        command[0] = str(beside_python)
    return subprocess.run(command, check=False).returncode


# <<< multi_gpu
# >>> sweeps
@app.command()
def sweep(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    trials: Annotated[
        int, typer.Option(min=1, help="Finished trials the study should hold; a continued study runs only the rest.")
    ] = 6,
    study_name: Annotated[
        str | None, typer.Option(help="Optuna study and MLflow parent run (default: sweep.study_name).")
    ] = None,
    best_config: Annotated[
        Path | None, typer.Option(help="Where the best config goes; default best.yaml beside --config.")
    ] = None,
) -> None:
    """Search the config's sweep.space with Optuna (pruning bad trials); writes configs/best.yaml and plots."""
    import time

    from .sweep.sweep import check_space, run_sweep

    load_config(config, overrides or [])
    check_space(config, overrides=overrides or [])  # an unknown key or impossible range: refused before training
    _show_progress_messages()
    started = time.monotonic()
    result = run_sweep(config, trials=trials, overrides=overrides or [], study_name=study_name, best_config=best_config)
    counts = ", ".join(f"{count} {state.lower()}" for state, count in sorted(result.states.items()))
    typer.echo(f"study {result.study_name}: {counts} ({result.ran} run now, {time.monotonic() - started:.0f} s)")
    for note in result.notes:
        typer.echo(f"note: {note}")
    if result.best_config is not None:
        values = " ".join(f"{key}={value}" for key, value in result.best_params.items())
        best = f"best trial {result.best_trial}: {result.objective}={result.best_value:.4f} with {values}"
        typer.secho(f"{best}\nbest config: {result.best_config}", fg=typer.colors.GREEN)


# <<< sweeps
@app.command()
def evaluate(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config file; default: the evaluated run's own config.yaml (configs/smoke.yaml for an adapter "
            "without one). One that disagrees with the run's on the data or the task is refused.",
            show_default=False,
        ),
    ] = None,
    overrides: Overrides = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            help="Adapter folder or MLflow model URI (models:/<name>@champion, runs:/<id>/model); "
            "default: the newest outputs/*/adapter."
        ),
    ] = None,
    other_data: Annotated[
        bool,
        typer.Option(
            "--other-data",
            help="Score the model on the data and task of --config although its run's differ, on purpose: the "
            "metrics go to a new MLflow run tagged evaluation_of=<run>, never over the run's own; no promotion gate.",
        ),
    ] = False,
    # >>> llama_cpp
    gguf: Annotated[
        Path | None,
        typer.Option(
            help="Score a GGUF file (`export gguf`) of the evaluated run instead, on the same rows, paired with "
            "reports/eval.json's adapter scores; adds its line to reports/quantization.json and the README's table."
        ),
    ] = None,
    # <<< llama_cpp
) -> None:
    """Score base vs fine-tuned on the held-out split; writes reports/eval.json and reports/eval.md.
    With tracking on, logs the metrics to the model's MLflow run and runs the promotion gate."""
    from .config import TrainConfig
    from .evaluate.evaluate import evaluate as run_evaluation
    from .registry import ModelSource, resolve_model_source

    _show_progress_messages()
    # >>> llama_cpp
    if gguf is not None:
        return _evaluate_gguf(gguf, config=config, overrides=overrides or [])
    # <<< llama_cpp
    model: str | ModelSource | None = adapter
    if config is None:  # the run's own config: the model is resolved here, once
        model = resolve_model_source(adapter, output_dir=TrainConfig().output_dir, given_as="--adapter")
        config = model.config_path() or DEFAULT_CONFIG
        typer.echo(f"config: {config}", err=True)
    resolved = load_config(config, overrides or [])
    _print_scores(run_evaluation(resolved, adapter_dir=model, other_data=other_data))


def _print_scores(report: dict) -> None:
    """One line per column of eval.json: majority, classical, base, few-shot, fine-tuned."""
    baselines = report.get("baselines", {})
    columns = {"majority": baselines.get("majority"), "classical": baselines.get("classical"), "base": report["base"]}
    columns |= {"few_shot": baselines.get("few_shot"), "finetuned": report["finetuned"]}
    for name, scores in columns.items():
        if scores and "n/a" in scores:
            typer.echo(f"{name:>9}: n/a, {scores['n/a']}")
        elif scores:  # the baselines' settings (k, prompt tokens, the majority answer) are in eval.json
            shown = [(key, value) for key, value in scores.items() if isinstance(value, float)]
            typer.echo(f"{name:>9}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown if "_accuracy_" not in k))


# >>> llama_cpp
def _evaluate_gguf(path: Path, *, config: Path | None, overrides: list[str]) -> None:
    from .evaluate.gguf import evaluate_gguf
    from .registry import resolve_model_source
    from .report.quantization import update_readme
    from .tasks.kinds import task_kind

    own = resolve_model_source(path.parent).config_path() if (path.parent / "adapter").is_dir() else None
    resolved = load_config(config or own or DEFAULT_CONFIG, overrides)
    report = evaluate_gguf(resolved, path=path)
    metric = task_kind(resolved.task).headline
    for name, line in report["lines"].items():
        typer.echo(f"{name:>8}: {metric} {line['metrics'][metric]['estimate']:.3f}, {line['tokens_per_s']} tokens/s")
    if update_readme(report, metric=metric):
        typer.echo("README.md: quantization table updated")


# <<< llama_cpp
@app.command()
def promote(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    version: Annotated[str | None, typer.Option(help="Registered version to judge; default: @candidate.")] = None,
) -> None:
    """Promotion gate: alias the candidate `champion` if it beats the champion on tracking.promotion_metric."""
    from .evaluate.gate import promote as run_gate

    resolved = load_config(config, overrides or [])
    decision = run_gate(resolved, version=version, report_dir=Path(resolved.eval.report_dir))
    verdict = "promoted to champion" if decision.verdict == "promoted" else decision.verdict
    color = typer.colors.GREEN if decision.promoted else typer.colors.YELLOW
    typer.secho(f"{decision.model} version {decision.candidate_version}: {verdict} ({decision.reason})", fg=color)


def _evaluated_run_config() -> Path:
    """The config of the run that reports/eval.json scored (its outputs/<run>/config.yaml, else the copy in its
    MLflow run), so that `report` describes and prices that run; DEFAULT_CONFIG before any evaluation."""
    from .config import EvalConfig, TrainConfig
    from .report.facts import ReportError, find_run_dir, read_results
    from .runs import run_config_path

    try:
        run = read_results(Path(EvalConfig().report_dir))["run"]
    except ReportError:
        return DEFAULT_CONFIG
    run_dir = find_run_dir(run, output_dir=Path(TrainConfig().output_dir))
    return run_config_path(run_dir=run_dir, run_id=run.get("mlflow_run_id")) or DEFAULT_CONFIG


@app.command()
def report(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config file; default: the config of the run reports/eval.json scored.",
            show_default=False,
        ),
    ] = None,
    overrides: Overrides = None,
    readme: Annotated[
        Path,
        typer.Option(
            help="README whose text between <!-- results:start --> and <!-- results:end --> (and between "
            "<!-- task:start --> and <!-- task:end -->, the intro's task paragraph) is replaced."
        ),
    ] = Path("README.md"),
    model_card: Annotated[Path, typer.Option(help="Hugging Face model card to write.")] = Path("MODEL_CARD.md"),
) -> None:
    """Plots (reports/*.png), the README results section and MODEL_CARD.md from the last evaluation."""
    from .report import write_report

    resolved = load_config(config or _evaluated_run_config(), overrides or [])
    _show_progress_messages()
    written = write_report(resolved, readme=readme, model_card=model_card)
    typer.secho("wrote " + ", ".join(str(path) for path in written), fg=typer.colors.GREEN)


@app.command()
def publish(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what still looks like the template, every command and API call.")
    ] = False,
    anyway: Annotated[
        bool, typer.Option("--anyway", help="Publish although parts still look like the unmodified template.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal).")
    ] = False,
    private: Annotated[bool, typer.Option("--private/--public", help="Visibility of the new repositories.")] = False,
    repo: Annotated[
        str | None, typer.Option(help="GitHub <user>/<name>; default: [project.urls] Repository in pyproject.toml.")
    ] = None,
    hf: Annotated[
        bool, typer.Option("--hf", help="Also push the adapter + MODEL_CARD.md to the Hugging Face Hub (HF_TOKEN).")
    ] = False,
    hf_repo: Annotated[
        str | None, typer.Option(help="Hub model id <user>/<name>; default: <your user>/<project>.")
    ] = None,
) -> None:
    """Create the GitHub repository with `gh` and push (asks first); --hf also publishes the model on the Hub."""
    import sys

    from .publish import PublishRequest, World
    from .publish import publish as run_publish

    resolved = load_config(config, overrides or [])
    request = PublishRequest(
        repo=repo,
        private=private,
        hf=hf,
        hf_repo=hf_repo,
        yes=yes,
        dry_run=dry_run,
        anyway=anyway,
        interactive=sys.stdin.isatty(),
    )
    world = World(confirm=lambda question: typer.confirm(question, default=False), echo=typer.echo)
    run_publish(resolved, root=Path.cwd(), request=request, world=world)


@app.command()
def merge(
    adapter: Annotated[Path, typer.Option(help="Trained adapter folder, e.g. outputs/<run>/adapter.")],
    out: Annotated[Path, typer.Option(help="New folder for the merged model (must not exist or be empty).")],
) -> None:
    """Fold the LoRA adapter into its base model: full weights + tokenizer, loadable without peft."""
    from .model.load import merge_adapter

    _show_progress_messages()
    merged = merge_adapter(adapter, out)
    typer.secho(f"merged model: {merged}", fg=typer.colors.GREEN)


# >>> llama_cpp
export_app = typer.Typer(help="Export the fine-tuned model for other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("gguf")
def export_gguf(
    model: Annotated[
        str, typer.Option(help="Run or adapter folder, `latest`, or an MLflow model URI (models:/<name>@champion).")
    ] = "latest",
    quant: Annotated[str, typer.Option("--type", help="f16 | q8_0 | q4_k_m (llama.cpp's quantization).")] = "q4_k_m",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for model-<type>.gguf; default: the run folder (outputs/<name>-v<version> for a URI)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing model-<type>.gguf.")] = False,
) -> None:
    """Merge the adapter into its base, convert it with llama.cpp to GGUF, quantize; an Ollama Modelfile beside it."""
    from .config import TrainConfig
    from .export.gguf import Export, export_folder, export_gguf, log_export
    from .registry import resolve_model_source

    _show_progress_messages()
    source = resolve_model_source(model, output_dir=TrainConfig().output_dir)
    config_file = source.config_path()
    folder = out or export_folder(source, TrainConfig().output_dir)
    job = Export(
        source=source, config=config_file and load_config(config_file), quant=quant, out_dir=folder, force=force
    )
    written = export_gguf(job)
    typer.secho(
        f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB) and {written.with_suffix('.Modelfile')}",
        fg=typer.colors.GREEN,
    )
    logged = log_export(source, written)
    typer.echo(logged)


# <<< llama_cpp
# --- serve -----------------------------------------------------------------------------------


# The options `serve` and `serve-vllm` share.
HostOption = Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 opens it to the network.")]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")]
ModelConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config with model loading options, for adapters without a config.yaml."),
]


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(help="Adapter folder, `latest` (newest outputs/*/adapter) or MLflow URI; default: LLM_MODEL."),
    ] = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    config: ModelConfigOption = None,
    # >>> llama_cpp
    backend: Annotated[
        str | None,
        typer.Option(help="transformers | llama.cpp (a GGUF file `export gguf` wrote); default: LLM_BACKEND."),
    ] = None,
    # <<< llama_cpp
) -> None:
    """Serve the model: OpenAI-compatible API, /metrics, demo page at /. Other settings: LLM_* variables."""
    from .monitor.request_log import check_request_log
    from .registry import resolve_model_source
    from .serve.app import create_app
    from .serve.server import run

    options = {"model": model, "config": config}
    # >>> llama_cpp
    options["backend"] = backend
    # <<< llama_cpp
    settings = _serve_settings(**options)
    if settings.request_log is not None:
        check_request_log(settings.request_log)  # opened by the app at start-up: refuse it here, not there
    _show_progress_messages()
    # A wrong --model fails here, before the server starts.
    # >>> llama_cpp
    if settings.backend == "llama.cpp":
        from .serve.llama_cpp import gguf_to_serve

        served = gguf_to_serve(settings)  # a missing file or llama.cpp build: refused before the server starts
        typer.echo(f"serving {served} with llama.cpp at http://{host}:{port}/ (API under /v1, metrics at /metrics)")
        return run(create_app(settings), host=host, port=port)
    # <<< llama_cpp
    source = resolve_model_source(settings.model, output_dir=settings.output_dir)
    typer.echo(f"serving {source.adapter_dir} at http://{host}:{port}/ (API under /v1, metrics at /metrics)")
    run(create_app(settings), host=host, port=port)  # uvicorn with the header, connection and shutdown limits


# >>> multi_gpu
@app.command("serve-vllm")
def serve_vllm(
    model: Annotated[
        str | None,
        typer.Option(
            help="Adapter folder, run folder, `latest`, MLflow URI, or a folder `merge` wrote; default: LLM_MODEL."
        ),
    ] = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    config: ModelConfigOption = None,
    print_only: Annotated[bool, typer.Option("--print", help="Print the vLLM command instead of running it.")] = False,
) -> None:
    """Serve the model with vLLM on a GPU: same model id, chat template and API key (LLM_API_KEY) as `serve`."""
    from .distributed.vllm import VllmError, exec_vllm, printable, resolve_target, vllm_command

    settings = _serve_settings(model=model, config=config)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    try:
        command = vllm_command(resolve_target(settings), host=host, port=port)
        if print_only:
            typer.echo(printable(command, with_key=api_key is not None))
            return
        exec_vllm(command, api_key=api_key)
    except ProjectError as err:  # no model, a rank vLLM cannot serve, vLLM not installed: nothing started
        raise VllmError(str(err)) from None


# <<< multi_gpu
def _serve_settings(**options: str | Path | None):  # -> serve.settings.Settings
    """LLM_* variables (and .env) with the command's options on top (those given: model, config, ...); BadInput
    (exit 2) naming each bad variable."""
    from pydantic import ValidationError

    from .serve.settings import Settings

    try:
        settings = Settings(**{key: value for key, value in options.items() if value})
    except ValidationError as err:
        problems = [
            f"LLM_{'_'.join(str(part) for part in problem['loc']).upper()}: {problem['msg']} "
            f"(got {problem.get('input')!r})"
            for problem in err.errors()
        ]
        raise BadInput("\n  ".join(problems)) from None
    if settings.config is not None:
        load_config(settings.config)  # a bad config file: ConfigError, exit 2
    return settings


# --- monitor ---------------------------------------------------------------------------------

monitor_app = typer.Typer(help="Watch the served model: production prompts vs training data.", no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("drift")
def monitor_drift(
    current: Annotated[Path, typer.Option(help="Request log written by `serve`.")] = Path("logs/requests.jsonl"),
    reference: Annotated[
        str | None, typer.Option(help="Training data (folder, file or hub id); default: data.path.", show_default=False)
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="Tokenizer the server counts with; default: the newest outputs/*/adapter, else model.base_model.",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Share of drifted features that is drift (monitor.drift_threshold).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for drift.json and drift.html.")] = Path("reports"),
) -> None:
    """Compare production prompts with the training prompts: exit 0 no drift, 1 drift, 2 no verdict possible."""
    from .monitor.drift import DriftError, check_drift, log_to_mlflow, served_tokenizer, write_reports

    threshold_override = [] if threshold is None else [f"monitor.drift_threshold={threshold}"]
    resolved = load_config(config, [*(overrides or []), *threshold_override])
    counter = served_tokenizer(resolved, tokenizer)
    try:
        if counter is None and tokenizer is not None:
            raise DriftError(f"--tokenizer {tokenizer}: no tokenizer there (local folders and the hub cache only)")
        report, snapshot = check_drift(resolved, current=current, reference=reference, tokenizer=counter)
    except ProjectError as err:  # unreadable log or data, too few requests: no verdict possible (exit 2)
        raise DriftError(str(err)) from None
    files = write_reports(report, snapshot, out)
    for note in report["notes"]:
        typer.echo(f"note: {note}")
    for name, result in report["features"].items():
        state = "DRIFT" if result["drifted"] else "ok"
        score = f"{result['method']} = {result['score']:.3g} (threshold {result['threshold']:g})"
        typer.echo(f"{name:>14}: {score}  {state}")
    typer.echo(f"wrote {files[0]} and {files[1]}")
    if resolved.tracking.enabled:
        try:
            run_id = log_to_mlflow(report, files, experiment=resolved.project)
        except Exception as err:  # an unreachable tracking server must not turn the verdict into a crash
            typer.secho(f"warning: MLflow logging failed: {err}", fg=typer.colors.YELLOW, err=True)
        else:
            typer.echo(f"MLflow run {run_id} (experiment {resolved.project})" if run_id else "MLflow: no store set up")
    drifted = report["verdict"] == "drift"
    share, limit = report["drift_share"], report["drift_threshold"]
    message = f"verdict: {report['verdict']} ({share:.0%} of features drifted; threshold {limit:.0%})"
    typer.secho(message, fg=typer.colors.RED if drifted else typer.colors.GREEN)
    if drifted:
        raise typer.Exit(1)


# >>> cloud_training
from .clouds.jobs import cli as _cloud_jobs  # noqa: E402, F401  (adds cloud train, status, cancel and fetch JOB)
# <<< cloud_training
