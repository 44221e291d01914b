"""Config file: defaults, a full example, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler_plugin.config import DEFAULT_LEVELS, ConfigError, GangConfig, load_config, parse_config
from scheduler_plugin.schedconfig import SchedulerSettings, SettingsError, scheduler_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_contract_levels() -> None:
    cfg = load_config(None)
    assert [lv.name for lv in cfg.levels] == ["zone", "block", "rack", "clique"]
    assert cfg.levels == DEFAULT_LEVELS
    assert "topology.kubernetes.io/zone" in cfg.levels[0].labels
    assert "nvidia.com/gpu.clique" in cfg.levels[3].labels


def test_example_file_loads() -> None:
    cfg = load_config(ROOT / "deploy" / "examples" / "extender-config.yaml")
    assert cfg.levels[-1].name == "clique"
    assert cfg.weights.pcie > cfg.weights.numa


@pytest.mark.parametrize(("doc", "message"), [
    ({"levels": "zone"}, "levels: must be a list"),
    ({"levels": [{"name": "rack"}]}, "levels[0]: give `label`"),
    ({"levels": [{"label": "x"}]}, "levels[0].name: required"),
    ({"levels": [{"name": "a", "label": "x"}, {"name": "a", "label": "y"}]}, "names must be unique"),
    ({"weights": {"pcie": -1}}, "weights.pcie: must be a number >= 0"),
    ({"weights": {"alignment": 0, "packing": 0}}, "must be > 0"),
    ({"weights": {"bogus": 1}}, "weights.bogus: unknown field"),
    ({"alignment": {"default": "always"}}, "alignment.default"),
    ({"jobLabels": "x"}, "jobLabels: must be a list"),
    ({"levelz": []}, "levelz: unknown field"),
    ([1], "(top level): must be a mapping"),
])
def test_errors_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert message in str(e.value)


def test_gang_section() -> None:
    assert load_config(None).gang == GangConfig()
    assert GangConfig().default_timeout_seconds == 300.0 and GangConfig().job_label == "topodra.dev/gang"
    cfg = parse_config({"gang": {"jobLabel": "example.com/gang", "jobLabelValue": "", "defaultTimeoutSeconds": 60,
                                 "nameAnnotation": "example.com/g", "sizeAnnotation": "example.com/n",
                                 "timeoutAnnotation": "example.com/t", "requiredAnnotation": "example.com/req",
                                 "preferredAnnotation": "example.com/pref"}})
    assert cfg.gang == GangConfig("example.com/gang", "", 60.0, "example.com/g", "example.com/n", "example.com/t",
                                  "example.com/req", "example.com/pref")


@pytest.mark.parametrize(("doc", "message"), [
    ({"gang": "yes"}, "gang: must be a mapping"),
    ({"gang": {"jobLabels": "x"}}, "gang.jobLabels: unknown field"),
    ({"gang": {"jobLabel": ""}}, "gang.jobLabel: must be a non-empty string"),
    ({"gang": {"sizeAnnotation": 3}}, "gang.sizeAnnotation: must be a non-empty string"),
    ({"gang": {"jobLabelValue": True}}, "gang.jobLabelValue: must be a string"),
    ({"gang": {"defaultTimeoutSeconds": "5m"}}, "gang.defaultTimeoutSeconds: must be a number"),
    ({"gang": {"defaultTimeoutSeconds": 0}}, "gang.defaultTimeoutSeconds: must be > 0"),
])
def test_gang_errors_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert message in str(e.value)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("levels: [\n")
    with pytest.raises(ConfigError, match="not YAML"):
        load_config(bad)


def test_scheduler_config_matches_contract() -> None:
    doc = scheduler_config(SchedulerSettings(url="https://ext.example:8443/v1/"))
    # The extender nominates each pod's node itself: kube-scheduler keeps its adaptive sample.
    assert "percentageOfNodesToScore" not in doc
    e = doc["extenders"][0]
    assert e["urlPrefix"] == "https://ext.example:8443/v1"
    assert (e["filterVerb"], e["prioritizeVerb"], e["nodeCacheCapable"], e["enableHTTPS"]) == (
        "filter", "prioritize", True, True)
    assert e["tlsConfig"] == {"serverName": "ext.example", "caFile": "/etc/topodra/ca.crt"}
    assert "bindVerb" not in e and e["managedResources"] == [] and e["weight"] > 0


def test_bind_verb_with_a_consistent_timeout_and_never_ignorable() -> None:
    e = scheduler_config(SchedulerSettings(url="https://ext.example:8443/v1", bind=True))["extenders"][0]
    assert (e["bindVerb"], e["httpTimeout"], e["ignorable"]) == ("bind", "30s", False)
    with pytest.raises(SettingsError, match="default binder"):
        scheduler_config(SchedulerSettings(bind=True, ignorable=True))


def test_cli_refuses_bind_with_ignorable(capsys: pytest.CaptureFixture[str]) -> None:
    from topodra_cli.main import main

    assert main(["extender", "print-scheduler-config", "--bind", "--ignorable"]) == 2
    assert "bind and ignorable" in capsys.readouterr().err


def test_cli_prints_scheduler_config(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from topodra_cli.main import main

    assert main(["extender", "print-scheduler-config", "--url", "http://127.0.0.1:9000", "--weight", "7"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    e = doc["extenders"][0]
    assert e["enableHTTPS"] is False and "tlsConfig" not in e and e["weight"] == 7
