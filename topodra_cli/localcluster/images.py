"""Tiny container images built locally: there is no registry to pull from.

`busybox_image` writes an OCI image layout tarball whose one layer is Debian's statically linked
busybox (`busybox-static`) with a link per applet; `pause_image` is the same rootfs whose entrypoint
sleeps until SIGTERM (the pod sandbox). Both import with `ctr -n k8s.io images import --all-platforms`
and are named by the `io.containerd.image.name` annotation of `index.json`.

The output is deterministic (fixed mtimes, owners and order): the same busybox gives the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topodra_cli.localcluster.processes import ClusterError

BUSYBOX_IMAGE = "topodra.local/busybox:1"
PAUSE_IMAGE = "topodra.local/pause:1"
# PID 1 of the sandbox: wake on TERM/INT and exit 0 (a plain `sleep` as PID 1 ignores SIGTERM).
PAUSE_SCRIPT = "trap 'exit 0' TERM INT; sleep 2147483647 & wait"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


@dataclass(frozen=True)
class Image:
    name: str
    tarball: Path


def find_busybox() -> Path:
    """A statically linked busybox (Debian `busybox-static`); a dynamic one would not run in the image."""
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.is_file() and os.access(p, os.X_OK) and _is_static(p):
            return p
    raise ClusterError(
        "no statically linked busybox found (looked at " + ", ".join(BUSYBOX_CANDIDATES) + "); "
        "install Debian's busybox-static (`make apt`)"
    )


def _is_static(path: Path) -> bool:
    """An ELF without a PT_INTERP program header needs no dynamic loader."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(int.from_bytes(table[i * phentsize:i * phentsize + 4], "little") != 3 for i in range(phnum))


def _applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, timeout=30, check=False)
    names = sorted({a.strip() for a in out.stdout.split() if a.strip() and "/" not in a})
    if out.returncode != 0 or "sh" not in names:
        raise ClusterError(f"{busybox} --list failed or has no sh applet: {out.stderr.strip()}")
    return names


def _tar_info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = link
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def rootfs_layer(busybox: Path) -> bytes:
    """An uncompressed layer tar: /bin/busybox, a symlink per applet, and the usual empty dirs."""
    buf = io.BytesIO()
    data = busybox.read_bytes()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "var", "root"):
            tar.addfile(_tar_info(d + "/", tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
        tar.addfile(_tar_info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for applet in _applets(busybox):
            if applet != "busybox":
                tar.addfile(_tar_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ):
            raw = text.encode()
            tar.addfile(_tar_info(name, tarfile.REGTYPE, 0o644, len(raw)), io.BytesIO(raw))
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


MEDIA_LAYER_GZIP = MEDIA_LAYER + "+gzip"


@dataclass(frozen=True)
class Layer:
    """One layer: its uncompressed tar (whose digest is the config's diff_id) and the blob that is shipped."""

    tar: bytes
    blob: bytes
    media_type: str

    @staticmethod
    def of(tar: bytes, *, compress: bool = False) -> Layer:
        if not compress:
            return Layer(tar, tar, MEDIA_LAYER)
        # mtime=0 and no file name in the gzip header: the blob depends on the tar bytes only.
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
            gz.write(tar)
        return Layer(tar, buf.getvalue(), MEDIA_LAYER_GZIP)


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (the OCI `config` object)."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/bin",)
    user: str = ""
    workdir: str = "/"
    labels: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Env": list(self.env), "WorkingDir": self.workdir}
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.user:
            out["User"] = self.user
        if self.labels:
            out["Labels"] = dict(self.labels)
        return out


def oci_archive(
    name: str, layer: bytes | Sequence[Layer], *, entrypoint: Sequence[str] = (), cmd: Sequence[str] = (),
    arch: str = "amd64", config: ImageConfig | None = None, created_by: str = "topodra_cli.localcluster.images",
    docker_manifest: bool = False,
) -> bytes:
    """An OCI image layout (oci-layout, index.json, blobs/sha256/...) as one tar, naming the image `name`.

    `layer` is one uncompressed layer tar or a list of layers, bottom first; `config` (when given)
    replaces `entrypoint` and `cmd`. With `docker_manifest`, a docker-archive `manifest.json` names the
    same blobs, as `docker save` (25+) writes it: `docker load` reads that file (also with the classic image
    store), containerd's importer reads index.json when oci-layout is there.
    """
    layers = [Layer.of(layer)] if isinstance(layer, bytes) else list(layer)
    cfg = config or ImageConfig(entrypoint=entrypoint, cmd=cmd)
    config_doc: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "config": cfg.as_json(),
        "rootfs": {"type": "layers", "diff_ids": [_digest(la.tar) for la in layers]},
        "history": [{"created_by": created_by, "created": "1970-01-01T00:00:00Z"} for _ in layers],
        "created": "1970-01-01T00:00:00Z",
    }
    config_b = _json(config_doc)
    manifest_b = _json({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config_b), "size": len(config_b)},
        "layers": [{"mediaType": la.media_type, "digest": _digest(la.blob), "size": len(la.blob)} for la in layers],
    })
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index_b = _json({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": _digest(manifest_b),
            "size": len(manifest_b),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    })
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(path: str, data: bytes) -> None:
            tar.addfile(_tar_info(path, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))

        tar.addfile(_tar_info("blobs/", tarfile.DIRTYPE, 0o755))
        tar.addfile(_tar_info("blobs/sha256/", tarfile.DIRTYPE, 0o755))
        seen: set[str] = set()
        for blob in [la.blob for la in layers] + [config_b, manifest_b]:
            digest = _digest(blob).split(":", 1)[1]
            if digest not in seen:  # two equal layers are one blob
                seen.add(digest)
                add(f"blobs/sha256/{digest}", blob)
        add("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        add("index.json", index_b)
        if docker_manifest:
            def path(blob: bytes) -> str:
                return "blobs/sha256/" + _digest(blob).split(":", 1)[1]

            add("manifest.json", _json([{"Config": path(config_b), "RepoTags": [name],
                                         "Layers": [path(la.blob) for la in layers]}]))
    return out.getvalue()


def manifest_digest(tarball: Path) -> str:
    """The digest of the image's manifest (what `ctr images ls` and a registry show), read from index.json."""
    with tarfile.open(tarball) as t:
        f = t.extractfile("index.json")
        assert f is not None
        return str(json.loads(f.read())["manifests"][0]["digest"])


def _arch() -> str:
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def build_images(directory: Path, busybox: Path | None = None) -> list[Image]:
    """Write the busybox and pause image tarballs into `directory`."""
    bb = busybox or find_busybox()
    directory.mkdir(parents=True, exist_ok=True)
    layer = rootfs_layer(bb)
    arch = _arch()
    images = [
        Image(BUSYBOX_IMAGE, directory / "busybox.oci.tar"),
        Image(PAUSE_IMAGE, directory / "pause.oci.tar"),
    ]
    images[0].tarball.write_bytes(oci_archive(BUSYBOX_IMAGE, layer, cmd=("sh",), arch=arch))
    images[1].tarball.write_bytes(oci_archive(PAUSE_IMAGE, layer, entrypoint=("/bin/sh", "-c", PAUSE_SCRIPT),
                                              arch=arch))
    return images


def import_images(ctr: Path, address: str, images: Sequence[Image], namespace: str = "k8s.io") -> None:
    """`ctr images import` each tarball into containerd's CRI namespace."""
    if not ctr.exists() and shutil.which(str(ctr)) is None:
        raise ClusterError(f"ctr not found at {ctr}; run `make containerd` (hack/build-containerd.sh)")
    for img in images:
        argv = [str(ctr), "--address", address, "-n", namespace, "images", "import", "--all-platforms",
                str(img.tarball)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise ClusterError(f"importing image {img.name} ({img.tarball}) failed: {out.stderr.strip()[-1500:]}")
