"""Who annotated: with access control on, a label records the signed-in user, not the client's claim.

MONAI Label 0.8.5's ``PUT /datastore/label`` route (``monailabel/endpoints/datastore.py``,
``api_save_label``) resolves the caller through ``RBAC`` and passes the token's username to the
module function ``save_label(background_tasks, image, params, tag, label, user)``, which logs it
and drops it: the datastore's ``save_label`` gets the client's params only. A label's
``saved_by`` would then be whatever the client wrote in ``params["user"]`` (or ``anonymous``),
however the request was authenticated. (Image uploads, ``add_image``, already pass the user on.)

:func:`install_annotator_record` wraps that module function (the route looks it up in the module
at request time, so replacing it before the first request is enough). With
``MONAI_LABEL_AUTH_ENABLE`` on, ``params["user"]`` becomes the token's username, so the label
info's ``saved_by`` is who signed in; a different name the client sent is kept as
``client_user`` for the record. With access control off MONAI Label's user is its placeholder
``admin`` for everyone, so the client's own ``user`` param stays as it was.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

logger = logging.getLogger(__name__)


def annotated_params(params: str, username: str | None, auth_enabled: bool) -> str:
    """The save params (a JSON object as text) with the authenticated ``username`` as ``user``.

    Raises:
        fastapi.HTTPException: 422 when ``params`` is not a JSON object.
    """
    from fastapi import HTTPException

    if not auth_enabled or not username:
        return params
    try:
        parsed: Any = json.loads(params) if params else {}
    except json.JSONDecodeError as exc:
        raise HTTPException(status_code=422, detail=f"params: not valid JSON ({exc.msg})") from exc
    if not isinstance(parsed, dict):
        kind = type(parsed).__name__
        raise HTTPException(status_code=422, detail=f"params: expected a JSON object, got {kind}")
    claimed = parsed.get("user")
    if claimed and str(claimed) != username:
        parsed["client_user"] = str(claimed)
    parsed["user"] = username
    return json.dumps(parsed)


def install_annotator_record() -> None:
    """Wrap MONAI Label's ``save_label`` endpoint function (idempotent; call at app import)."""
    from monailabel.config import settings
    from monailabel.endpoints import datastore as endpoints

    if getattr(endpoints.save_label, "_sonovlm_annotator", False):
        return
    original = endpoints.save_label

    @functools.wraps(original)
    def save_label(background_tasks, image, params="{}", tag=None, label=None, user=None):
        params = annotated_params(params, user, bool(settings.MONAI_LABEL_AUTH_ENABLE))
        return original(background_tasks, image, params, tag, label, user)

    save_label._sonovlm_annotator = True  # type: ignore[attr-defined]
    endpoints.save_label = save_label
    logger.debug("MONAI Label's save_label records the signed-in user")
