"""Access control: MONAI Label's OpenID Connect check, verified with the provider's JWKS.

MONAI Label 0.8.5 verifies bearer tokens in ``monailabel.endpoints.user.auth.from_token`` with
``jwt.decode(token, key, options=...)`` and no ``algorithms``; PyJWT 2 refuses that call, so every
token is rejected (401). It also takes the key from Keycloak's realm endpoint (``public_key``),
fetched once for the life of the process: a provider other than Keycloak cannot be used, and after
a key rotation every new token is refused until the server restarts. :func:`install_auth_fix`
replaces that function with :func:`from_token`, which verifies tokens the OpenID Connect way:

* the provider's discovery document ``{MONAI_LABEL_AUTH_REALM_URI}/.well-known/openid-configuration``
  names its ``issuer`` and its ``jwks_uri`` (fetched on the first token, kept once it answered);
* the signing key is the JWKS key whose ``kid`` the token's header names, through PyJWT's
  ``PyJWKClient`` (key set cached for :data:`JWKS_LIFESPAN_S`); a ``kid`` not in the cached set
  refetches the set once (key rotation), at most once per cooldown
  (``SONOVLM_AUTH_JWKS_REFRESH_COOLDOWN_S``, default :data:`DEFAULT_REFRESH_COOLDOWN_S`), so a
  flood of forged ``kid`` values cannot turn into a flood of requests to the provider;
* the algorithm is the key's own (asymmetric ones only, :data:`ALGORITHMS`: RS/PS/ES 256-512 and
  EdDSA), so ``none`` and HMAC tokens forged with a public key are refused; ``exp`` and ``iss``
  are required and the issuer must be the discovery document's.

A token that fails any check is 401 (MONAI Label's answer to ``jwt.InvalidTokenError``); a
provider that cannot be reached or serves no usable document or key set is 503. Everything else
stays MONAI Label's: its ``RBAC`` dependency on every endpoint, its roles and its settings. The
endpoints call ``from_token`` through the module at request time, so replacing it before the
first request is enough; the app does so when ``monailabel_app/main.py`` is imported.

Setup (documented for the README)::

    export MONAI_LABEL_AUTH_ENABLE=true
    export MONAI_LABEL_AUTH_REALM_URI=https://keycloak.example.org/realms/monailabel   # the issuer
    export MONAI_LABEL_AUTH_CLIENT_ID=monailabel-app          # the provider's client
    .venv/bin/python -m monailabel.main start_server --app monailabel_app --studies ... \\
        --host 127.0.0.1 --port 8000

``MONAI_LABEL_AUTH_REALM_URI`` is the provider's issuer URL: a Keycloak realm
(``https://HOST/realms/REALM``) or any OpenID Connect provider that serves a discovery document
under it. The server must reach the provider by the issuer's own URL (tokens name it in ``iss``).
Users need roles in the claim named by ``MONAI_LABEL_AUTH_TOKEN_ROLES`` (default
``realm_access#roles``, Keycloak's realm roles; nested keys separated by ``#``): ``monailabel-user``
to infer, list and ask for the next sample, ``monailabel-annotator`` to save labels and image
info, ``monailabel-admin`` to train and delete. Roles are not inclusive: give an admin the other
roles too (Keycloak composite role). ``MONAI_LABEL_AUTH_ENABLE`` must be set before the server
starts (MONAI Label reads it at import). Clients send ``Authorization: Bearer <token>``
(``POST /auth/token`` with user name and password gets one from the provider's token endpoint).
Serve it behind a TLS reverse proxy: tokens are passwords in transit.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from fastapi import HTTPException

logger = logging.getLogger(__name__)

#: The signing algorithms accepted: asymmetric only. A JWKS key is used with its own algorithm
#: (its ``alg``, else the one its key type implies); naming the list shuts out ``none`` and HMAC
#: tokens forged with the public key as the secret.
ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip

#: Claims every accepted token must carry.
REQUIRED_CLAIMS: tuple[str, ...] = ("exp", "iss")

#: Seconds a fetched JWKS is kept before it is fetched again (PyJWKClient's cache lifespan).
JWKS_LIFESPAN_S = 300.0

#: Default of ``SONOVLM_AUTH_JWKS_REFRESH_COOLDOWN_S``: the least time in seconds between two
#: fetches of the JWKS caused by unknown ``kid`` values.
DEFAULT_REFRESH_COOLDOWN_S = 10.0

COOLDOWN_ENV = "SONOVLM_AUTH_JWKS_REFRESH_COOLDOWN_S"

_installed = False


@dataclass
class _Provider:
    """One OpenID Connect provider: its issuer and a JWKS client on its ``jwks_uri``."""

    issuer: str
    jwks_uri: str
    jwks: jwt.PyJWKClient


_providers: dict[str, _Provider] = {}
_providers_lock = threading.Lock()


def _unavailable(realm_uri: str, problem: str, exc: Exception | None = None) -> HTTPException:
    logger.error("OpenID Connect provider %s: %s%s", realm_uri, problem, f": {exc}" if exc else "")
    return HTTPException(status_code=503, detail="the authentication provider cannot be reached")


def refresh_cooldown_s() -> float:
    """``SONOVLM_AUTH_JWKS_REFRESH_COOLDOWN_S`` in seconds (default 10); ValueError when not >= 0."""
    raw = os.environ.get(COOLDOWN_ENV, "").strip()
    if not raw:
        return DEFAULT_REFRESH_COOLDOWN_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{COOLDOWN_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def discover(realm_uri: str, timeout_s: float) -> tuple[str, str]:
    """The ``issuer`` and ``jwks_uri`` of the provider whose issuer URL is ``realm_uri``.

    Reads ``{realm_uri}/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0).
    Raises ``HTTPException(503)`` when it cannot be fetched or lacks either field.
    """
    url = f"{realm_uri.rstrip('/')}/.well-known/openid-configuration"
    try:
        reply = requests.get(url, timeout=timeout_s)
        reply.raise_for_status()
        document = reply.json()
    except (requests.RequestException, ValueError) as exc:
        raise _unavailable(realm_uri, f"cannot read the discovery document {url}", exc) from exc
    if not isinstance(document, dict):
        raise _unavailable(realm_uri, f"the discovery document {url} is not a JSON object")
    issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
    if not isinstance(issuer, str) or not issuer or not isinstance(jwks_uri, str) or not jwks_uri:
        raise _unavailable(realm_uri, f"the discovery document {url} lacks 'issuer' or 'jwks_uri'")
    return issuer, jwks_uri


def _provider(realm_uri: str, timeout_s: float) -> _Provider:
    """The cached provider of ``realm_uri``; discovered on first use (a failure is not cached)."""
    with _providers_lock:
        provider = _providers.get(realm_uri)
        if provider is not None:
            return provider
        issuer, jwks_uri = discover(realm_uri, timeout_s)
        try:
            client = jwt.PyJWKClient(
                jwks_uri,
                cache_jwk_set=True,
                lifespan=JWKS_LIFESPAN_S,
                timeout=timeout_s,
                cooldown_duration=refresh_cooldown_s(),
            )
        except jwt.PyJWKClientError as exc:  # e.g. a jwks_uri that is not http(s)
            raise _unavailable(realm_uri, f"unusable jwks_uri {jwks_uri!r}", exc) from exc
        provider = _Provider(issuer=issuer, jwks_uri=jwks_uri, jwks=client)
        _providers[realm_uri] = provider
        logger.info("OpenID Connect provider %s: issuer %s, keys from %s", realm_uri, issuer, jwks_uri)
        return provider


def forget_providers() -> None:
    """Drop every cached discovery document and key set (the next token rediscovers)."""
    with _providers_lock:
        _providers.clear()


def signing_key(token: str, provider: _Provider, realm_uri: str) -> jwt.PyJWK:
    """The provider's JWKS key that signed ``token`` (by its header's ``kid``).

    An unknown ``kid`` refetches the key set once (rotation; see the module notes).
    Raises ``jwt.InvalidTokenError`` when the token names no key of the provider and
    ``HTTPException(503)`` when the key set cannot be fetched or holds no usable key.
    """
    kid = jwt.get_unverified_header(token).get("kid")
    if not isinstance(kid, str) or not kid:
        raise jwt.InvalidTokenError("the token's header names no key ('kid')")
    try:
        return provider.jwks.get_signing_key(kid)
    except jwt.PyJWKClientConnectionError as exc:
        raise _unavailable(realm_uri, f"cannot fetch the key set {provider.jwks_uri}", exc) from exc
    except jwt.PyJWKClientError as exc:
        error: Exception = exc
    except (jwt.PyJWKSetError, jwt.PyJWKError) as exc:
        raise _unavailable(realm_uri, f"the key set {provider.jwks_uri} is unusable", exc) from exc
    # Tell "no such key" (401) from "no usable key set" (503): the key set, cached by now when it
    # could be fetched, either holds signing keys (then the kid is simply not one of them) or not.
    try:
        provider.jwks.get_signing_keys()
    except (jwt.PyJWKClientError, jwt.PyJWKSetError, jwt.PyJWKError) as exc:
        raise _unavailable(realm_uri, f"cannot use the key set {provider.jwks_uri}", exc) from exc
    logger.warning("Token signed with key %r, which %s does not publish", kid, provider.jwks_uri)
    raise jwt.InvalidTokenError(f"the token's key {kid!r} is not one of the provider's") from error


def decode_token(token: str, key: jwt.PyJWK | str, issuer: str | None = None) -> dict[str, Any]:
    """The verified claims of ``token``; ``jwt.InvalidTokenError`` when it is not acceptable.

    ``key`` is a JWKS key (used with its own algorithm, which must be in :data:`ALGORITHMS`) or
    a PEM public key (any of :data:`ALGORITHMS`). Signature, expiry, the presence of ``exp`` and,
    when ``issuer`` is given, ``iss`` equal to it are checked; the audience is not (Keycloak's
    access tokens name ``account``, not the client), as in MONAI Label.
    """
    if isinstance(key, jwt.PyJWK):
        if key.algorithm_name not in ALGORITHMS:
            raise jwt.InvalidTokenError(
                f"the provider's key {key.key_id!r} is for {key.algorithm_name}, not an asymmetric "
                f"signature algorithm ({', '.join(ALGORITHMS)})"
            )
        algorithms = [key.algorithm_name]
    else:
        algorithms = list(ALGORITHMS)
    required = [claim for claim in REQUIRED_CLAIMS if claim != "iss" or issuer is not None]
    return jwt.decode(
        token,
        key,
        algorithms=algorithms,
        issuer=issuer,
        options={
            "verify_signature": True,
            "verify_aud": False,
            "verify_exp": True,
            "verify_iss": issuer is not None,
            "require": required,
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
    """MONAI Label's ``from_token`` verifying with the provider's JWKS (see the module notes).

    Returns MONAI Label's ``User``. Raises ``jwt.InvalidTokenError`` for a bad token (MONAI Label
    turns it into 401) and ``HTTPException(503)`` when the provider cannot be reached.
    """
    from monailabel.config import settings
    from monailabel.endpoints.user import auth as monai_auth

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return monai_auth.DEFAULT_USER
    if not token:
        raise jwt.InvalidTokenError("no bearer token")
    realm_uri = settings.MONAI_LABEL_AUTH_REALM_URI
    # A malformed token is refused before the provider is asked for anything.
    jwt.get_unverified_header(token)
    provider = _provider(realm_uri, float(settings.MONAI_LABEL_AUTH_TIMEOUT))
    payload = decode_token(token, signing_key(token, provider, realm_uri), issuer=provider.issuer)
    return monai_auth.User(
        username=str(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or ""),
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=_roles(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES),
    )


def install_auth_fix() -> None:
    """Replace MONAI Label's token decoding with :func:`from_token` (idempotent; call at import).

    Raises ValueError when ``SONOVLM_AUTH_JWKS_REFRESH_COOLDOWN_S`` is not a number >= 0, so a
    misconfigured server stops at start rather than at its first token.
    """
    global _installed
    from monailabel.endpoints.user import auth as monai_auth

    refresh_cooldown_s()
    if monai_auth.from_token is not from_token:
        monai_auth.from_token = from_token
    if not _installed:
        logger.debug("MONAI Label token decoding replaced (JWKS, algorithms %s)", ", ".join(ALGORITHMS))
        _installed = True
