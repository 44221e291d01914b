"""kubeaccess: kubeconfig and in-cluster credentials, TLS material, errors, backoff, the watch splitter."""

from __future__ import annotations

import base64
import itertools
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubeaccess.backoff import Backoff
from kubeaccess.credentials import Credentials, from_kubeconfig, in_cluster, load_credentials, ssl_context, token_reader
from kubeaccess.errors import ApiError, CredentialsError
from kubeaccess.stream import EventSplitter

B64 = base64.b64encode


def kubeconfig(path: Path, users: dict[str, Any], *, current: str | None = "main",
               clusters: dict[str, Any] | None = None, contexts: dict[str, tuple[str, str]] | None = None) -> Path:
    clusters = clusters if clusters is not None else {"c1": {"server": "https://10.0.0.1:6443/"}}
    contexts = contexts if contexts is not None else {"main": ("c1", next(iter(users), ""))}
    doc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
        "users": [{"name": n, "user": u} for n, u in users.items()],
        "contexts": [{"name": n, "context": {"cluster": c, "user": u}} for n, (c, u) in contexts.items()],
    }
    if current is not None:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return path


# ---- kubeconfig ----------------------------------------------------------------------------------

def test_token_and_current_context(tmp_path: Path) -> None:
    c = from_kubeconfig([kubeconfig(tmp_path / "kc", {"u": {"token": "abc"}})])
    assert c.server == "https://10.0.0.1:6443"  # trailing slash dropped: paths are appended
    assert token_reader(c)() == "abc"
    assert not c.insecure and c.ca_file is None and c.source == str(tmp_path / "kc")


def test_context_override_picks_other_cluster_and_user(tmp_path: Path) -> None:
    f = kubeconfig(tmp_path / "kc", {"u1": {"token": "one"}, "u2": {"token": "two"}},
                   clusters={"c1": {"server": "https://a"}, "c2": {"server": "https://b"}},
                   contexts={"main": ("c1", "u1"), "other": ("c2", "u2")})
    c = load_credentials(str(f), context="other")
    assert (c.server, c.token) == ("https://b", "two")
    with pytest.raises(CredentialsError, match="no context named 'nope'"):
        load_credentials(str(f), context="nope")


def test_no_current_context_needs_a_context(tmp_path: Path) -> None:
    f = kubeconfig(tmp_path / "kc", {"u": {"token": "t"}}, current=None)
    with pytest.raises(CredentialsError, match="no current-context"):
        from_kubeconfig([f])
    assert from_kubeconfig([f], "main").token == "t"


def test_token_file_is_relative_to_the_kubeconfig_and_reread(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    f = kubeconfig(tmp_path / "sub" / "kc", {"u": {"tokenFile": "tok"}})
    (tmp_path / "sub" / "tok").write_text("first\n")
    read = token_reader(from_kubeconfig([f]))
    assert read() == "first"
    (tmp_path / "sub" / "tok").write_text("rotated\n")  # projected tokens rotate under a running process
    assert read() == "rotated"


def test_file_references_are_relative_to_their_kubeconfig(tmp_path: Path) -> None:
    f = kubeconfig(tmp_path / "kc", {"u": {"client-certificate": "u.crt", "client-key": "/abs/u.key"}},
                   clusters={"c1": {"server": "https://a", "certificate-authority": "ca.crt"}})
    c = from_kubeconfig([f])
    assert (c.ca_file, c.cert_file, c.key_file) == (str(tmp_path / "ca.crt"), str(tmp_path / "u.crt"), "/abs/u.key")


@pytest.mark.parametrize(("field", "value", "what"), [
    ("exec", {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}, "an exec plugin"),
    ("auth-provider", {"name": "gcp"}, "an auth-provider plugin"),
    ("username", "admin", "basic authentication"),
])
def test_plugins_and_basic_auth_are_refused_by_name(tmp_path: Path, field: str, value: Any, what: str) -> None:
    f = kubeconfig(tmp_path / "kc", {"eks-admin": {field: value}})
    with pytest.raises(CredentialsError) as e:
        from_kubeconfig([f])
    assert (f"user 'eks-admin' uses {what}, which topodra does not run; use a token or client certificate"
            in str(e.value))


def test_missing_and_malformed_kubeconfigs(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="cannot read"):
        from_kubeconfig([tmp_path / "absent"])
    (tmp_path / "list").write_text("- a\n- b\n")
    with pytest.raises(CredentialsError, match="not a kubeconfig"):
        from_kubeconfig([tmp_path / "list"])
    f = kubeconfig(tmp_path / "kc", {"u": {}}, clusters={"c1": {"certificate-authority-data": "AAAA"}})
    with pytest.raises(CredentialsError, match="has no server"):
        from_kubeconfig([f])
    f = kubeconfig(tmp_path / "kc2", {"u": {"client-certificate-data": "not base64!"}})
    with pytest.raises(CredentialsError, match="client-certificate-data is not base64"):
        from_kubeconfig([f])


def test_several_files_merge_first_wins(tmp_path: Path) -> None:
    a = kubeconfig(tmp_path / "a", {"u": {"token": "from-a"}}, current=None)
    b = kubeconfig(tmp_path / "b", {"u": {"token": "from-b"}, "v": {"token": "v"}},
                   clusters={"c1": {"server": "https://b"}, "c2": {"server": "https://c2"}},
                   contexts={"main": ("c2", "v"), "other": ("c1", "u")}, current="other")
    # kubectl's rule: the first file naming an entry wins; the first current-context set wins.
    c = load_credentials(f"{a}:{tmp_path / 'missing'}:{b}")
    assert (c.server, c.token) == ("https://10.0.0.1:6443", "from-a")  # context "other" from b, cluster c1 from a


def test_kubeconfig_env_then_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kc", {"u": {"token": "env"}})))
    assert load_credentials().token == "env"
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    c = in_cluster(sa)
    assert c.server == "https://[fd00::1]:6443" and c.ca_file == str(sa / "ca.crt")
    assert token_reader(c)() == "sa-token"


def test_embedded_certificates_make_a_working_tls_context(tmp_path: Path) -> None:
    from topodra_cli.localcluster import pki

    ca = pki.make_ca(tmp_path, "kubeaccess-test-ca")
    user = pki.issue(ca, tmp_path, "user", "alice")
    f = kubeconfig(tmp_path / "kc", {"alice": {"client-certificate-data": B64(user.cert.read_bytes()).decode(),
                                                "client-key-data": B64(user.key.read_bytes()).decode()}},
                   clusters={"c1": {"server": "https://a",
                                    "certificate-authority-data": B64(ca.cert.read_bytes()).decode()}})
    c = from_kubeconfig([f])
    assert c.cert_data == user.cert.read_bytes() and c.ca_data == ca.cert.read_bytes()
    ctx = ssl_context(c)  # loads the chain: fails if the data were garbled
    subjects = [dict(x[0] for x in cert["subject"]) for cert in ctx.get_ca_certs()]
    assert {"commonName": "kubeaccess-test-ca"} in subjects
    assert ctx.check_hostname


def test_insecure_skip_tls_verify(tmp_path: Path) -> None:
    import ssl

    f = kubeconfig(tmp_path / "kc", {"u": {"token": "t"}},
                   clusters={"c1": {"server": "https://a", "insecure-skip-tls-verify": True}})
    ctx = ssl_context(from_kubeconfig([f]))
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_no_token_means_none() -> None:
    assert token_reader(Credentials(server="https://a"))() is None


# ---- errors --------------------------------------------------------------------------------------

def test_api_error_from_a_status_body() -> None:
    body = orjson.dumps({"kind": "Status", "status": "Failure", "message": 'nodes "x" not found',
                         "reason": "NotFound", "code": 404})
    e = ApiError.from_body(404, body, "GET /api/v1/nodes/x: Not Found")
    assert (e.status, e.reason, e.body["reason"]) == (404, 'nodes "x" not found', "NotFound")
    assert e.not_found and not e.conflict and not e.gone and not e.transient
    assert str(e) == 'HTTP 404: nodes "x" not found'


def test_api_error_from_text_or_nothing() -> None:
    assert ApiError.from_body(503, b"apiserver down\n", "fallback").reason == "apiserver down"
    e = ApiError.from_body(502, b"", "GET /x: Bad Gateway")
    assert e.reason == "GET /x: Bad Gateway" and e.transient and e.body == {}


@pytest.mark.parametrize(("status", "transient"), [(0, True), (408, True), (429, True), (500, True), (503, True),
                                                   (400, False), (403, False), (409, False), (422, False)])
def test_transient(status: int, transient: bool) -> None:
    assert ApiError(status, "x").transient is transient


def test_watch_expired_status_is_gone() -> None:
    # A watch ERROR event carries a Status whose code may be 410 or whose reason says Expired.
    assert ApiError.from_status({"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}).gone
    e = ApiError.from_status({"reason": "Expired", "message": "too old resource version"})
    assert e.gone and e.status == 0 and e.reason == "too old resource version"
    assert ApiError(409, "Operation cannot be fulfilled").conflict
    assert str(ApiError(0, "connection refused")) == "connection refused"


# ---- backoff -------------------------------------------------------------------------------------

def test_backoff_doubles_to_the_cap_and_jitter_only_shortens() -> None:
    b = Backoff(base=0.5, cap=4.0, jitter=0.2, rng=random.Random(7))
    for nominal in [0.5, 1, 2, 4, 4, 4, 4]:
        d = b.next()
        assert 0.8 * nominal <= d <= nominal
    b.reset()
    assert b.next() <= 0.5


def test_backoff_without_jitter_is_exact_and_never_overflows() -> None:
    b = Backoff(base=0.25, cap=10.0, jitter=0.0)
    assert [b.next() for _ in range(4)] == [0.25, 0.5, 1.0, 2.0]
    for _ in range(2000):  # a long outage: the exponent stops growing, no OverflowError
        assert b.next() <= 10.0
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)


# ---- watch splitter ------------------------------------------------------------------------------

EVENTS = [
    {"type": "ADDED", "object": {"metadata": {"name": "gpu-node-ä", "resourceVersion": "1"}}},
    {"type": "MODIFIED", "object": {"metadata": {"name": "節点", "labels": {"emoji": "🚀"}}}},
    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
]
STREAM = b"".join(orjson.dumps(e) + b"\n" for e in EVENTS)


def _split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _feed_all(chunks: list[bytes]) -> tuple[list[dict[str, Any]], int]:
    s = EventSplitter()
    out = [ev for c in chunks for ev in s.feed(c)]
    return out, s.pending


def test_chunks_cut_inside_a_multibyte_character() -> None:
    rocket = STREAM.index("🚀".encode())
    for cut in range(rocket + 1, rocket + 4):  # inside the 4-byte sequence
        assert _feed_all(_split_at(STREAM, [cut])) == (EVENTS, 0)


def test_one_byte_chunks_and_one_big_chunk() -> None:
    assert _feed_all([STREAM[i:i + 1] for i in range(len(STREAM))]) == (EVENTS, 0)
    assert _feed_all([STREAM]) == (EVENTS, 0)


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    assert _feed_all(_split_at(STREAM, cuts)) == (EVENTS, 0)


def test_blank_lines_skipped_and_a_cut_tail_is_pending() -> None:
    events, pending = _feed_all([b"\n  \n", STREAM, b'{"type": "ADD'])
    assert events == EVENTS and pending == len(b'{"type": "ADD')


def test_error_event_raises_its_status() -> None:
    line = orjson.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                     "message": "too old resource version: 5 (9)"}}) + b"\n"
    s = EventSplitter()
    with pytest.raises(ApiError) as e:
        assert list(s.feed(STREAM[:40])) == []  # a partial event first: nothing yet
        list(s.feed(STREAM[40:] + line))
    assert e.value.gone and "too old" in e.value.reason


def test_garbage_line_is_an_api_error() -> None:
    with pytest.raises(ApiError) as e:
        list(EventSplitter().feed(b"<html>proxy error</html>\n"))
    assert e.value.status == 0 and "undecodable" in e.value.reason
    with pytest.raises(ApiError, match="not an object"):
        list(EventSplitter().feed(b"[1, 2]\n"))


# ---- what each component loads -------------------------------------------------------------------

@pytest.mark.parametrize(("modules", "absent"), [
    # The driver (with its kubelet plugin and log setup) reaches the API through urllib3 only.
    ("driver.cli, driver.app, driver.kubeletplugin.runner, topodra_cli.logsetup, kubeaccess.sync",
     ("aiohttp", "kubernetes")),
    # The extender through aiohttp only.
    ("scheduler_plugin.cli, scheduler_plugin.cache, kubeaccess.aio, topodra_cli.logsetup", ("urllib3", "kubernetes")),
])
def test_each_component_loads_only_its_own_client(modules: str, absent: tuple[str, ...]) -> None:
    import subprocess
    import sys

    code = f"import sys, {modules}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout
