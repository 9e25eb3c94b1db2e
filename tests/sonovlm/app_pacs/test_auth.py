"""Authentication with the token decoding fixed, tested with a stub realm on 127.0.0.1 (no Keycloak).

The realm is a tiny ``http.server`` serving ``{"public_key": ...}`` for an RSA key made here;
tokens are signed with its private key by PyJWT. The end-to-end test runs the real SonoVLM server
(``monailabel_app/main.py``, which calls :func:`install_auth_fix` at import, through
:func:`tests.server_fixture.start_server`), so MONAI Label's own endpoints and role checks are what
is exercised.
"""

from __future__ import annotations

import base64
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
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import HTTPException
from sonovlm.app.auth import decode_token, from_token, install_auth_fix

from tests.orthanc_fixture import free_port
from tests.server_fixture import START_TIMEOUT_S, start_server

ROLES = {
    "user": ["monailabel-user"],
    "annotator": ["monailabel-user", "monailabel-annotator"],
    "admin": ["monailabel-user", "monailabel-annotator", "monailabel-reviewer", "monailabel-admin"],
}


class Realm:
    """An RSA key pair and a stub realm endpoint serving its public key."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_b64 = base64.b64encode(der).decode()
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                body = json.dumps({"realm": "sonovlm-test", "public_key": realm.public_b64}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/realms/sonovlm-test"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, roles: list[str], username: str = "sono", expires_in: float = 300, key=None) -> str:
        now = int(time.time())
        claims = {
            "preferred_username": username,
            "email": f"{username}@example.org",
            "name": username.title(),
            "realm_access": {"roles": roles},
            "iat": now,
            "exp": now + int(expires_in),
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def realm() -> Iterator[Realm]:
    stub = Realm()
    yield stub
    stub.close()


@pytest.fixture()
def auth_on(realm, monkeypatch):
    from monailabel.config import settings

    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", True)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_REALM_URI", realm.uri)
    return realm


# -- the decoding itself (in process) --------------------------------------------------------------


def test_pyjwt_2_refuses_monai_labels_call(realm):
    """The bug being fixed: MONAI Label's ``jwt.decode`` without ``algorithms``."""
    token = realm.token(ROLES["user"])
    with pytest.raises(jwt.DecodeError, match="algorithms"):
        jwt.decode(token, realm.public_pem, options={"verify_signature": True, "verify_aud": False})
    assert decode_token(token, realm.public_pem.decode())["preferred_username"] == "sono"


def test_from_token_reads_user_and_roles(auth_on):
    user = from_token(auth_on.token(ROLES["annotator"], username="ann"))
    assert user.username == "ann" and user.roles == ROLES["annotator"] and user.email == "ann@example.org"


@pytest.mark.parametrize(
    "kind", ["expired", "other_key", "hs256_with_public_key", "unsigned", "no_exp", "empty"]
)
def test_bad_tokens_are_refused(auth_on, kind):
    realm = auth_on
    if kind == "expired":
        token = realm.token(ROLES["admin"], expires_in=-60)
    elif kind == "other_key":
        token = realm.token(
            ROLES["admin"], key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
    elif kind == "hs256_with_public_key":  # the classic algorithm-confusion forgery
        token = _hmac_token(
            {"realm_access": {"roles": ROLES["admin"]}, "exp": int(time.time()) + 60}, realm.public_pem
        )
    elif kind == "unsigned":
        token = jwt.encode(
            {"realm_access": {"roles": ROLES["admin"]}, "exp": int(time.time()) + 60}, None, "none"
        )
    elif kind == "no_exp":
        token = jwt.encode({"realm_access": {"roles": ROLES["admin"]}}, realm.key, algorithm="RS256")
    else:
        token = ""
    with pytest.raises(jwt.InvalidTokenError):
        from_token(token)


def _hmac_token(claims: dict, secret: bytes) -> str:
    """An HS256 JWT made by hand (PyJWT itself refuses a PEM key as an HMAC secret)."""
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + signature).decode()


def test_unreachable_realm_is_503_not_500(realm, monkeypatch):
    from monailabel.config import settings

    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", True)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_REALM_URI", f"http://127.0.0.1:{free_port()}/realms/none")
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_TIMEOUT", 2)
    with pytest.raises(HTTPException) as err:
        from_token(realm.token(ROLES["user"]))
    assert err.value.status_code == 503


def test_install_replaces_monai_labels_function():
    from monailabel.endpoints.user import auth as monai_auth

    install_auth_fix()
    install_auth_fix()
    assert monai_auth.from_token is from_token


# -- the real SonoVLM server with auth on -----------------------------------------------------------


@pytest.fixture(scope="module")
def server(realm, tmp_path_factory) -> Iterator[str]:
    """The real app (``monailabel_app/main.py``, which installs the fix at import) with auth on."""
    from PIL import Image

    root = tmp_path_factory.mktemp("auth_server")
    studies = root / "studies"
    studies.mkdir()
    Image.fromarray(np.full((32, 48), 90, np.uint8)).save(studies / "case1.png")
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm.uri}
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


def _save_label(url: str, headers: dict[str, str]) -> requests.Response:
    from PIL import Image

    buffer = io.BytesIO()
    mask = np.zeros((32, 48), np.uint8)
    mask[5:20, 10:30] = 1
    Image.fromarray(mask).save(buffer, format="PNG")
    return requests.put(
        f"{url}/datastore/label",
        params={"image": "case1", "tag": "final"},
        files={"label": ("case1.png", buffer.getvalue(), "image/png")},
        data={"params": json.dumps({"organ": "lymph_node"})},
        headers=headers,
        timeout=30,
    )


def test_server_roles(server, realm):
    info = requests.get(f"{server}/auth/", timeout=10).json()
    assert info["enabled"] is True and info["realm"] == realm.uri

    assert requests.get(f"{server}/info/", timeout=10).status_code == 401  # anonymous
    assert requests.get(f"{server}/info/", headers=_bearer("not-a-jwt"), timeout=10).status_code == 401
    expired = realm.token(ROLES["admin"], expires_in=-60)
    assert requests.get(f"{server}/info/", headers=_bearer(expired), timeout=10).status_code == 401

    user = _bearer(realm.token(ROLES["user"], username="viewer"))
    assert requests.get(f"{server}/info/", headers=user, timeout=10).status_code == 200
    valid = requests.get(f"{server}/auth/token/valid", headers=user, timeout=10)
    assert valid.status_code == 200 and valid.json()["username"] == "viewer"
    assert _save_label(server, user).status_code == 403

    annotator = _bearer(realm.token(ROLES["annotator"], username="ann"))
    saved = _save_label(server, annotator)
    assert saved.status_code == 200, saved.text
    assert (
        requests.post(f"{server}/train/segmentation", json={}, headers=annotator, timeout=10).status_code
        == 403
    )
    assert requests.delete(f"{server}/train/", headers=annotator, timeout=10).status_code == 403

    admin = _bearer(realm.token(ROLES["admin"], username="boss"))
    assert requests.delete(f"{server}/train/", headers=admin, timeout=10).status_code == 200
