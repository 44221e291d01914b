"""One run: connect, run the selected families in order, clean up, write the evidence, summarize.

Ctrl-C and SIGTERM stop the check in progress (recorded as failed: interrupted); the namespaces made so far
are deleted and the evidence of what ran is still written.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TextIO

from kubeaccess.credentials import load_credentials
from kubeaccess.errors import ApiError, CredentialsError
from topodra_cli.conformance import registry
from topodra_cli.conformance.context import Cleanup, Context
from topodra_cli.conformance.family import Family
from topodra_cli.conformance.gotest import e2e_log, results_json
from topodra_cli.conformance.harness import Recorder, T, execute
from topodra_cli.conformance.junit import junit_xml
from topodra_cli.conformance.kube import Client
from topodra_cli.conformance.model import CheckResult, Options, Status, UsageError
from topodra_cli.conformance.product import product_fragment
from topodra_cli.conformance.requirements import checklist_version
from topodra_cli.conformance.selection import Selector

FILES = ("e2e.log", "junit.xml", "results.json", "PRODUCT.yaml")


class Console:
    """The readable report on stdout, printed as the checks go."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def _p(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def started(self, r: CheckResult) -> None:
        if r.depth == 0:
            self._p(f"\n{r.name}")
        else:
            self._p(f"  {r.name.split('/', 1)[1]} ...")

    def logged(self, r: CheckResult, line: str) -> None:
        self._p(f"{'      ' if r.depth else '    '}{line}")

    def finished(self, r: CheckResult) -> None:
        label = r.name.split("/", 1)[1] if r.depth else r.name
        self._p(f"{'  ' if r.depth else ''}{label}: {r.status.name} ({r.elapsed:.1f}s)")


def leaves(results: list[CheckResult]) -> list[CheckResult]:
    """The checks that count: subtests, and top-level tests that ended before running any subtest."""
    parents = {r.parent for r in results if r.depth}
    return [r for r in results if r.depth or r.name not in parents]


def connect(opts: Options) -> Client:
    try:
        client = Client(load_credentials(opts.kubeconfig, opts.context), user_agent="topodra-conformance")
    except (CredentialsError, OSError, ValueError, KeyError) as e:
        raise UsageError(f"cannot use the kubeconfig: {e}") from e
    try:
        client.request("GET", "/version", timeout=10)
        client.get("/api/v1/namespaces", limit=1)
    except ApiError as e:
        raise UsageError(f"cannot reach the cluster at {client.server}: {e}") from e
    return client


@contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C while checks run, so the same cleanup path handles both."""
    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def no_interrupts() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C would leave namespaces behind (it is bounded by its timeout)."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def list_checks(chosen: list[tuple[Family, list[str]]], out: TextIO) -> None:
    for f, subs in chosen:
        req = f.requirement.key if f.requirement else "topodra's own (no checklist item)"
        print(f"{f.name}  [{req}]  {f.summary}", file=out)
        for s in subs:
            print(f"  {f.name}/{s}: {dict(f.subtests)[s]}", file=out)


def run(opts: Options, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    sel = Selector(opts.run)
    chosen = registry.selected(sel)
    if not chosen:
        raise UsageError(f"--run {opts.run!r} selects no check (`topodra conformance --dry-run` lists them)")
    if opts.dry_run:
        list_checks(chosen, out)
        return 0
    client = connect(opts)
    outdir = opts.out or Path("conformance-results")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {outdir}: {e}") from e
    ctx = Context(client, opts, Cleanup(client))
    try:
        inv = ctx.inventory()
    except ApiError as e:
        raise UsageError(f"cannot read nodes, DeviceClasses or ResourceSlices at {client.server}: {e}") from e
    print(f"topodra conformance against {client.server} (Kubernetes {inv.version}, checklist "
          f"{checklist_version(inv.version)}); run {ctx.run_id}, namespaces {opts.namespace_prefix}*-{ctx.run_id}",
          file=out, flush=True)
    cand = inv.candidates()
    print("candidate nodes: " + (", ".join(
        f"{n} ({len(inv.usable('gpu', n))} GPUs, {len(inv.usable('nic', n))} NICs)" for n in cand) or "none"),
        file=out, flush=True)
    rec = Recorder(Console(out))
    interrupted = False
    t0 = time.monotonic()
    try:
        with interrupts_as_keyboard():
            for f, _ in chosen:
                execute(T(rec, rec.begin(f.name), sel), partial(f.run, ctx))
                for ns in ctx.cleanup.namespaces:  # free the family's devices for the next one
                    with suppress(ApiError):
                        ctx.cleanup.delete(ns)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: cleaning up", file=out, flush=True)
    with no_interrupts():
        if ctx.cleanup.namespaces:
            print(f"\ndeleting {len(ctx.cleanup.namespaces)} namespaces ...", file=out, flush=True)
        left = ctx.cleanup.all(timeout=max(opts.timeout, 60))
        ok = rec.finish() and not interrupted
        _write(outdir, rec, inv.version, client.server, time.monotonic() - t0)
    _summary(rec.results, left, outdir, time.monotonic() - t0, out)
    return 0 if ok else 1


def _write(outdir: Path, rec: Recorder, version: str, server: str, seconds: float) -> None:
    texts = {
        "e2e.log": e2e_log(rec.events),
        "results.json": results_json(rec.events),
        "junit.xml": junit_xml(rec.results, seconds, rec.started_at),
        "PRODUCT.yaml": product_fragment(rec.results, registry.coverage(), version, server),
    }
    for name, text in texts.items():
        tmp = outdir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(outdir / name)


def _summary(results: list[CheckResult], left: list[str], outdir: Path, seconds: float, out: TextIO) -> None:
    counted = leaves(results)
    n = {s: sum(r.status is s for r in counted) for s in Status}
    print(f"\n{len(counted)} checks: {n[Status.PASS]} passed, {n[Status.FAIL]} failed, {n[Status.SKIP]} skipped "
          f"in {seconds:.1f}s", file=out)
    for r in counted:
        if r.status is not Status.PASS:
            print(f"  {r.status.name}  {r.name}: {r.message or 'a subtest failed'}", file=out)
    if left:
        print(f"WARNING: namespaces not gone yet (deletion requested): {', '.join(left)}", file=out)
    print(f"evidence: {', '.join(str(outdir / f) for f in FILES)}", file=out, flush=True)
