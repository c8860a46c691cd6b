"""Who may call a quartet service: a shared cluster token and optional (mutual) TLS.

Every service and every client reads the same settings, so one token file and one set of
certificates secure a whole cluster:

- token: `--auth-token-file PATH` on `quartet serve <role>` / `quartet ppo`, or the
  environment variable `QUARTET_AUTH_TOKEN_FILE`. Clients send it as
  `authorization: Bearer <token>` metadata; services check it on every RPC except health.
- TLS: a service with `--tls-cert-file/--tls-key-file` serves TLS only; with
  `--tls-client-ca-file` as well it requires client certificates (mutual TLS). Clients take
  `QUARTET_TLS_CA_FILE` (the CA that signed the services' certificates) and, for mutual
  TLS, `QUARTET_TLS_CERT_FILE` / `QUARTET_TLS_KEY_FILE`.

The token and keys never reach logs: the classes below print as `<redacted>`.
See docs/security.md for the setup.
"""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "QUARTET_AUTH_TOKEN_FILE"
TLS_CA_ENV = "QUARTET_TLS_CA_FILE"
TLS_CERT_ENV = "QUARTET_TLS_CERT_FILE"
TLS_KEY_ENV = "QUARTET_TLS_KEY_FILE"
TOKEN_METADATA_KEY = "authorization"
TOKEN_SCHEME = "Bearer "


class SecurityConfigError(ValueError):
    """A token or certificate file that cannot be used; the message names the file."""


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{what} {path}: cannot read ({exc.strerror})") from None
    if not data.strip():
        raise SecurityConfigError(f"{what} {path}: file is empty")
    return data


def read_token(path: str | os.PathLike) -> str:
    token = _read(path, "auth token file").decode("utf-8", "replace").strip()
    if any(c.isspace() for c in token) or not token.isprintable():
        raise SecurityConfigError(f"auth token file {path}: the token must be one line of "
                                  "printable characters without spaces")
    return token


def write_token(path: str | os.PathLike) -> Path:
    """A fresh random token in a file only its owner can read (embedded runs make one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path


@dataclass(frozen=True)
class ClientSecurity:
    """What a client presents: the token, and the CA (and own cert/key) for TLS."""

    token: str | None = field(default=None, repr=False)
    root_ca: bytes | None = field(default=None, repr=False)
    cert_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_files(cls, token_file: str | None = None, ca_file: str | None = None,
                   cert_file: str | None = None, key_file: str | None = None
                   ) -> ClientSecurity:
        if bool(cert_file) != bool(key_file):
            raise SecurityConfigError(f"{TLS_CERT_ENV} and {TLS_KEY_ENV}: give both (mutual "
                                      "TLS) or neither")
        return cls(
            token=read_token(token_file) if token_file else None,
            root_ca=_read(ca_file, "TLS CA file") if ca_file else None,
            cert_chain=_read(cert_file, "TLS certificate file") if cert_file else None,
            private_key=_read(key_file, "TLS key file") if key_file else None,
        )

    @classmethod
    def from_env(cls, token_file: str | None = None) -> ClientSecurity:
        """The process's client settings: `token_file` if given, else the environment."""
        env = os.environ
        return cls.from_files(token_file or env.get(TOKEN_ENV) or None,
                              env.get(TLS_CA_ENV) or None, env.get(TLS_CERT_ENV) or None,
                              env.get(TLS_KEY_ENV) or None)

    @property
    def tls(self) -> bool:
        return self.root_ca is not None

    def __repr__(self) -> str:
        return (f"ClientSecurity(token={'<redacted>' if self.token else None}, "
                f"tls={self.tls}, client_cert={self.cert_chain is not None})")


@dataclass(frozen=True)
class ServerSecurity:
    """What a service requires: the token, and its certificate (plus a client CA for mTLS)."""

    token: str | None = field(default=None, repr=False)
    cert_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    client_ca: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerSecurity:
        token_file = args.auth_token_file or os.environ.get(TOKEN_ENV) or None
        if bool(args.tls_cert_file) != bool(args.tls_key_file):
            raise SecurityConfigError("--tls-cert-file and --tls-key-file: give both or neither")
        if args.tls_client_ca_file and not args.tls_cert_file:
            raise SecurityConfigError("--tls-client-ca-file: mutual TLS needs the server's own "
                                      "--tls-cert-file and --tls-key-file too")
        return cls(
            token=read_token(token_file) if token_file else None,
            cert_chain=_read(args.tls_cert_file, "--tls-cert-file") if args.tls_cert_file
            else None,
            private_key=_read(args.tls_key_file, "--tls-key-file") if args.tls_key_file
            else None,
            client_ca=_read(args.tls_client_ca_file, "--tls-client-ca-file")
            if args.tls_client_ca_file else None,
        )

    @property
    def tls(self) -> bool:
        return self.cert_chain is not None

    def describe(self) -> str:
        """For the startup log line: what is on, never the secrets."""
        parts = ["token" if self.token else "no token"]
        parts.append("mutual TLS" if self.client_ca else "TLS" if self.tls else "plaintext")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"ServerSecurity({self.describe()})"


def add_server_security_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("security (docs/security.md)")
    g.add_argument("--auth-token-file", default=None,
                   help=f"require this shared cluster token on every RPC except health "
                        f"(default: ${TOKEN_ENV} when set)")
    g.add_argument("--tls-cert-file", default=None, help="serve TLS with this certificate (PEM)")
    g.add_argument("--tls-key-file", default=None, help="private key of --tls-cert-file (PEM)")
    g.add_argument("--tls-client-ca-file", default=None,
                   help="require client certificates signed by this CA (mutual TLS)")
