"""Access control: MONAI Label's OpenID Connect check, fixed to work with PyJWT 2.

MONAI Label 0.8.5 verifies bearer tokens in ``monailabel.endpoints.user.auth.from_token`` with
``jwt.decode(token, key, options=...)`` and no ``algorithms``; PyJWT 2 refuses that call, so every
token is rejected (401) and authentication cannot be used at all. :func:`install_auth_fix`
replaces that function with :func:`from_token`, which names the algorithm (RS256, what Keycloak
signs with), requires an expiry, and answers 503 (not 500) when the realm's key cannot be fetched.
Everything else stays MONAI Label's: its ``RBAC`` dependency on every endpoint, its roles and its
settings. The endpoints call ``from_token`` through the module at request time, so replacing it
before the first request is enough; the app does so when ``monailabel_app/main.py`` is imported.

Setup (documented for the README)::

    export MONAI_LABEL_AUTH_ENABLE=true
    export MONAI_LABEL_AUTH_REALM_URI=https://keycloak.example.org/realms/monailabel
    export MONAI_LABEL_AUTH_CLIENT_ID=monailabel-app          # the realm's client
    .venv/bin/python -m monailabel.main start_server --app monailabel_app --studies ... \\
        --host 127.0.0.1 --port 8000

The realm URI must answer ``GET`` with JSON holding ``public_key`` (base64 DER of the RSA public
key, as Keycloak's realm endpoint does); it is fetched once per server process. Users need realm
roles (token claim ``realm_access.roles``): ``monailabel-user`` to infer, list and ask for the next
sample, ``monailabel-annotator`` to save labels and image info, ``monailabel-admin`` to train and
delete. Roles are not inclusive: give an admin the other roles too (Keycloak composite role).
``MONAI_LABEL_AUTH_ENABLE`` must be set before the server starts (MONAI Label reads it at import).
Clients send ``Authorization: Bearer <token>`` (``POST /auth/token`` with user name and password
gets one from the realm's token endpoint). Serve it behind a TLS reverse proxy: tokens are
passwords in transit.
"""

from __future__ import annotations

import logging
from typing import Any

import jwt
import requests
from fastapi import HTTPException

logger = logging.getLogger(__name__)

#: The signing algorithms accepted. Keycloak signs access tokens with RS256 by default; naming the
#: list also shuts out ``none`` and HMAC tokens forged with the public key as the secret.
ALGORITHMS: tuple[str, ...] = ("RS256",)

#: Claims every accepted token must carry.
REQUIRED_CLAIMS: tuple[str, ...] = ("exp",)

_installed = False


def decode_token(token: str, public_key_pem: str) -> dict[str, Any]:
    """The verified claims of ``token``; ``jwt.InvalidTokenError`` when it is not acceptable.

    Signature (RS256 only), expiry and the presence of ``exp`` are checked; the audience is not
    (Keycloak's access tokens name ``account``, not the client), as in MONAI Label.
    """
    return jwt.decode(
        token,
        public_key_pem,
        algorithms=list(ALGORITHMS),
        options={
            "verify_signature": True,
            "verify_aud": False,
            "verify_exp": True,
            "require": list(REQUIRED_CLAIMS),
        },
    )


def _roles(payload: dict[str, Any], path: str) -> list[str]:
    """Roles at ``path`` (``realm_access#roles``: nested keys separated by ``#``)."""
    value: Any = payload
    for key in path.split("#"):
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, list):
        return []
    return [str(role) for role in value]


def from_token(token: str):
    """MONAI Label's ``from_token`` with the token decoding fixed (see the module notes).

    Returns MONAI Label's ``User``. Raises ``jwt.InvalidTokenError`` for a bad token (MONAI Label
    turns it into 401) and ``HTTPException(503)`` when the realm's key cannot be fetched.
    """
    from monailabel.config import settings
    from monailabel.endpoints.user import auth as monai_auth

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return monai_auth.DEFAULT_USER
    if not token:
        raise jwt.InvalidTokenError("no bearer token")
    try:
        key = monai_auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    except (requests.RequestException, KeyError, ValueError) as exc:
        logger.error(
            "Cannot fetch the realm's public key from %s: %s", settings.MONAI_LABEL_AUTH_REALM_URI, exc
        )
        raise HTTPException(status_code=503, detail="the authentication realm cannot be reached") from exc
    payload = decode_token(token, key)
    return monai_auth.User(
        username=str(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or ""),
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=_roles(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES),
    )


def install_auth_fix() -> None:
    """Replace MONAI Label's token decoding with :func:`from_token` (idempotent; call at import)."""
    global _installed
    from monailabel.endpoints.user import auth as monai_auth

    if monai_auth.from_token is not from_token:
        monai_auth.from_token = from_token
    if not _installed:
        logger.debug("MONAI Label token decoding replaced (algorithms %s)", ", ".join(ALGORITHMS))
        _installed = True


def auth_fix_installed() -> bool:
    """Whether MONAI Label currently uses :func:`from_token`."""
    from monailabel.endpoints.user import auth as monai_auth

    return monai_auth.from_token is from_token
