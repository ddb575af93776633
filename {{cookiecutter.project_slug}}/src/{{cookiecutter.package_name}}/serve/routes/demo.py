"""GET /: a one-file chat page (plain HTML and JavaScript, no build step) that calls the API.

Open http://127.0.0.1:8000/ ; http://127.0.0.1:8000/?prompt=Where+is+order+B11688 sends that message at once.
"""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["demo"])
PAGE = files(__package__.rpartition(".")[0]) / "static" / "index.html"  # serve/static/, packaged with the code


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def demo_page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))
