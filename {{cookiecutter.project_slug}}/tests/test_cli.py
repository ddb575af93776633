"""The command-line interface: help, config commands and clean failures."""

import errno
import importlib
import inspect
import logging
import os
import pkgutil
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import {{ cookiecutter.package_name }}
from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.errors import BadInput, ProjectError, first_line
from {{ cookiecutter.package_name }}.model import load as model_module

runner = CliRunner()

# Every command the app has: a new one must be added here (and so gets its --help checked).
COMMANDS = {"config", "data", "task", "train", "evaluate", "promote", "report", "publish", "merge", "serve"}
COMMANDS |= {"monitor", "cloud"}
SUBCOMMANDS = {"config": {"show", "keys"}, "data": {"synth", "validate"}, "task": {"init"}}
SUBCOMMANDS["monitor"] = {"drift"}
SUBCOMMANDS["cloud"] = {"fetch"}
# >>> sweeps
COMMANDS.add("sweep")
# <<< sweeps
# >>> multi_gpu
COMMANDS.add("serve-vllm")
# <<< multi_gpu
# >>> preference_tuning
SUBCOMMANDS["data"].add("prefs")
# <<< preference_tuning
# >>> llama_cpp
COMMANDS.add("export")
SUBCOMMANDS["export"] = {"gguf"}
# <<< llama_cpp
# >>> cloud_training
SUBCOMMANDS["cloud"] |= {"train", "status", "cancel"}
# <<< cloud_training
# Errors that serving turns into HTTP responses (429, 400, 500, an API error body): never seen by the CLI.
HTTP_ERRORS = {"APIError", "EngineBusy", "PromptError", "GenerationFailed", "ServerStopping", "_ClientLeft"}


def test_help_lists_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    group = typer.main.get_command(app)
    assert set(group.commands) == COMMANDS
    for command in COMMANDS:
        assert f" {command} " in result.output
    for name, subcommands in SUBCOMMANDS.items():
        assert set(group.commands[name].commands) == subcommands


@pytest.mark.parametrize(
    "command", [[name] for name in sorted(COMMANDS)] + [[g, s] for g, subs in SUBCOMMANDS.items() for s in sorted(subs)]
)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: root {' '.join(command)} " in result.output


def test_config_show_applies_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("project: demo\nmodel:\n  base_model: org/model\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config), "lora.r=4"])
    assert result.exit_code == 0, result.output
    assert "  r: 4\n" in result.output
    assert "project: demo\n" in result.output


def test_bad_config_exits_2_with_message_and_no_traceback(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("project: demo\nlora:\n  rank: 4\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{config}:3: lora.rank: unknown key" in result.output
    assert "Traceback" not in result.output


def _package_classes():
    """Every class defined in the package's modules (each module imported, as the commands do)."""
    root = {{ cookiecutter.package_name }}
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{root.__name__}."):
        if info.name.endswith(".__main__"):
            continue  # importing it runs the app
        module = importlib.import_module(info.name)
        yield from (cls for _, cls in inspect.getmembers(module, inspect.isclass) if cls.__module__ == info.name)


def test_every_expected_error_is_a_project_error_and_keeps_its_base():
    errors = {cls.__name__: cls for cls in _package_classes() if issubclass(cls, Exception)}
    assert {"ConfigError", "DataError", "ModelError", "TrainError", "TrackingError", "DriftError"} <= errors.keys()
    for name, cls in errors.items():
        if name not in HTTP_ERRORS:
            assert issubclass(cls, ProjectError), f"{cls.__module__}.{name} must derive from ProjectError"
    # Code that catches ValueError or RuntimeError still catches them.
    for name in ("ConfigError", "DataError", "ModelError", "TrainError", "DriftError", "DeploySettingsError"):
        assert issubclass(errors[name], ValueError), name
    for name in ("TrackingError", "PublishError", "BundleError"):
        assert issubclass(errors[name], RuntimeError), name
    assert issubclass(errors["ModelSourceError"], errors["ModelError"])
    assert not any(issubclass(errors[name], ProjectError) for name in HTTP_ERRORS)


def _write_config(tmp_path: Path, data_path: Path) -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"project: demo\ndata:\n  path: {data_path}\nmodel:\n  base_model: {tmp_path / 'no-model'}\n"
        f"train:\n  output_dir: {tmp_path / 'outputs'}\n  device: cpu\ntracking:\n  enabled: false\n"
    )
    return config


@pytest.mark.parametrize(("case", "code"), [("data", 2), ("train", 1), ("publish", 1)])
def test_expected_errors_exit_with_their_class_code_and_message(case, code, tmp_path, monkeypatch):
    """One error boundary (errors.ErrorBoundary): errors raised by data, train and publish print `error: <message>`
    with no traceback and exit with their class's code: bad input (a DataError) 2, a failure 1."""
    config = _write_config(tmp_path, data_path=tmp_path / "no-data")
    monkeypatch.chdir(tmp_path)  # publish looks for pyproject.toml here
    arguments, message = {
        "data": (["train"], f"error: {tmp_path / 'no-data'}: no such file or folder"),
        "train": (["train", "train.run_name=mine"], f"error: {tmp_path / 'outputs' / 'mine'} already exists"),
        "publish": (["publish", "--dry-run"], f"error: {tmp_path}: no pyproject.toml here"),
    }[case]
    if case == "train":
        (tmp_path / "outputs" / "mine").mkdir(parents=True)
    result = runner.invoke(app, [arguments[0], "--config", str(config), *arguments[1:]])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def _merge_raising(error: Exception, tmp_path: Path, monkeypatch):
    """`merge` with its work replaced by one that raises `error`: what the CLI makes of it."""

    def fail(adapter_dir, out_dir):
        raise error

    monkeypatch.setattr(model_module, "merge_adapter", fail)
    return runner.invoke(app, ["merge", "--adapter", "a", "--out", str(tmp_path / "m")])


def test_any_project_error_is_caught_and_other_exceptions_keep_their_traceback(tmp_path, monkeypatch):
    class NewError(ProjectError):
        """An error class the CLI has never heard of: caught through its base alone."""

    class NewBadInput(BadInput):
        """Bad input of a kind the CLI has never heard of: exit 2 through its base alone."""

    result = _merge_raising(NewError("a: something the user can fix"), tmp_path, monkeypatch)
    assert (result.exit_code, result.output) == (1, "error: a: something the user can fix\n")
    result = _merge_raising(NewBadInput("a: no such adapter"), tmp_path, monkeypatch)
    assert (result.exit_code, result.output) == (2, "error: a: no such adapter\n")
    result = _merge_raising(KeyError("a bug"), tmp_path, monkeypatch)
    assert isinstance(result.exception, KeyError)  # a bug is not an expected error: it is not swallowed


def test_a_read_only_or_full_disk_is_one_error_line_other_os_errors_keep_their_traceback(tmp_path, monkeypatch):
    read_only = OSError(errno.EROFS, "Read-only file system", "outputs/run-1")
    result = _merge_raising(read_only, tmp_path, monkeypatch)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == (
        "error: outputs/run-1: Read-only file system. Make it writable (or free disk space) and run again.\n"
    )
    result = _merge_raising(
        OSError(errno.ENOSPC, "No space left on device", "m/model.safetensors"), tmp_path, monkeypatch
    )
    assert (result.exit_code, result.output.split(":")[:2]) == (1, ["error", " m/model.safetensors"])
    result = _merge_raising(OSError(errno.EIO, "Input/output error"), tmp_path, monkeypatch)
    assert isinstance(result.exception, OSError)  # not one a person fixes by a permission or free space


def test_python_dash_m_runs_the_same_app():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "config" in result.stdout


# What the libraries print, word for word: the filters must drop exactly these and nothing similar.
GRADIENT_CHECKPOINTING = (
    "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` instead."
)
DATASET_SOURCE = (
    "The specified dataset source can be interpreted in multiple ways: LocalArtifactDatasetSource, "
    "LocalArtifactDatasetSource. MLflow will assume that this is a LocalArtifactDatasetSource source."
)
BPE_CLEAN_UP = "Ignoring clean_up_tokenization_spaces=True for BPE tokenizer TokenizersBackend. The clean_up..."
WARNING_LINE = re.compile(r"Warning\b|warnings\.warn|^\[transformers\]")


def test_only_the_known_harmless_library_warnings_are_silenced():
    cases = [  # (message, category, module the warning comes from, shown?)
        (GRADIENT_CHECKPOINTING, FutureWarning, "transformers.modeling_utils", False),
        (GRADIENT_CHECKPOINTING, FutureWarning, "{{ cookiecutter.package_name }}.model.load", True),
        (DATASET_SOURCE, UserWarning, "mlflow.data.dataset_source_registry", False),
        (DATASET_SOURCE, FutureWarning, "mlflow.data.dataset_source_registry", True),
        ("Something else went wrong", UserWarning, "mlflow.data.dataset_source_registry", True),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert runner.invoke(app, ["config", "keys"]).exit_code == 0  # every command adds the filters first
        for message, category, module, _ in cases:
            warnings.warn_explicit(message, category, filename=f"{module}.py", lineno=1, module=module)
    assert [str(warning.message) for warning in caught] == [case[0] for case in cases if case[3]]

    logger, records = logging.getLogger("transformers.tokenization_utils_tokenizers"), []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        logger.warning(BPE_CLEAN_UP)
        logger.warning("Ignoring something else")
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == ["Ignoring something else"]


@pytest.mark.e2e
def test_a_smoke_pipeline_prints_no_library_warnings(workdir, tiny_model, tmp_path):
    """train, evaluate and report as a user runs them (own processes, MLflow on, the model logged and
    registered): stderr holds progress and our own messages, no warning that reads like an error."""
    project = Path(__file__).parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(project / "src"),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",  # not the session's store: no extra versions
    }
    (tmp_path / "README.md").write_text((project / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    smoke = [
        *("--config", str(project / "configs" / "smoke.yaml")),
        *(f"data.path={workdir / 'data' / 'shop_extraction'}", f"model.base_model={tiny_model}"),
        *(f"train.output_dir={tmp_path / 'outputs'}", f"eval.report_dir={tmp_path / 'reports'}"),
    ]

    def run(*arguments: str) -> str:
        command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", *arguments]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    stderr = run("train", *smoke, "train.max_steps=2", "train.eval_steps=1", "train.save_steps=1")
    [run_dir] = (tmp_path / "outputs").iterdir()
    own_config = ("--config", str(run_dir / "config.yaml"))
    stderr += run("evaluate", *own_config, "--adapter", str(run_dir / "adapter"), "eval.max_samples=2")
    stderr += run("report", *own_config, "--readme", "README.md", "--model-card", "MODEL_CARD.md")
    assert [line for line in stderr.splitlines() if WARNING_LINE.search(line)] == []
    # MLflow really logged (the warnings were not silenced by switching tracking off):
    assert "registered {{ cookiecutter.project_slug }} version 1 as @candidate" in stderr


# >>> !sweeps
def test_an_extra_not_chosen_has_no_command():
    """Made without the sweeps extra: `sweep` is no command at all (Typer's own message, exit 2), no traceback."""
    result = runner.invoke(app, ["sweep"])
    assert result.exit_code == 2
    assert "No such command 'sweep'" in result.output and "Traceback" not in result.output


# <<< !sweeps


def test_progress_messages_print_once_when_a_library_configures_the_root_logger(capsys):
    from {{ cookiecutter.package_name }}.cli import _show_progress_messages

    root = logging.getLogger()
    library_handler = logging.StreamHandler(sys.stderr)  # what logging.basicConfig() adds, as libraries do
    library_handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    root.addHandler(library_handler)
    try:
        _show_progress_messages()
        logging.getLogger("{{ cookiecutter.package_name }}.evaluate.evaluate").info("wrote reports/eval.json")
    finally:
        root.removeHandler(library_handler)
    assert capsys.readouterr().err == "wrote reports/eval.json\n"


def test_a_project_moved_after_install_says_it_runs_the_old_folders_code(tmp_path):
    from {{ cookiecutter.package_name }}.cli import moved_project_warning

    package = Path({{ cookiecutter.package_name }}.__file__).parent
    assert moved_project_warning(package.parents[1], package_dir=package) is None  # the project's own code
    assert moved_project_warning(tmp_path, package_dir=package) is None  # not a project folder: nothing to say
    (tmp_path / "src" / package.name).mkdir(parents=True)  # a moved copy, still running the original's code
    warning = moved_project_warning(tmp_path, package_dir=package)
    assert warning.startswith(f"warning: this command runs the code in {package.parents[1]}, not {tmp_path}")
    assert warning.endswith("Fix: rm -rf .venv && make install (or move the project back).")


def test_an_error_s_first_line_is_cut_and_an_empty_message_names_the_error():
    assert first_line(RuntimeError("API request failed\n  Traceback ..."), limit=11) == "API request"
    assert first_line(RuntimeError()) == "RuntimeError"
