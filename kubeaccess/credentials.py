"""Where to reach the apiserver and how to prove who we are: a kubeconfig or the pod's service account.

`load_credentials` resolves them once into a `Credentials`; `ssl_context` and `token_reader` turn
those into what an HTTP client needs. Only static credentials are supported (tokens, token files,
client certificates): kubeconfig `exec` and `auth-provider` plugins run other programs, which a
node daemon or the extender should not do, so such a user is refused by name instead of ignored.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubeaccess.errors import CredentialsError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None  # verify the serving certificate for this name, not the URL's host
    source: str = "in-cluster"  # the kubeconfig path(s) they came from, for messages


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """`kubeconfig` (a path, or several joined by os.pathsep), else $KUBECONFIG, else the pod's
    service account, else ~/.kube/config. `context` overrides the kubeconfig's current-context."""
    paths = kubeconfig or os.environ.get("KUBECONFIG")
    if paths:
        return from_kubeconfig([Path(p) for p in paths.split(os.pathsep) if p], context)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (SA_DIR / "token").exists():
        return in_cluster()
    home = Path.home() / ".kube" / "config"
    if home.exists():
        return from_kubeconfig([home], context)
    raise CredentialsError("no kubeconfig given (--kubeconfig or $KUBECONFIG) and not running in a cluster")


def in_cluster(sa_dir: Path = SA_DIR) -> Credentials:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return Credentials(server=f"https://{host}:{port}", ca_file=str(sa_dir / "ca.crt"),
                       token_file=str(sa_dir / "token"))


# User fields that need something we do not do; each maps to the advice given instead.
_UNSUPPORTED_USER = {
    "exec": "an exec plugin",
    "auth-provider": "an auth-provider plugin",
    "username": "basic authentication",
    "impersonate": "impersonation",
    "as": "impersonation",
}


def from_kubeconfig(files: Sequence[Path], context: str | None = None) -> Credentials:
    """The credentials of `context` (default: the current-context) in these kubeconfig files.

    Several files merge the way kubectl merges $KUBECONFIG: the first file that names a context,
    cluster or user wins, and the first current-context set wins. Relative file references are
    relative to the file that holds them. Files that do not exist are skipped, unless all are missing.
    """
    src = os.pathsep.join(str(f) for f in files)
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {"contexts": {}, "clusters": {}, "users": {}}
    current: str | None = None
    found = False
    for f in files:
        if len(files) > 1 and not f.exists():
            continue
        doc = _read(f)
        found = True
        current = current or (str(doc["current-context"]) if doc.get("current-context") else None)
        for section, known in entries.items():
            inner = section[:-1]  # contexts -> context
            for item in doc.get(section) or []:
                if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"] not in known:
                    body = item.get(inner) or {}
                    known[item["name"]] = (body if isinstance(body, dict) else {}, f.parent)
    if not found:
        raise CredentialsError(f"kubeconfig {src}: no such file")
    name = context or current
    if not name:
        raise CredentialsError(f"kubeconfig {src}: no current-context set and no context given")
    ctx, _ = _entry(entries["contexts"], name, "context", src)
    cluster, cbase = _entry(entries["clusters"], ctx.get("cluster"), "cluster", src)
    user, ubase = _entry(entries["users"], ctx["user"], "user", src) if ctx.get("user") else ({}, cbase)
    for key, what in _UNSUPPORTED_USER.items():
        if user.get(key):
            raise CredentialsError(
                f"kubeconfig {src}: user {ctx.get('user')!r} uses {what}, which topodra does not run; "
                "use a token or client certificate")
    if cluster.get("proxy-url"):
        raise CredentialsError(f"kubeconfig {src}: cluster {ctx.get('cluster')!r} sets proxy-url, "
                               "which topodra does not support; reach the apiserver directly")
    if not cluster.get("server"):
        raise CredentialsError(f"kubeconfig {src}: cluster {ctx.get('cluster')!r} has no server")
    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=_path(cluster.get("certificate-authority"), cbase),
        ca_data=_data(cluster.get("certificate-authority-data"), "certificate-authority-data", src),
        cert_file=_path(user.get("client-certificate"), ubase),
        key_file=_path(user.get("client-key"), ubase),
        cert_data=_data(user.get("client-certificate-data"), "client-certificate-data", src),
        key_data=_data(user.get("client-key-data"), "client-key-data", src),
        token=str(user["token"]) if user.get("token") else None,
        token_file=_path(user.get("tokenFile"), ubase),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=str(cluster["tls-server-name"]) if cluster.get("tls-server-name") else None,
        source=src,
    )


def _read(f: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(f.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CredentialsError(f"kubeconfig {f}: cannot read: {e}") from e
    if not isinstance(doc, dict):
        raise CredentialsError(f"kubeconfig {f}: not a kubeconfig (expected a mapping)")
    return doc


def _entry(known: Mapping[str, tuple[dict[str, Any], Path]], name: Any, kind: str,
           src: str) -> tuple[dict[str, Any], Path]:
    if not isinstance(name, str) or name not in known:
        raise CredentialsError(f"kubeconfig {src}: no {kind} named {name!r}")
    return known[name]


def _path(p: Any, base: Path) -> str | None:
    if not p:
        return None
    return str(p) if os.path.isabs(str(p)) else str(base / str(p))


def _data(v: Any, key: str, src: str) -> bytes | None:
    if not v:
        return None
    try:
        return base64.b64decode(str(v), validate=True)
    except (binascii.Error, ValueError) as e:
        raise CredentialsError(f"kubeconfig {src}: {key} is not base64: {e}") from e


def ssl_context(c: Credentials) -> ssl.SSLContext:
    """Client TLS context: the cluster's CA (or no verification when the kubeconfig says so) and the
    client certificate, if any."""
    ctx = ssl.create_default_context()
    if c.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif c.ca_data:
        ctx.load_verify_locations(cadata=c.ca_data.decode())
    elif c.ca_file:
        ctx.load_verify_locations(cafile=c.ca_file)
    if c.cert_file and c.key_file:
        ctx.load_cert_chain(c.cert_file, c.key_file)
    elif c.cert_data and c.key_data:
        # ssl loads certificates only from files; they live on disk just for the load.
        with tempfile.TemporaryDirectory(prefix="topodra-") as d:
            cert, key = Path(d, "c.pem"), Path(d, "k.pem")
            cert.write_bytes(c.cert_data)
            key.touch(mode=0o600)
            key.write_bytes(c.key_data)
            ctx.load_cert_chain(str(cert), str(key))
    return ctx


def request_headers(token: Callable[[], str | None], user_agent: str) -> dict[str, str]:
    """What every request to the apiserver carries: JSON wanted, who we are, the bearer token if any."""
    h = {"Accept": "application/json", "User-Agent": user_agent}
    tok = token()
    if tok:
        h["Authorization"] = f"Bearer {tok}"
    return h


def token_reader(c: Credentials) -> Callable[[], str | None]:
    """The bearer token to send now (None: authenticate by certificate, or not at all)."""
    if c.token:
        token = c.token
        return lambda: token
    if c.token_file:
        path = Path(c.token_file)
        # Projected service-account tokens rotate: read the file every time (tiny, and in the page cache).
        return lambda: path.read_text().strip()
    return lambda: None
