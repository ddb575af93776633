"""The README's quantization table (llama_cpp extra): reports/quantization.json as Markdown between markers.

<!-- quantization:start --> ... <!-- quantization:end -->     (README.md; `evaluate --gguf` fills it)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evaluate.markdown import table
from .readme import read_readme

START, END = "<!-- quantization:start -->", "<!-- quantization:end -->"


def quantization_table(report: dict[str, Any], *, metric: str) -> list[str]:
    """One line per model: size, `metric` with its 95% interval, the change against the adapter, speed."""
    rows = []
    for name, line in report["lines"].items():
        entry, change = line["metrics"].get(metric), line.get("minus_adapter", {}).get(metric)
        label = f"adapter ({line['dtype']}, transformers)" if name == "adapter" else f"{name} (llama.cpp)"
        rows.append([
            label,
            f"{line['size_mb']} MB" if "size_mb" in line else "",
            _interval(entry),
            _interval(change, sign="+") if change else "",
            f"{line['tokens_per_s']}",
        ])  # fmt: skip
    header = ["Model", "File", f"{metric} (95% CI)", "vs adapter (95% CI)", "answer tokens/s (1 request)"]
    return table(header, rows, align="llrrr")


def _interval(entry: dict[str, float] | None, *, sign: str = "") -> str:
    if not entry:
        return "n/a"
    value = f"{entry['estimate']:{sign}.3f}"
    return f"{value} [{entry['low']:{sign}.3f}, {entry['high']:{sign}.3f}]"


def update_readme(report: dict[str, Any], *, metric: str, readme: Path = Path("README.md")) -> bool:
    """Put the table between the quantization markers of `readme`; False when it has none (nothing written)."""
    text = read_readme(readme) if readme.is_file() else ""
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    lines = [
        f"Run `{report['run']}`, {len(report['lines']) - 1} GGUF file(s), the same test rows and greedy decoding; "
        "speed on this machine's CPU.",
        "",
        *quantization_table(report, metric=metric),
    ]
    readme.write_text(f"{head}{START}\n" + "\n".join(lines) + f"\n{END}{tail}", encoding="utf-8")
    return True
