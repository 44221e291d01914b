"""The image build's parts that need no network: locks, ELF reading, reproducible layers, the Dockerfile in step.

The whole build (downloads, a second build giving the same digest, running it on a real node) is in
tests/e2e/test_topodra_image.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import time
import tomllib
from pathlib import Path

import pytest

from topodra_cli import imagebuild
from topodra_cli.imaging import debs, elf, layers, wheels
from topodra_cli.localcluster.images import Layer, oci_archive

REPO = Path(__file__).resolve().parents[2]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- the Dockerfile stays in step with `make image` ------------------------------------------------------


def _dockerfile() -> tuple[list[str], dict[str, list[str]]]:
    """(FROM lines, instruction -> its arguments of the final stage), continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    froms, final = [], {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "FROM":
            froms.append(rest)
            final = {}
        final.setdefault(word, []).append(rest.strip())
    return froms, final


def test_dockerfile_builds_the_same_image() -> None:
    froms, final = _dockerfile()
    text = (REPO / "Dockerfile").read_text()
    # Same Debian release as the lock, same locked wheels with hashes, the root assembled by the same code.
    assert froms[0].split()[0] == f"debian:{imagebuild.DEBIAN_RELEASE}"
    assert froms[-1] == "scratch"
    assert "hack/image/requirements.lock" in text and "--require-hashes" in text
    assert imagebuild.REQUIREMENTS_LOCK.relative_to(REPO).as_posix() == "hack/image/requirements.lock"
    assert "python3 -m topodra_cli.imagebuild rootfs /rootfs" in text
    assert final["COPY"] == ["--from=build /rootfs/ /"]
    cfg = imagebuild.image_config("0").as_json()
    assert json.loads(final["ENTRYPOINT"][0]) == cfg["Entrypoint"] == ["topodra"]
    assert final["USER"] == [cfg["User"]]
    env = dict(kv.split("=", 1) for kv in " ".join(final["ENV"]).split())
    assert env == dict(kv.split("=", 1) for kv in cfg["Env"])
    # The users the rootfs command writes (same code as `make image`).
    assert "nonroot:x:65532:65532:" in imagebuild.PASSWD and imagebuild.PASSWD.startswith("root:x:0:0:")
    # Every package pyproject ships is copied into the build stage.
    for pkg in imagebuild._packages(REPO):
        assert f"COPY {pkg}/ {pkg}/" in text, pkg


# ---- locks ---------------------------------------------------------------------------------------------


def test_debian_lock_pins_exactly_the_listed_packages() -> None:
    pins = debs.read_lock(imagebuild.DEBIAN_LOCK)
    assert sorted(p.name for p in pins) == sorted(debs.read_names(imagebuild.DEBIAN_IN))
    for p in pins:
        assert re.fullmatch(r"[0-9a-f]{64}", p.sha256), p
        assert p.filename.startswith("pool/") and p.filename.endswith(f"_{p.arch}.deb"), p
        assert p.arch in ("amd64", "all")
    names = {p.name for p in pins}
    assert {"python3.11-minimal", "libpython3.11-stdlib", "libc6", "busybox-static"} <= names
    assert not names & {"python3-pip", "apt", "dpkg", "gcc-12", "cpp-12"}


def test_debian_lock_round_trips(tmp_path: Path) -> None:
    pins = debs.read_lock(imagebuild.DEBIAN_LOCK)
    debs.write_lock(tmp_path / "lock", pins)
    assert debs.read_lock(tmp_path / "lock") == sorted(pins, key=lambda p: p.name)
    (tmp_path / "bad").write_text("libc6 2.36\n")
    with pytest.raises(Exception, match="expected 'name=version"):
        debs.read_lock(tmp_path / "bad")


def test_requirements_lock_pins_every_runtime_dependency_with_hashes() -> None:
    text = imagebuild.REQUIREMENTS_LOCK.read_text()
    reqs = {}
    for block in text.replace("\\\n", " ").splitlines():
        block = block.split("#", 1)[0].strip()
        if block:
            spec, *hashes = block.split()
            name, _, version = spec.partition("==")
            assert version, f"not pinned: {spec}"
            assert hashes and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), spec
            reqs[_canonical(name)] = version
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        assert _canonical(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]) in reqs, dep
    assert not {"pip", "setuptools", "wheel"} & reqs.keys()


def test_wheel_selection_targets_the_image_python() -> None:
    args = wheels.target_args("amd64")
    assert args[args.index("--python-version") + 1] == "3.11"
    assert "manylinux_2_36_x86_64" in args and "manylinux_2_37_x86_64" not in args  # bookworm's glibc
    assert "manylinux_2_17_aarch64" in wheels.target_args("arm64")


# ---- ELF -----------------------------------------------------------------------------------------------


def _a_dynamic_binary() -> Path:
    for p in (Path("/bin/ls"), Path("/usr/bin/env")):
        if p.is_file() and elf.dynamic_section(p) is not None:
            return p.resolve()
    pytest.skip("no dynamically linked binary to read")


def test_dynamic_section_lists_needed_libraries() -> None:
    dyn = elf.dynamic_section(_a_dynamic_binary())
    assert dyn is not None and "libc.so.6" in dyn.needed
    static = Path("/bin/busybox")
    if static.is_file() and imagebuild._is_static(static):
        assert elf.dynamic_section(static) is None


def test_unresolved_follows_default_dirs_symlinks_and_origin(tmp_path: Path) -> None:
    binary = _a_dynamic_binary()
    dyn = elf.dynamic_section(binary)
    assert dyn is not None
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    shutil.copyfile(binary, root / "usr/bin/tool")
    assert set(elf.unresolved([root])["/usr/bin/tool"]) == set(dyn.needed)
    # Provide all but libc in the multiarch dir, libc through a symlink in a second layer.
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    for lib in dyn.needed:
        if lib != "libc.so.6":
            (libdir / lib).touch()
    layer2 = tmp_path / "layer2"
    (layer2 / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (layer2 / "lib/x86_64-linux-gnu/libc-2.36.so").touch()
    (layer2 / "lib/x86_64-linux-gnu/libc.so.6").symlink_to("libc-2.36.so")
    assert elf.unresolved([root]) == {"/usr/bin/tool": ["libc.so.6"]}
    assert elf.unresolved([root, layer2]) == {}


# ---- reproducible layers and archives --------------------------------------------------------------------


def _tree(root: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        (root / "usr/bin").mkdir(parents=True)
        (root / "usr/bin/tool").write_text("#!/bin/sh\n")
        (root / "usr/bin/tool").chmod(0o777 & ~umask)
        (root / "etc").mkdir()
        (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (root / "bin").symlink_to("usr/bin")
        (root / "tmp").mkdir()
        (root / "tmp").chmod(0o1777)
        (root / "home/nonroot").mkdir(parents=True)
    finally:
        os.umask(old)


def test_tar_tree_ignores_times_umask_and_order(tmp_path: Path) -> None:
    _tree(tmp_path / "a", 0o022)
    time.sleep(1.1)
    _tree(tmp_path / "b", 0o077)
    owners = {"home/nonroot": 65532}
    a, b = layers.tar_tree(tmp_path / "a", owners), layers.tar_tree(tmp_path / "b", owners)
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as t:
        m = {x.name: x for x in t.getmembers()}
    assert m["usr/bin/tool"].mode == 0o755 and m["etc/passwd"].mode == 0o644
    assert m["tmp"].mode == 0o1777 and m["bin"].issym() and m["bin"].linkname == "usr/bin"
    assert m["home/nonroot"].uid == 65532 and m["home/nonroot"].mode == 0o700
    assert all(x.mtime == 0 for x in m.values())


def test_multi_layer_archive_is_deterministic_and_consistent(tmp_path: Path) -> None:
    la = Layer.of(b"a" * 1024, compress=True)
    lb = Layer.of(b"b" * 1024, compress=True)
    assert la == Layer.of(b"a" * 1024, compress=True)  # gzip without time or name in its header
    cfg = imagebuild.image_config("9.9.9")
    one = oci_archive("example.local/x:9.9.9", [la, lb, la], config=cfg, docker_manifest=True)
    assert one == oci_archive("example.local/x:9.9.9", [la, lb, la], config=cfg, docker_manifest=True)
    with tarfile.open(fileobj=io.BytesIO(one)) as t:
        files = {x.name: t.extractfile(x).read() for x in t.getmembers() if x.isfile()}  # type: ignore[union-attr]
    desc = json.loads(files["index.json"])["manifests"][0]
    manifest = json.loads(files["blobs/sha256/" + desc["digest"].split(":")[1]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    assert [x["mediaType"] for x in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"] * 3
    assert len(config["rootfs"]["diff_ids"]) == 3 == len(config["history"])
    assert sum(1 for n in files if n.startswith("blobs/")) == 4  # two layers (one reused), config, manifest
    assert config["config"]["Entrypoint"] == ["topodra"]
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == "9.9.9"
    # The docker-archive view of the same blobs, for `docker load`.
    (docker,) = json.loads(files["manifest.json"])
    assert docker["RepoTags"] == ["example.local/x:9.9.9"]
    assert docker["Config"] == "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]
    assert docker["Layers"] == ["blobs/sha256/" + x["digest"].split(":")[1] for x in manifest["layers"]]
