"""The locally built OCI images (no cluster needed): a valid, deterministic OCI layout."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from topodra_cli.localcluster.images import BUSYBOX_IMAGE, PAUSE_IMAGE, _is_static, build_images, find_busybox
from topodra_cli.localcluster.processes import ClusterError


def _busybox() -> Path:
    try:
        return find_busybox()
    except ClusterError as e:
        pytest.skip(str(e))


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as t:
        return {m.name: (t.extractfile(m).read() if m.isfile() else b"") for m in t.getmembers()}


def test_images_are_valid_oci_layouts_and_deterministic(tmp_path: Path) -> None:
    bb = _busybox()
    first = build_images(tmp_path / "a", bb)
    second = build_images(tmp_path / "b", bb)
    assert [i.name for i in first] == [BUSYBOX_IMAGE, PAUSE_IMAGE]
    for a, b in zip(first, second, strict=True):
        assert a.tarball.read_bytes() == b.tarball.read_bytes()
        files = _members(a.tarball)
        assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
        for name, data in files.items():  # every blob is named by its digest
            if name.startswith("blobs/sha256/") and data:
                assert name.rsplit("/", 1)[1] == hashlib.sha256(data).hexdigest()
        index = json.loads(files["index.json"])
        (desc,) = index["manifests"]
        assert desc["annotations"]["io.containerd.image.name"] == a.name
        manifest = json.loads(files["blobs/sha256/" + desc["digest"].split(":")[1]])
        config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
        layer = files["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]]
        assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
        with tarfile.open(fileobj=io.BytesIO(layer)) as t:
            names = set(t.getnames())
            assert {"bin/busybox", "bin/sh", "bin/env", "bin/find", "bin/stat", "bin/sleep"} <= names
            assert t.getmember("bin/sh").issym()
    pause_cfg = json.loads(_config_of(first[1].tarball))
    assert pause_cfg["config"]["Entrypoint"][:2] == ["/bin/sh", "-c"]


def _config_of(tar_path: Path) -> bytes:
    files = _members(tar_path)
    desc = json.loads(files["index.json"])["manifests"][0]
    manifest = json.loads(files["blobs/sha256/" + desc["digest"].split(":")[1]])
    return files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]]


def test_static_detection() -> None:
    assert _is_static(_busybox())
    assert not _is_static(Path("/bin/ls"))  # dynamically linked on Debian
