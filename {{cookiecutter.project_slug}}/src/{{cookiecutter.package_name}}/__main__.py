"""`python -m <package>` runs the same CLI as the console script."""

from .cli import app

app(prog_name=__package__.replace("_", "-"))
