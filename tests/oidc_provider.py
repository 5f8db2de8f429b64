"""A real OpenID provider for the OAuth tests: panva/oidc-provider on Node.js, over
HTTPS with a trustme certificate, on 127.0.0.1 (``tests/oidc/server.mjs``).

Usage::

    with OidcProvider(tmp_path) as idp:
        verifier = TokenVerifier(OAuthConfig(issuer=idp.issuer, audience="imap",
                                             ca_file=idp.ca_file))
        token = idp.mint("alice@example.org", amr=["pwd", "mfa"], acr="urn:mfa")
        new_kid = idp.rotate()          # a new current signing key; the old one stays
        idp.remove_kid(old_kid)         # ... until removed from the JWKS

or the pytest fixture ``oidc_provider`` (module scope). Tokens are JWT access tokens
(RFC 9068) made by the provider's own AccessToken model and signed with its current
key; only the interactive sign-in is skipped (see server.mjs). Discovery
(``{issuer}/.well-known/openid-configuration``) and ``/jwks`` are oidc-provider's.

Why oidc-provider 8.8.1 (pinned in ``tests/oidc/package.json``, locked in
``package-lock.json``): the 9.x line declares Node.js 22 its minimum and warns on
Node 20, while 8.x supports Node 18 and later: Debian 12's own ``nodejs`` (18) and
the Node 20 of our machines both run it.

Things to know:

* ``npm ci`` runs here when ``tests/oidc/node_modules`` is missing (``.ci/run``
  runs it too); it needs the npm registry. A missing ``node`` binary fails the
  test with a hint, as a missing Dovecot does.
* The test-only admin endpoints need a random bearer secret made per instance:
  any local user can reach a loopback port.
* The server exits when its stdin closes, so a test process that dies takes it
  along; ``stop()`` (also from ``atexit``) terminates it otherwise. Its stderr is in
  ``base/oidc-provider.log``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import select
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import trustme

__all__ = ["OIDC_DIR", "OidcProvider", "ensure_node_modules", "oidc_provider"]

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
_SERVER = OIDC_DIR / "server.mjs"
_START_TIMEOUT = 30.0


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is missing: run `bash .ci/run` or install Node.js (apt-get install nodejs npm)",
            pytrace=False,
        )
    return node


def ensure_node_modules() -> None:
    """`npm ci` in tests/oidc unless its node_modules is already there."""
    if (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: run `bash .ci/run` or apt-get install npm", pytrace=False)
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=OIDC_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci in {OIDC_DIR} failed:\n{result.stdout}\n{result.stderr}")


class OidcProvider:
    """One oidc-provider process (see the module docstring)."""

    def __init__(self, base: Path, *, audience: str = "imap") -> None:
        self.base = base
        self.audience = audience
        self.port = 0
        self._secret = secrets.token_urlsafe(24)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._http: httpx.Client | None = None
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        base.mkdir(parents=True, exist_ok=True)
        self.ca_file = str(base / "oidc-ca.pem")
        self._cert_file = base / "oidc-cert.pem"
        self._key_file = base / "oidc-key.pem"
        ca.cert_pem.write_to_path(self.ca_file)
        cert.cert_chain_pems[0].write_to_path(str(self._cert_file))
        cert.private_key_pem.write_to_path(str(self._key_file))

    @property
    def issuer(self) -> str:
        if not self.port:
            raise RuntimeError("the provider is not running")
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "oidc-provider.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        node = _node()
        ensure_node_modules()
        self._log = self.log_path.open("ab")
        env = {**os.environ, "IMAPGUARD_OIDC_ADMIN_SECRET": self._secret}
        command = [node, str(_SERVER), "--port", "0", "--exit-on-eof"]
        command += ["--https", str(self._cert_file), str(self._key_file)]
        self._proc = subprocess.Popen(
            command,
            cwd=OIDC_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
        )
        atexit.register(self.stop)
        try:
            self.port = self._read_port()
            self._http = httpx.Client(
                base_url=self.issuer,
                verify=self._ssl_context(),
                headers={"authorization": f"Bearer {self._secret}"},
                timeout=10.0,
                trust_env=False,
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def _read_port(self) -> int:
        assert self._proc is not None
        assert self._proc.stdout is not None
        deadline = time.monotonic() + _START_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"oidc-provider did not start:\n{self.log_text()}")
            ready, _, _ = select.select([self._proc.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._proc.stdout.fileno(), 64)
            if not chunk:
                raise RuntimeError(f"oidc-provider exited:\n{self.log_text()}")
            line += chunk
        return int(line.strip())

    def _wait_ready(self) -> None:
        assert self._http is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                response = self._http.get("/.well-known/openid-configuration")
                if response.status_code == 200 and response.json()["issuer"] == self.issuer:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"oidc-provider is not answering:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        atexit.unregister(self.stop)

    def __enter__(self) -> OidcProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- tokens and keys -------------------------------------------------------------

    def _admin(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._http is None:
            raise RuntimeError("the provider is not running")
        response = self._http.get(path) if body is None else self._http.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.text}")
        result: dict[str, Any] = response.json()
        return result

    def mint(
        self,
        email: str,
        *,
        amr: Sequence[str] | None = None,
        acr: str | None = None,
        ttl: int = 600,
        sub: str | None = None,
        audience: str | None = None,
        email_verified: bool | None = True,
        nbf: int | None = None,
    ) -> str:
        """A JWT access token for `email` (also `sub` unless given); `amr`/`acr`
        are left out of the token when None; `audience` defaults to this
        provider's resource (`aud`). `email_verified` is true, as an issuer that
        checked the address says (the gateway requires it with the `email`
        username claim); None leaves the claim out."""
        body: dict[str, Any] = {
            "sub": sub or email,
            "email": email,
            "ttl": ttl,
            "audience": audience or self.audience,
        }
        if amr is not None:
            body["amr"] = list(amr)
        if acr is not None:
            body["acr"] = acr
        if email_verified is not None:
            body["email_verified"] = email_verified
        if nbf is not None:
            body["nbf"] = nbf
        return str(self._admin("/test/token", body)["access_token"])

    def register_client(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        """A confidential client for the authorization code flow (PKCE required)."""
        body = {
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": [redirect_uri],
        }
        self._admin("/test/client", body)

    def next_login(
        self,
        email: str,
        *,
        amr: Sequence[str] | None = None,
        acr: str | None = None,
        sub: str | None = None,
        email_verified: bool | None = True,
    ) -> None:
        """Who signs in at the provider's next interaction (it is not interactive
        here); `amr`/`acr` are what the ID token will say."""
        body: dict[str, Any] = {"sub": sub or email, "email": email}
        if amr is not None:
            body["amr"] = list(amr)
        if acr is not None:
            body["acr"] = acr
        if email_verified is not None:
            body["email_verified"] = email_verified
        self._admin("/test/login", body)

    @property
    def current_kid(self) -> str:
        return str(self._admin("/test/keys")["current"])

    def kids(self) -> list[str]:
        return [str(k) for k in self._admin("/test/keys")["kids"]]

    def rotate(self, alg: str = "RS256") -> str:
        """Add a new signing key (RS256, ES256 or EdDSA) and make it current; return its kid."""
        return str(self._admin("/test/rotate", {"alg": alg})["kid"])

    def remove_kid(self, kid: str) -> list[str]:
        """Stop publishing `kid` (not the current key); return the kids left."""
        return [str(k) for k in self._admin("/test/remove", {"kid": kid})["kids"]]


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One provider per test module (tests that rotate keys should start their own)."""
    with OidcProvider(tmp_path_factory.mktemp("oidc")) as provider:
        yield provider
