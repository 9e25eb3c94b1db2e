"""Authentication through the provider's JWKS, tested with a small OpenID Connect provider on 127.0.0.1.

:class:`Provider` is a tiny ``http.server`` that serves a discovery document
(``/.well-known/openid-configuration`` under its issuer URL) and a JWKS of keys made here, and
can rotate its key (a new ``kid``, the old key withdrawn). Tokens are signed by PyJWT. The
in-process tests call :func:`sonovlm.app.auth.from_token` directly; the end-to-end tests run the
real SonoVLM server (``monailabel_app/main.py``, which calls :func:`install_auth_fix` at import,
through :func:`tests.server_fixture.start_server`), so MONAI Label's own endpoints and role checks
are what is exercised, across a key rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import numpy as np
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import HTTPException
from sonovlm.app import auth
from sonovlm.app.auth import decode_token, from_token, install_auth_fix

from tests.orthanc_fixture import free_port
from tests.server_fixture import START_TIMEOUT_S, start_server

ROLES = {
    "user": ["monailabel-user"],
    "annotator": ["monailabel-user", "monailabel-annotator"],
    "admin": ["monailabel-user", "monailabel-annotator", "monailabel-reviewer", "monailabel-admin"],
}


class Provider:
    """A minimal OpenID Connect provider: discovery document, JWKS, key rotation.

    ``algorithm`` ``RS256`` (Keycloak's default) or ``ES256``. ``jwks_fetches`` counts the
    key-set requests; ``fail_jwks``/``fail_discovery`` make those endpoints answer 500,
    ``discovery_without_jwks_uri`` and ``empty_jwks`` serve unusable documents.
    """

    def __init__(self, algorithm: str = "RS256", path: str = "/realms/sonovlm-test") -> None:
        self.algorithm = algorithm
        self.generation = 0
        self.keys: list[tuple[str, object]] = []  # (kid, private key), newest first
        self.jwks_fetches = 0
        self.fail_jwks = False
        self.fail_discovery = False
        self.discovery_without_jwks_uri = False
        self.empty_jwks = False
        self.rotate()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path == f"{path}/.well-known/openid-configuration" and not provider.fail_discovery:
                    self._json(provider.discovery())
                elif self.path == f"{path}/protocol/openid-connect/certs" and not provider.fail_jwks:
                    provider.jwks_fetches += 1
                    self._json(provider.jwks())
                elif self.path.startswith(path):
                    self._json({"error": "unavailable"}, status=500)
                else:
                    self._json({"error": "not found"}, status=404)

            def _json(self, document: dict, status: int = 200) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _new_key(self):
        if self.algorithm == "ES256":
            return ec.generate_private_key(ec.SECP256R1())
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def rotate(self, keep_old: bool = False) -> str:
        """Sign with a new key from now on; withdraw the old ones unless ``keep_old``. Its kid."""
        self.generation += 1
        kid = f"{self.algorithm.lower()}-{self.generation}"
        self.keys = [(kid, self._new_key())] + (self.keys if keep_old else [])
        return kid

    @property
    def kid(self) -> str:
        return self.keys[0][0]

    @property
    def key(self):
        return self.keys[0][1]

    @property
    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def discovery(self) -> dict:
        if self.discovery_without_jwks_uri:
            return {"issuer": self.uri}
        return {
            "issuer": self.uri,
            "jwks_uri": f"{self.uri}/protocol/openid-connect/certs",
            "token_endpoint": f"{self.uri}/protocol/openid-connect/token",
            "id_token_signing_alg_values_supported": [self.algorithm],
        }

    def jwks(self) -> dict:
        if self.empty_jwks:
            return {"keys": []}
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        keys = []
        for kid, private in self.keys:
            jwk = algorithm.to_jwk(private.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": self.algorithm})
        return {"keys": keys}

    def claims(self, roles: list[str], username: str = "sono", expires_in: float = 300) -> dict:
        now = int(time.time())
        return {
            "iss": self.uri,
            "preferred_username": username,
            "email": f"{username}@example.org",
            "name": username.title(),
            "realm_access": {"roles": roles},
            "iat": now,
            "exp": now + int(expires_in),
        }

    def token(
        self, roles: list[str], username: str = "sono", expires_in: float = 300, key=None, kid=None, **extra
    ) -> str:
        """A token signed with the current key (or ``key``), naming ``kid`` (default: current)."""
        claims = {**self.claims(roles, username, expires_in), **extra}
        return jwt.encode(claims, key or self.key, algorithm=self.algorithm, headers={"kid": kid or self.kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def provider() -> Iterator[Provider]:
    stub = Provider()
    yield stub
    stub.close()


@pytest.fixture()
def auth_on(provider, monkeypatch):
    """Auth on against ``provider`` in this process, no refresh cooldown, nothing cached."""
    from monailabel.config import settings

    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", True)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_REALM_URI", provider.uri)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_TIMEOUT", 5)
    monkeypatch.setenv(auth.COOLDOWN_ENV, "0")
    auth.forget_providers()
    yield provider
    auth.forget_providers()


# -- the decoding itself (in process) --------------------------------------------------------------


def test_pyjwt_2_refuses_monai_labels_call(provider):
    """The bug being fixed: MONAI Label's ``jwt.decode`` without ``algorithms``."""
    token = provider.token(ROLES["user"])
    with pytest.raises(jwt.DecodeError, match="algorithms"):
        jwt.decode(token, provider.public_pem, options={"verify_signature": True, "verify_aud": False})
    assert decode_token(token, provider.public_pem.decode())["preferred_username"] == "sono"


def test_from_token_reads_user_and_roles(auth_on):
    user = from_token(auth_on.token(ROLES["annotator"], username="ann"))
    assert user.username == "ann" and user.roles == ROLES["annotator"] and user.email == "ann@example.org"


def test_keys_come_from_the_jwks_not_a_realm_public_key(auth_on):
    """The provider serves no Keycloak ``public_key``: discovery + JWKS are all it needs."""
    assert requests.get(auth_on.uri, timeout=5).status_code == 500  # no realm document at all
    assert from_token(auth_on.token(ROLES["user"])).username == "sono"
    assert auth_on.jwks_fetches == 1
    for _ in range(5):  # the key set is cached
        from_token(auth_on.token(ROLES["user"]))
    assert auth_on.jwks_fetches == 1


def test_other_provider_ec_keys_and_flat_roles_claim(monkeypatch):
    """A non-Keycloak provider: ES256 keys, issuer at the root of its host, roles in ``roles``."""
    from monailabel.config import settings

    other = Provider(algorithm="ES256", path="/oidc")
    try:
        monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", True)
        monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_REALM_URI", other.uri)
        monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_TOKEN_ROLES", "roles")
        auth.forget_providers()
        claims = other.claims([], username="es")
        del claims["realm_access"]
        token = jwt.encode(
            {**claims, "roles": ROLES["annotator"]}, other.key, algorithm="ES256", headers={"kid": other.kid}
        )
        user = from_token(token)
        assert user.username == "es" and user.roles == ROLES["annotator"]
    finally:
        auth.forget_providers()
        other.close()


def test_rotation_unknown_kid_refetches_the_key_set(auth_on):
    provider = auth_on
    old_token = provider.token(ROLES["user"], username="before")
    assert from_token(old_token).username == "before"
    assert provider.jwks_fetches == 1

    new_kid = provider.rotate()  # the old key is withdrawn
    new_token = provider.token(ROLES["user"], username="after")
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert from_token(new_token).username == "after"  # unknown kid: one refetch, then accepted
    assert provider.jwks_fetches == 2
    assert from_token(new_token).username == "after"
    assert provider.jwks_fetches == 2  # known now: no further fetch
    with pytest.raises(jwt.InvalidTokenError, match="not one of the provider's"):
        from_token(old_token)  # its key is no longer published


def test_rotation_keeping_the_old_key_accepts_both(auth_on):
    provider = auth_on
    old_token = provider.token(ROLES["user"], username="before")
    from_token(old_token)
    provider.rotate(keep_old=True)
    assert from_token(provider.token(ROLES["user"], username="after")).username == "after"
    assert from_token(old_token).username == "before"


def test_refresh_cooldown_bounds_fetches_for_forged_kids(auth_on, monkeypatch):
    """Forged ``kid`` values cannot make the server hammer the provider: one refetch per cooldown."""
    provider = auth_on
    monkeypatch.setenv(auth.COOLDOWN_ENV, "60")
    auth.forget_providers()
    from_token(provider.token(ROLES["user"]))
    assert provider.jwks_fetches == 1
    for n in range(20):
        with pytest.raises(jwt.InvalidTokenError, match="not one of the provider's"):
            from_token(provider.token(ROLES["admin"], kid=f"forged-{n}"))
    assert provider.jwks_fetches == 1  # the first fetch started the cooldown


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "other_key_same_kid",
        "unknown_kid",
        "no_kid",
        "wrong_issuer",
        "no_issuer",
        "hs256_with_public_key",
        "unsigned",
        "no_exp",
        "not_a_jwt",
        "empty",
    ],
)
def test_bad_tokens_are_refused(auth_on, kind):
    provider = auth_on
    admin = ROLES["admin"]
    if kind == "expired":
        token = provider.token(admin, expires_in=-60)
    elif kind == "other_key_same_kid":
        token = provider.token(admin, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif kind == "unknown_kid":
        token = provider.token(admin, kid="not-published")
    elif kind == "no_kid":
        token = jwt.encode(provider.claims(admin), provider.key, algorithm="RS256")
    elif kind == "wrong_issuer":
        token = provider.token(admin, iss="http://127.0.0.1:1/realms/other")
    elif kind == "no_issuer":
        claims = provider.claims(admin)
        del claims["iss"]
        token = jwt.encode(claims, provider.key, algorithm="RS256", headers={"kid": provider.kid})
    elif kind == "hs256_with_public_key":  # the classic algorithm-confusion forgery
        token = _hmac_token(provider.claims(admin), provider.public_pem, provider.kid)
    elif kind == "unsigned":
        token = jwt.encode(provider.claims(admin), None, "none", headers={"kid": provider.kid})
    elif kind == "no_exp":
        claims = provider.claims(admin)
        del claims["exp"]
        token = jwt.encode(claims, provider.key, algorithm="RS256", headers={"kid": provider.kid})
    elif kind == "not_a_jwt":
        token = "not-a-jwt"
    else:
        token = ""
    with pytest.raises(jwt.InvalidTokenError):
        from_token(token)


def _hmac_token(claims: dict, secret: bytes, kid: str) -> str:
    """An HS256 JWT made by hand (PyJWT itself refuses a PEM key as an HMAC secret)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + signature).decode()


def test_unreachable_provider_is_503_not_500(provider, monkeypatch):
    from monailabel.config import settings

    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", True)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_REALM_URI", f"http://127.0.0.1:{free_port()}/realms/none")
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_TIMEOUT", 2)
    auth.forget_providers()
    with pytest.raises(HTTPException) as err:
        from_token(provider.token(ROLES["user"]))
    assert err.value.status_code == 503
    auth.forget_providers()


@pytest.mark.parametrize("failing", ["discovery", "jwks", "discovery_without_jwks_uri", "empty_jwks"])
def test_provider_faults_are_503_and_not_remembered(auth_on, failing):
    provider = auth_on
    token = provider.token(ROLES["user"])
    setattr(provider, {"discovery": "fail_discovery", "jwks": "fail_jwks"}.get(failing, failing), True)
    with pytest.raises(HTTPException) as err:
        from_token(token)
    assert err.value.status_code == 503
    setattr(provider, {"discovery": "fail_discovery", "jwks": "fail_jwks"}.get(failing, failing), False)
    assert from_token(token).username == "sono"  # the failure was not cached


def test_cooldown_setting_is_checked(monkeypatch):
    monkeypatch.setenv(auth.COOLDOWN_ENV, "soon")
    with pytest.raises(ValueError, match=auth.COOLDOWN_ENV):
        install_auth_fix()
    monkeypatch.setenv(auth.COOLDOWN_ENV, "2.5")
    assert auth.refresh_cooldown_s() == 2.5


def test_install_replaces_monai_labels_function():
    from monailabel.endpoints.user import auth as monai_auth

    install_auth_fix()
    install_auth_fix()
    assert monai_auth.from_token is from_token


# -- the real SonoVLM server with auth on -----------------------------------------------------------

#: The server's refresh cooldown in these tests (seconds): short, so a rotation is followed quickly.
SERVER_COOLDOWN_S = 1.0


@pytest.fixture(scope="module")
def server_provider() -> Iterator[Provider]:
    stub = Provider()
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def server(server_provider, tmp_path_factory) -> Iterator[str]:
    """The real app (``monailabel_app/main.py``, which installs the fix at import) with auth on."""
    from PIL import Image

    root = tmp_path_factory.mktemp("auth_server")
    studies = root / "studies"
    studies.mkdir()
    Image.fromarray(np.full((32, 48), 90, np.uint8)).save(studies / "case1.png")
    env = {
        "MONAI_LABEL_AUTH_ENABLE": "true",
        "MONAI_LABEL_AUTH_REALM_URI": server_provider.uri,
        auth.COOLDOWN_ENV: str(SERVER_COOLDOWN_S),
    }
    # /info/ needs a token now: wait on /auth/, which stays open.
    running = start_server(studies, {"scoring_delay_s": "0"}, env, work_dir=root / "work", wait=False)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not running.alive():
                pytest.fail(f"server exited:\n{running.log(60)}")
            try:
                if requests.get(f"{running.url}/auth/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start:\n{running.log(60)}")
            time.sleep(0.3)
        yield running.url
    finally:
        running.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _save_label(url: str, headers: dict[str, str], **params) -> requests.Response:
    from PIL import Image

    buffer = io.BytesIO()
    mask = np.zeros((32, 48), np.uint8)
    mask[5:20, 10:30] = 1
    Image.fromarray(mask).save(buffer, format="PNG")
    return requests.put(
        f"{url}/datastore/label",
        params={"image": "case1", "tag": "final"},
        files={"label": ("case1.png", buffer.getvalue(), "image/png")},
        data={"params": json.dumps({"organ": "lymph_node", **params})},
        headers=headers,
        timeout=30,
    )


def test_server_roles(server, server_provider):
    provider = server_provider
    info = requests.get(f"{server}/auth/", timeout=10).json()
    assert info["enabled"] is True and info["realm"] == provider.uri

    assert requests.get(f"{server}/info/", timeout=10).status_code == 401  # anonymous
    assert requests.get(f"{server}/info/", headers=_bearer("not-a-jwt"), timeout=10).status_code == 401
    expired = provider.token(ROLES["admin"], expires_in=-60)
    assert requests.get(f"{server}/info/", headers=_bearer(expired), timeout=10).status_code == 401

    user = _bearer(provider.token(ROLES["user"], username="viewer"))
    assert requests.get(f"{server}/info/", headers=user, timeout=10).status_code == 200
    valid = requests.get(f"{server}/auth/token/valid", headers=user, timeout=10)
    assert valid.status_code == 200 and valid.json()["username"] == "viewer"
    assert _save_label(server, user).status_code == 403

    annotator = _bearer(provider.token(ROLES["annotator"], username="ann"))
    saved = _save_label(server, annotator, user="someone-else")
    assert saved.status_code == 200, saved.text
    # The label records who signed in, not who the client claims to be (annotator.py).
    label_info = requests.get(f"{server}/datastore/?output=all", headers=annotator, timeout=10).json()
    info = label_info["objects"]["case1"]["labels"]["final"]["info"]
    assert info["saved_by"] == "ann" and info["client_user"] == "someone-else"
    assert (
        requests.post(f"{server}/train/segmentation", json={}, headers=annotator, timeout=10).status_code
        == 403
    )
    assert requests.delete(f"{server}/train/", headers=annotator, timeout=10).status_code == 403

    admin = _bearer(provider.token(ROLES["admin"], username="boss"))
    assert requests.delete(f"{server}/train/", headers=admin, timeout=10).status_code == 200


def test_server_follows_key_rotation(server, server_provider):
    """The provider rotates its key: the server takes the new kid without a restart."""
    provider = server_provider
    before = _bearer(provider.token(ROLES["user"], username="before"))
    assert requests.get(f"{server}/auth/token/valid", headers=before, timeout=10).status_code == 200
    fetches = provider.jwks_fetches
    assert fetches >= 1

    provider.rotate()  # old key withdrawn
    time.sleep(SERVER_COOLDOWN_S + 0.2)  # past the cooldown that the last fetch started
    after = _bearer(provider.token(ROLES["user"], username="after"))
    valid = requests.get(f"{server}/auth/token/valid", headers=after, timeout=10)
    assert valid.status_code == 200, valid.text
    assert valid.json()["username"] == "after"
    assert provider.jwks_fetches == fetches + 1
    assert requests.get(f"{server}/info/", headers=after, timeout=10).status_code == 200
    assert provider.jwks_fetches == fetches + 1  # cached

    # A token signed with the withdrawn key is refused, and so is a forged kid.
    assert requests.get(f"{server}/info/", headers=before, timeout=10).status_code == 401
    forged = _bearer(provider.token(ROLES["admin"], kid="forged"))
    assert requests.get(f"{server}/info/", headers=forged, timeout=10).status_code == 401
    assert requests.get(f"{server}/info/", headers=after, timeout=10).status_code == 200
