"""HTTP errors of the server: user mistakes become 4xx with a message, never 500.

MONAI Label passes a :class:`fastapi.HTTPException` raised inside the app (``infer``,
``next_sample``, the datastore) to the client with its status; anything else becomes a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import HTTPException

from ..errors import SonoInputError

#: The request was understood but its content is unusable (bad file, bad parameter).
UNPROCESSABLE = 422


def not_found(what: str) -> HTTPException:
    """404 for an image, label or model version that does not exist."""
    return HTTPException(status_code=404, detail=what)


def bad_input(source: str, problem: str, status: int = UNPROCESSABLE) -> HTTPException:
    """4xx naming the input and the problem, like :class:`SonoInputError`'s message."""
    return HTTPException(status_code=status, detail=f"{source}: {problem}")


def replace_requested(params: dict[str, Any] | None) -> bool:
    """Whether an upload's ``params`` ask to replace an image already stored (``{"replace": true}``,
    what SonoVLM's Slicer client sends). Absent is ``False``; anything but a JSON boolean is 422."""
    value = (params or {}).get("replace", False)
    if not isinstance(value, bool):
        raise bad_input("params.replace", f"must be true or false, not {value!r}")
    return value


def image_exists(image_id: str) -> HTTPException:
    """409 for an upload to an image id the datastore has, without ``"replace": true``."""
    return HTTPException(
        status_code=409,
        detail=f"image {image_id!r} is already in the datastore; send params "
        '{"replace": true} to replace it',
    )


@contextmanager
def input_errors_as_http(status: int = UNPROCESSABLE) -> Iterator[None]:
    """Turn :class:`SonoInputError` raised inside the block into an HTTP 4xx with its message."""
    try:
        yield
    except SonoInputError as exc:
        raise HTTPException(status_code=status, detail=str(exc)) from exc
