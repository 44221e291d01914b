"""The local cluster's gang switches without a cluster: gate sets, runtime config, scheduler config files."""

from __future__ import annotations

from pathlib import Path

import pytest

from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.binaries import K8S_VERSION
from topodra_cli.localcluster.gates import GATES, WORKLOAD_GATES, check_gates, gate_flag, gates, runtime_config
from topodra_cli.localcluster.processes import ClusterError
from topodra_cli.localcluster.schedulerconfig import compose, load_base


def test_default_gates_keep_workload_scheduling_off() -> None:
    g = gates(K8S_VERSION)
    assert g == GATES[K8S_VERSION]
    assert all(g[name] is False for name in WORKLOAD_GATES[K8S_VERSION])
    assert "GenericWorkload=false" in gate_flag(K8S_VERSION)
    assert runtime_config() == "api/all=true"


def test_generic_workload_turns_on_the_gate_and_its_dependents() -> None:
    g = gates(K8S_VERSION, generic_workload=True)
    assert all(g[name] for name in WORKLOAD_GATES[K8S_VERSION])
    assert g["DRAListTypeAttributes"]  # the rest of the list is unchanged
    assert "GenericWorkload=true" in gate_flag(K8S_VERSION, True).split(",")
    assert "scheduling.k8s.io/v1beta1=true" in runtime_config(True).split(",")


def test_check_gates_reads_the_metric_for_either_setting() -> None:
    def metrics(on: dict[str, bool]) -> str:
        return "\n".join(f'kubernetes_feature_enabled{{name="{k}",stage="BETA"}} {int(v)}' for k, v in on.items())

    on = gates(K8S_VERSION, True)
    assert check_gates(K8S_VERSION, metrics(on), generic_workload=True) == []
    assert set(check_gates(K8S_VERSION, metrics(on))) == set(WORKLOAD_GATES[K8S_VERSION])


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sched.yaml"
    p.write_text(text)
    return p


def test_scheduler_config_file_keeps_its_settings_and_gets_the_harness_ones(tmp_path: Path) -> None:
    base = load_base(_write(tmp_path, """
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: /elsewhere, qps: 7}
leaderElection: {leaderElect: true}
percentageOfNodesToScore: 30
profiles:
- schedulerName: gang-scheduler
extenders:
- {urlPrefix: "http://a", filterVerb: filter}
"""))
    doc = compose(base, kubeconfig=Path("/c/scheduler.kubeconfig"),
                  extenders=[{"urlPrefix": "http://b"}], percentage_of_nodes_to_score=100)
    assert doc["clientConnection"] == {"kubeconfig": "/c/scheduler.kubeconfig", "qps": 7, "burst": 1000}
    assert doc["leaderElection"] == {"leaderElect": False}
    assert doc["percentageOfNodesToScore"] == 30
    assert doc["profiles"] == [{"schedulerName": "gang-scheduler"}]
    assert [e["urlPrefix"] for e in doc["extenders"]] == ["http://a", "http://b"]
    # composing does not change the stored base (it is reused at every scheduler restart)
    assert base["clientConnection"]["kubeconfig"] == "/elsewhere"
    assert len(base["extenders"]) == 1


def test_no_scheduler_config_file_gives_the_harness_default() -> None:
    doc = compose(None, kubeconfig=Path("/k"), extenders=[], percentage_of_nodes_to_score=50)
    assert doc["kind"] == "KubeSchedulerConfiguration"
    assert doc["percentageOfNodesToScore"] == 50
    assert doc["profiles"] == [{"schedulerName": "default-scheduler"}]
    assert "extenders" not in doc


@pytest.mark.parametrize(("text", "message"), [
    ("kind: [unclosed", "not valid YAML"),
    ("", "exactly one YAML document"),
    ("- a\n- b\n", "want a YAML mapping"),
    ("apiVersion: v1\nkind: ConfigMap\n", "want apiVersion kubescheduler.config.k8s.io/v1 and kind"),
    ("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles: {a: 1}\n",
     "profiles must be a list"),
])
def test_bad_scheduler_config_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        load_base(_write(tmp_path, text))


def test_bad_scheduler_config_fails_up_before_anything_starts(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "c", scheduler_config=_write(tmp_path, "apiVersion: v1\nkind: Pod\n"))
    with pytest.raises(ClusterError, match="kind KubeSchedulerConfiguration"):
        c.up(build=False)
    assert not (tmp_path / "c" / "state.json").exists()


def test_cli_up_has_both_switches() -> None:
    import argparse

    from topodra_cli import localcluster_cli

    parser = argparse.ArgumentParser()
    localcluster_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["local-cluster", "up", "--generic-workload", "--scheduler-config", "s.yaml"])
    assert args.generic_workload is True
    assert args.scheduler_config == Path("s.yaml")


def test_cli_up_with_a_bad_scheduler_config_says_why_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from topodra_cli.main import main

    bad = _write(tmp_path, "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n  x: [\n")
    rc = main(["local-cluster", "up", "--dir", str(tmp_path / "c"), "--no-build", "--scheduler-config", str(bad)])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"scheduler config {bad}: not valid YAML" in err
    assert not (tmp_path / "c" / "state.json").exists()
