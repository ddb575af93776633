"""Write docs/options.md from cookiecutter.json and hooks/pre_gen_project.py, so the page cannot drift.

    python docs/gen_options.py           # rewrite docs/options.md
    python docs/gen_options.py --check   # exit 1 if docs/options.md is out of date

Where each part of the page comes from:
- keys, order, help text and choices: cookiecutter.json (`__prompts__` holds the help text);
- defaults: rendered by cookiecutter itself, so derived answers show their real value;
- "rejected" examples and their messages: produced by running the validation hook on them;
- the prose rules: `RULES` below, the one hand-written part. tests/test_docs.py checks that it has an
  entry for every question, and that a rule claims a check exactly where the hook has one.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

TEMPLATE = Path(__file__).resolve().parents[1]
COOKIECUTTER_JSON = TEMPLATE / "cookiecutter.json"
PRE_GEN_HOOK = TEMPLATE / "hooks" / "pre_gen_project.py"
OPTIONS_PAGE = TEMPLATE / "docs" / "options.md"
USAGE = "cookiecutter https://github.com/ORG/llm-portfolio --no-input"


@dataclass(frozen=True)
class Rule:
    allowed: str
    """What a valid answer looks like, in words (markdown)."""
    rejects: tuple[str, ...] = ()
    """Answers the pre-generation hook refuses; empty when the hook does not check this key."""
    note: str = ""
    """Anything else worth knowing: where the answer ends up, how a derived default is made."""


YES_NO = "`yes` or `no` (cookiecutter also takes `y`/`n`, `true`/`false`, `1`/`0`, `on`/`off`); the default is `no`."

RULES: dict[str, Rule] = {
    "project_name": Rule(
        allowed="Any text: spaces, capitals, accents and quotes are fine.",
        note="Used as the README title. `project_slug` is made from it.",
    ),
    "project_slug": Rule(
        allowed=(
            "Lower-case ASCII letters, digits and single dashes; it must start with a letter "
            "(for example `shop-extractor`)."
        ),
        rejects=("My Project!", "2024-bot", "shop--bot"),
        note=(
            "Derived from `project_name`: slugified (accents dropped, lower case, dashes), cut to at most 40 "
            "characters at a word boundary, and prefixed with `llm-` when it would not start with a letter "
            "(`2024 Bot` becomes `llm-2024-bot`). It names the project folder, the Python distribution, "
            "the GitHub repository in the README links, the command-line program, the MLflow experiment "
            "and registered model (`models:/<project_slug>@champion`), and the Docker image."
        ),
    ),
    "package_name": Rule(
        allowed=(
            "A lower-case ASCII Python identifier that is not a keyword and does not shadow a module the "
            "project imports (`torch`, `transformers`, `datasets`, `peft`, `trl`, `mlflow`, `fastapi`, `yaml`, "
            "`config`, `data`, `model`, `train`, `test`, ...) or any standard-library module."
        ),
        rejects=("import", "torch", "json", "my-package", "MyPackage"),
        note="Derived from `project_slug`, dashes turned into underscores. The code lives in `src/<package_name>/`.",
    ),
    "description": Rule(
        allowed="Any text.",
        note="One sentence: it goes under the README title and into `pyproject.toml`.",
    ),
    "author_name": Rule(
        allowed="Any text.",
        note="Goes into `pyproject.toml` and the copyright line of the MIT, BSD-3-Clause and Proprietary licenses.",
    ),
    "author_email": Rule(
        allowed="Something shaped like `name@example.com`: no spaces, one `@`, a dot in the domain.",
        rejects=("you@localhost", "not an email"),
        note="Goes into `pyproject.toml`.",
    ),
    "github_username": Rule(
        allowed="Any text (not checked).",
        note=(
            "Builds the CI badge of the README and the `Repository` URL in `pyproject.toml`: "
            "`https://github.com/<github_username>/<project_slug>`."
        ),
    ),
    "base_model": Rule(
        allowed=(
            "A Hugging Face hub id shaped `org/name`, or an **absolute** path to a local folder saved with "
            "`save_pretrained` (it must hold `config.json`). A path may start with `~`."
        ),
        rejects=("not a model", "./models/my-model", "/no/such/folder"),
        note=(
            "Becomes `model.base_model` in `configs/default.yaml` and is named in the README. "
            "`configs/smoke.yaml` uses the tiny offline model and `configs/gpu.yaml` a larger Qwen model, "
            "whatever you answer. Nothing is downloaded while the project is generated: a hub id is only "
            "checked for its shape."
        ),
    ),
    "license": Rule(
        allowed="One of the choices. cookiecutter itself refuses any other value before the hook runs.",
        note=(
            "The chosen text becomes `LICENSE`; the other texts are removed. Every choice but `Proprietary` "
            "is also written as `license` in `pyproject.toml`."
        ),
    ),
    "python_version": Rule(
        allowed="One of the choices. cookiecutter refuses other values, and the hook checks again.",
        note=(
            "Sets `requires-python` (as a minimum) and ruff's target version in `pyproject.toml`, the Python of "
            "the CI workflow, and the interpreter `make install` tries first (`python<version>`, "
            "then `python3`)."
        ),
    ),
    "cloud": Rule(
        allowed="One of the choices. cookiecutter itself refuses any other value before the hook runs.",
        note=(
            "Where `make deploy` puts the served model, with its image: `aws` (ECR + a SageMaker real-time "
            "endpoint), `gcp` (Artifact Registry + Cloud Run), `azure` (Azure Container Registry + an Azure ML "
            "managed online endpoint), `hf-spaces` (a Docker Space), or `none` (Docker and docker compose only). "
            "The project keeps only the chosen target's `deploy/<cloud>/` folder, its module "
            "`src/<package_name>/clouds/<cloud>/deploy.py`, its tests and `.github/workflows/deploy.yml` (none of "
            "these with `none`); the README's Deployment section and `.env.example` describe that target. "
            "See [Deployment](deployment.md)."
        ),
    ),
    "preference_tuning": Rule(
        allowed=YES_NO,
        note=(
            "An extra. `yes` adds DPO and GRPO after SFT: `src/<package_name>/preference/` (preference pairs from the "
            "SFT model's own mistakes, the DPO recipe, the GRPO recipe rewarded by the task's own scorer), "
            "`configs/dpo.yaml`, `configs/grpo.yaml` and the config's `dpo` and `grpo` sections, the "
            '`data prefs` command, `make dpo` and `make grpo`, and an "SFT vs SFT+DPO" (or +GRPO) table in the '
            "README and model card. `no` leaves all of it out."
        ),
    ),
    "sweeps": Rule(
        allowed=YES_NO,
        note=(
            "An extra. `yes` adds Optuna hyperparameter sweeps: `src/<package_name>/sweep/`, the config's "
            "`sweep` section, the `sweep` command and `make sweep` (pruned trials as nested MLflow runs, "
            "`configs/best.yaml`). `no` leaves all of it out."
        ),
    ),
    "multi_gpu": Rule(
        allowed=YES_NO,
        note=(
            "An extra. `yes` adds training on several GPUs or machines and vLLM serving: "
            "`src/<package_name>/distributed/`, `configs/accelerate/` (DDP, FSDP, DeepSpeed ZeRO-3), "
            "`train --nproc N` (`make train NPROC=N`), `serve-vllm`, `make serve-vllm` and `make up-gpu`. "
            "See [Scaling](scaling.md). `no` leaves all of it out."
        ),
    ),
    "cloud_training": Rule(
        allowed=YES_NO + " `yes` needs a `cloud` other than `none`: the hook refuses `cloud_training=yes` with "
        "`cloud=none`.",
        note=(
            "An extra. `yes` adds training as a spot GPU job on the chosen cloud (SageMaker, Vertex AI, Azure ML or "
            "Hugging Face Jobs) under a cost cap: `src/<package_name>/clouds/jobs/`, "
            "`src/<package_name>/clouds/<cloud>/training.py`, `cloud train`, `cloud status`, `cloud cancel` and "
            "`make train-cloud`. `no` leaves them out; the notebook and `cloud fetch` are there either way. "
            "See [Deployment](deployment.md#train-in-the-cloud)."
        ),
    ),
    "llama_cpp": Rule(
        allowed=YES_NO,
        note=(
            "An extra. `yes` adds cheap CPU serving with llama.cpp: `src/<package_name>/export/` (`export gguf`, "
            "`make export-gguf`: the adapter merged, converted with llama.cpp's converter and quantized to f16, q8_0 "
            "or q4_k_m, with an Ollama Modelfile), `evaluate --gguf` (the accuracy cost of each file, paired with the "
            "adapter's scores; the README's quantization table), `serve --backend llama.cpp` (`make serve-llama-cpp`), "
            "`make deploy BACKEND=llama.cpp` (with a cloud: the GGUF export and llama-cpp-python in the image) and "
            "`make llama-cpp`, which builds llama-cpp-python for the machine (about 5 minutes). `no` leaves them "
            "out. See [Operations](operations.md#serve-on-a-cpu-with-llamacpp)."
        ),
    ),
}

HEADER = """\
# Options

<!-- Generated by docs/gen_options.py from cookiecutter.json and hooks/pre_gen_project.py.
     Do not edit by hand: change those files, then run `python docs/gen_options.py`. -->

`cookiecutter` asks these questions in this order. Press Enter to keep the default shown in brackets.
Defaults of later questions follow your earlier answers: `project_slug` is made from `project_name`, and
`package_name` from `project_slug`.

To answer without prompts, pass `--no-input` and any `key=value` pairs. Keys you leave out take their default
(`ORG` is the GitHub user or organisation that hosts the template; from a clone of it,
`cookiecutter /path/to/clone -o ~/projects`, so that the project lands outside the clone):

```bash
cookiecutter https://github.com/ORG/llm-portfolio --no-input project_name="Return Desk" license=Apache-2.0
```

Before any file is written, `hooks/pre_gen_project.py` checks the answers. Each bad answer gets one line,
`ERROR: <key>='<value>' <what is wrong and how to fix it>.`, then the hook prints
`Nothing was generated. Fix the answer(s) above and run cookiecutter again.` and cookiecutter stops with a
non-zero exit status (it also prints its own `Hook script failed` traceback). No project folder is left behind.
The messages below are produced by running that hook, so they are the ones you will see.
"""


def load_questions() -> dict:
    """cookiecutter.json as written (key order kept)."""
    return json.loads(COOKIECUTTER_JSON.read_text(encoding="utf-8"))


def rendered_answers(**given: str) -> dict[str, str]:
    """The answers `cookiecutter --no-input key=value ...` would use, derived ones rendered by cookiecutter."""
    from cookiecutter.generate import generate_context
    from cookiecutter.prompt import prompt_for_config

    context = generate_context(context_file=str(COOKIECUTTER_JSON), extra_context=given)
    answers = prompt_for_config(context, no_input=True)
    return {key: value for key, value in answers.items() if not key.startswith("_")}


def load_hook(answers: dict) -> ModuleType:
    """hooks/pre_gen_project.py, rendered the way cookiecutter renders it, as a module."""
    import jinja2

    source = jinja2.Environment().from_string(PRE_GEN_HOOK.read_text(encoding="utf-8")).render(cookiecutter=answers)
    module = ModuleType("pre_gen_project")
    module.__file__ = str(PRE_GEN_HOOK)
    exec(compile(source, str(PRE_GEN_HOOK), "exec"), module.__dict__)
    return module


def hook_messages(hook: ModuleType, key: str, value: str) -> list[str]:
    """The messages the hook prints for `--no-input key=value` (answers derived from `key` follow it)."""
    return hook.validate(rendered_answers(**{key: value}))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str | bool) -> str:
    if isinstance(text, bool):  # a yes/no question: shown as cookiecutter asks it
        text = "yes" if text else "no"
    if "`" in text:
        return f"`` {text} ``"
    return f"`{text}`"


def render() -> str:
    questions = load_questions()
    prompts = questions.get("__prompts__", {})
    keys = [key for key in questions if not key.startswith("_")]
    missing = [key for key in keys if key not in RULES]
    if missing:
        raise SystemExit(f"docs/gen_options.py: add a RULES entry for {', '.join(missing)} (new in cookiecutter.json)")
    defaults = rendered_answers()
    hook = load_hook(defaults)

    def question(key: str) -> str:
        prompt = prompts.get(key, key)
        return prompt.get("__prompt__", key) if isinstance(prompt, dict) else prompt

    lines = [HEADER, "## Summary", "", "| Key | Default | Question |", "|---|---|---|"]
    for key in keys:
        lines.append(f"| [`{key}`](#{key}) | {_cell(_code(defaults[key]))} | {_cell(question(key))} |")
    lines.append("")

    for key in keys:
        raw, rule = questions[key], RULES[key]
        lines += [f"## {key}", "", f"**Question:** {question(key)}", ""]
        if isinstance(raw, list):
            labels = prompts.get(key, {}) if isinstance(prompts.get(key), dict) else {}
            lines += [f"**Default:** {_code(defaults[key])} (the first choice)", "", "**Choices:**", ""]
            lines += [
                f"- {_code(choice)}" + (f": {labels[choice]}" if labels.get(choice, choice) != choice else "")
                for choice in raw
            ]
            lines.append("")
        else:
            lines += [f"**Default:** {_code(defaults[key])}", ""]
            if isinstance(raw, str) and ("{{" in raw or "{%" in raw):
                lines += ["Template expression in cookiecutter.json:", "", "```jinja", raw, "```", ""]
        lines += [f"**Allowed:** {rule.allowed}", ""]
        if rule.note:
            lines += [rule.note, ""]
        if rule.rejects:
            lines += ["**Rejected, for example:**", "", "```console"]
            for value in rule.rejects:
                lines.append(f"$ {USAGE} {key}={shlex.quote(value)}")
                lines += [f"ERROR: {message}" for message in hook_messages(hook, key, value)]
            lines += ["```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OPTIONS_PAGE.read_text(encoding="utf-8") if OPTIONS_PAGE.is_file() else ""
        if current != text:
            print("docs/options.md is out of date: run python docs/gen_options.py", file=sys.stderr)
            return 1
        print("docs/options.md is up to date")
        return 0
    OPTIONS_PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {OPTIONS_PAGE.relative_to(TEMPLATE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
