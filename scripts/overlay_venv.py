"""Create a virtual environment that sees this environment's packages, for installing a baked project.

`venv --system-site-packages` would expose the base interpreter, not this virtual environment, so
a `.pth` file links our site-packages instead. The baked project then installs with
`pip install -e .` in seconds, without downloading torch & co. again, and without polluting the
template's own environment with the baked package.

    python scripts/overlay_venv.py .cache/demo/<slug>/.venv
"""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path


def overlay_venv(target: Path) -> Path:
    """Create `target` as a venv whose interpreter also imports from our site-packages; return its python."""
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    python = target / "bin" / "python"
    child_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    parents = "\n".join(site.getsitepackages())
    Path(child_site, "_template_env.pth").write_text(parents + "\n", encoding="utf-8")
    return python


if __name__ == "__main__":
    print(overlay_venv(Path(sys.argv[1])))
