"""A Go-like `testing.T` for the checks, and the recorder that turns what they do into `go test -v` output.

Every line the recorder emits is a test2json event as `go test -json` would write it; the e2e.log is the
concatenation of their `Output`, so the three evidence files can never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from topodra_cli.conformance.model import GO_PACKAGE, CheckFailed, CheckResult, CheckSkipped, Status
from topodra_cli.conformance.selection import Selector


@dataclass(frozen=True)
class GoEvent:
    """One `go test -json` (test2json) event."""

    time: float  # epoch seconds
    action: str  # start, run, output, pass, fail, skip
    test: str = ""
    output: str | None = None
    elapsed: float | None = None
    package: str = GO_PACKAGE


class Listener(Protocol):
    """Who watches a run as it happens (the console report)."""

    def started(self, result: CheckResult) -> None: ...
    def logged(self, result: CheckResult, line: str) -> None: ...
    def finished(self, result: CheckResult) -> None: ...


def _fmt_elapsed(seconds: float) -> str:
    return f"{seconds:.2f}s"


class Recorder:
    def __init__(self, listener: Listener | None = None, clock: Callable[[], float] = time.time) -> None:
        self.events: list[GoEvent] = []
        self.results: list[CheckResult] = []
        self.listener = listener
        self.clock = clock
        self.started_at = clock()
        self._pending: dict[str, list[CheckResult]] = {}  # parent -> its ended subtests, reported after it
        self.events.append(GoEvent(self.started_at, "start"))

    def _out(self, test: str, text: str) -> None:
        self.events.append(GoEvent(self.clock(), "output", test, text))

    def begin(self, name: str) -> CheckResult:
        r = CheckResult(name, started=self.clock())
        self.results.append(r)
        self.events.append(GoEvent(r.started, "run", name))
        self._out(name, f"=== RUN   {name}\n")
        if self.listener:
            self.listener.started(r)
        return r

    def log(self, r: CheckResult, line: str) -> None:
        indent = "    "  # go test -v: a log line is indented once, whatever the depth
        for part in (line.splitlines() or [""]):
            r.output.append(part)
            self._out(r.name, f"{indent}{part}\n")
            if self.listener:
                self.listener.logged(r, part)

    def end(self, r: CheckResult) -> None:
        """As go test -v reports: a subtest's `--- PASS` line (and its end event) waits for its parent's,
        then follows it, indented."""
        r.elapsed = max(self.clock() - r.started, 0.0)
        if self.listener:
            self.listener.finished(r)
        if r.depth:
            self._pending.setdefault(r.parent, []).append(r)
            return
        for done in (r, *self._pending.pop(r.name, [])):
            word = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.SKIP: "SKIP"}[done.status]
            self._out(done.name, f"{'    ' * done.depth}--- {word}: {done.name} ({_fmt_elapsed(done.elapsed)})\n")
            if done is not r:
                self._end_event(done)
        self._end_event(r)

    def _end_event(self, r: CheckResult) -> None:
        self.events.append(GoEvent(self.clock(), r.status.value, r.name, elapsed=round(r.elapsed, 3)))

    def finish(self) -> bool:
        """The package's closing lines; True when nothing failed."""
        ok = not any(r.status is Status.FAIL for r in self.results)
        total = self.clock() - self.started_at
        if ok:
            self._out("", "PASS\n")
            self._out("", f"ok  \t{GO_PACKAGE}\t{total:.3f}s\n")
        else:
            self._out("", "FAIL\n")
            self._out("", f"FAIL\t{GO_PACKAGE}\t{total:.3f}s\n")
        self.events.append(GoEvent(self.clock(), "pass" if ok else "fail", elapsed=round(total, 3)))
        return ok


class T:
    """One running test or subtest: log, fail, skip, and run subtests (only those `--run` selects)."""

    def __init__(self, rec: Recorder, result: CheckResult, selector: Selector) -> None:
        self._rec = rec
        self.result = result
        self._selector = selector
        self.child_failed = False

    @property
    def name(self) -> str:
        return self.result.name

    def log(self, msg: str) -> None:
        self._rec.log(self.result, msg)

    def fail(self, msg: str) -> NoReturn:
        raise CheckFailed(msg)

    def skip(self, reason: str) -> NoReturn:
        raise CheckSkipped(reason)

    def selected(self, sub: str) -> bool:
        return self._selector.matches(f"{self.name}/{sub}")

    def run(self, sub: str, fn: Callable[[T], None]) -> bool:
        """Run subtest `sub` when selected; True unless it failed."""
        if not self.selected(sub):
            return True
        child = T(self._rec, self._rec.begin(f"{self.name}/{sub}"), self._selector)
        execute(child, fn)
        if child.result.status is Status.FAIL:
            self.child_failed = True
        return child.result.status is not Status.FAIL


def execute(t: T, fn: Callable[[T], None]) -> None:
    """Run `fn(t)` and record how it ended. An interrupt is recorded as a failure and raised again."""
    r = t.result
    try:
        fn(t)
        if t.child_failed:
            r.status = Status.FAIL
    except CheckFailed as e:
        r.status, r.message = Status.FAIL, str(e)
        t.log(str(e))
    except CheckSkipped as e:
        r.status, r.message = Status.SKIP, str(e)
        t.log(str(e))
    except KeyboardInterrupt:
        r.status, r.message = Status.FAIL, "interrupted"
        t.log("interrupted (Ctrl-C or SIGTERM); cleaning up")
        t._rec.end(r)
        raise
    except Exception as e:  # an API error or a bug: the check did not finish, which is a failure
        r.status, r.message = Status.FAIL, f"error: {e.__class__.__name__}: {e}"
        t.log(r.message)
    t._rec.end(r)
