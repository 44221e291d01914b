"""`topodra conformance` command line: listing, and every bad input ends with exit 2 and a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from topodra_cli.conformance.registry import FAMILIES
from topodra_cli.localcluster.processes import free_port
from topodra_cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        rc = main(["conformance", *args])
    except SystemExit as e:  # argparse's own errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_dry_run_lists_every_check_with_its_requirement(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--dry-run", "--kubeconfig", "/nonexistent")  # touches no cluster
    assert rc == 0
    names = [f"{f.name}/{s}" for f in FAMILIES for s, _ in f.subtests]
    assert len(names) == 14 and all(f"  {n}: " in out for n in names)
    assert "TestGangScheduling  [schedulingOrchestration/gang_scheduling]" in out
    assert "TestSecureAcceleratorAccess  [security/secure_accelerator_access]" in out
    assert "TestTopodraTopology  [topodra's own (no checklist item)]" in out


def test_dry_run_with_run_lists_only_the_selection(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--dry-run", "--run", "TestGang/Negative|Released")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("TestGangScheduling  ")
    assert [ln.split(":")[0] for ln in lines[1:]] == [
        "  TestGangScheduling/NegativeGangScheduling", "  TestGangScheduling/ResourcesReleased"]


@pytest.mark.parametrize(("args", "says"), [
    (["--run", "Test("], "--run 'Test(': not a regular expression"),
    (["--run", "TestNothingLikeThis"], "selects no check"),
    (["--node-selector", "gpu"], "--node-selector 'gpu': want KEY=VALUE"),
    (["--gang-job-label", "=x"], "--gang-job-label '=x': want KEY=VALUE"),
    (["--namespace-prefix", "Bad_Prefix-"], "--namespace-prefix 'Bad_Prefix-'"),
    (["--timeout", "0"], "must be positive"),
    (["--topology-level", "pod"], "--topology-level pod: give its node label as pod=LABEL"),
    (["--kubeconfig", "/nonexistent/kubeconfig"], "cannot use the kubeconfig"),
])
def test_bad_input_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
                                           says: str) -> None:
    rc, out, err = run(capsys, *args, "--out", str(tmp_path / "out"))
    assert rc == 2, out + err
    assert says in err and err.startswith("topodra conformance: ")
    assert not (tmp_path / "out").exists()


def test_unknown_flag_is_argparse_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "--no-such-flag")
    assert rc == 2 and "unrecognized arguments: --no-such-flag" in err


def test_unreachable_cluster_exits_2_and_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    kc = tmp_path / "kubeconfig"
    kc.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: abc}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    rc, out, err = run(capsys, "--kubeconfig", str(kc), "--out", str(tmp_path / "out"))
    assert rc == 2
    assert f"cannot reach the cluster at https://127.0.0.1:{port}" in err
    assert "refused" in err.lower()
    assert not (tmp_path / "out").exists() and out == ""


def test_a_known_topology_level_takes_its_label_from_the_extender_defaults() -> None:
    import argparse

    from topodra_cli.conformance_cli import options, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    opts = options(parser.parse_args(["conformance", "--topology-level", "rack", "--gang-job-label", "a=b,c=d"]))
    assert (opts.topology_level, opts.topology_label) == ("rack", "topodra.dev/rack")
    assert opts.gang_job_labels == (("a", "b"), ("c", "d"))
    opts = options(parser.parse_args(["conformance"]))
    assert (opts.topology_level, opts.topology_label) == ("node", "")
    assert opts.gang_job_labels == (("topodra.dev/gang", "true"),)
