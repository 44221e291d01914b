"""Build the topodra container image without a container engine (`make image`).

The image is three layers, bottom first, each a reproducible tar (topodra_cli.imaging.layers):
  base  the Debian 12 packages pinned in hack/image/debian.lock (Python 3.11, the shared libraries it and
        the wheels load, a static busybox for a shell), the users root (0) and nonroot (65532);
  deps  the wheels pinned with hashes in hack/image/requirements.lock, in /usr/local/lib/python3.11/dist-packages;
  app   topodra's own packages and the `topodra` command.
Python files are byte-compiled by the image's own interpreter with unchecked-hash pycs (no mtimes inside,
and nothing to rewrite at start). Every ELF file's shared libraries are resolved inside the image and the
image's Python imports the runtime modules before anything is written. The output is an OCI image layout
tarball named `ghcr.io/topodra/topodra:<version>`, importable with `ctr images import`; the same inputs
give the same digest.

    python -m topodra_cli.imagebuild [build] [--out DIR] [--no-load]
    python -m topodra_cli.imagebuild binary NAME BINARY [--out DIR]
    python -m topodra_cli.imagebuild rootfs DIR          (the Dockerfile's build stage)
    python -m topodra_cli.imagebuild lock-debian | lock-requirements
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from topodra_cli import __version__
from topodra_cli.imaging import debs, elf, layers, wheels
from topodra_cli.localcluster.binaries import K8S_VERSION, bin_dir, cache_root
from topodra_cli.localcluster.images import (
    Image,
    ImageConfig,
    Layer,
    _applets,
    _arch,
    _is_static,
    import_images,
    manifest_digest,
    oci_archive,
)
from topodra_cli.localcluster.processes import ClusterError

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack" / "image"
DEBIAN_IN = HACK / "debian.in"
DEBIAN_LOCK = HACK / "debian.lock"
REQUIREMENTS_LOCK = HACK / "requirements.lock"
IMAGE_REPO = "ghcr.io/topodra/topodra"
DEBIAN_RELEASE = "bookworm"  # the release debian.lock pins from; the Dockerfile's build stage uses the same

NONROOT_UID = 65532
ENTRYPOINT = ("topodra",)
PY = "python3.11"
SITE = f"usr/local/lib/{PY}/dist-packages"  # on Debian Python's default sys.path
ENV = (
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",  # the root filesystem may be read-only; the pycs are already there
    "PYTHONUNBUFFERED=1",  # logs reach the kubelet as they are written
    "LANG=C.UTF-8",
)
PASSWD = f"root:x:0:0:root:/root:/bin/sh\nnonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:/bin/false\n"
GROUP = f"root:x:0:\nnonroot:x:{NONROOT_UID}:\n"
# Stdlib extensions whose libraries the image leaves out on purpose (curses, readline, dbm, NIS, sqlite,
# crypt(3)), and CPython's own test modules: dropped, so that every ELF file left can load.
DROP_EXTENSIONS = ("_crypt", "_curses", "_curses_panel", "_dbm", "_sqlite3", "nis", "readline", "_ctypes_test",
                   "_testbuffer", "_testcapi", "_testclinic", "_testimportmultiple", "_testinternalcapi",
                   "_testmultiphase", "_xxsubinterpreters", "_xxtestfuzz", "xxlimited", "xxlimited_35")
# Trimmed from the Debian packages: manuals and packaging metadata, CPython's test support and ensurepip
# (no pip in the image), glibc's iconv modules (nothing in the image calls iconv; 8 MB).
PRUNE = ("usr/share/man", "usr/share/lintian", "usr/share/gdb", "usr/share/gcc", "usr/share/info",
         "usr/share/bug", f"usr/lib/{PY}/test", f"usr/lib/{PY}/ensurepip", "usr/lib/x86_64-linux-gnu/gconv",
         "usr/lib/aarch64-linux-gnu/gconv")
# Trimmed from the wheels: the kubernetes client's asyncio copy (68 MB of generated code; topodra's asyncio
# code talks to the API through kubeaccess and aiohttp, and `import kubernetes` does not load it).
PRUNE_SITE = ("kubernetes/aio",)
# busybox applets that would be a package manager in the image.
NO_APPLETS = {"dpkg", "dpkg-deb", "rpm", "rpm2cpio"}
TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
LOADERS = {"amd64": "lib64/ld-linux-x86-64.so.2", "arm64": "lib/ld-linux-aarch64.so.1"}
# Package data shipped next to the code (pyproject's [tool.setuptools.package-data]).
SOURCE_SUFFIXES = (".py", ".proto", ".c", ".yaml")
SMOKE_IMPORTS = "grpc, orjson, kubernetes, structlog, prometheus_client, aiohttp, yaml, cryptography, pynvml"


def default_out() -> Path:
    """Where `make image` writes: ~/.cache/topodra/image (or under $TOPODRA_CACHE, like the other builds)."""
    return cache_root() / "image"


@dataclass(frozen=True)
class BuildResult:
    image: Image
    digest: str  # manifest digest
    compressed_bytes: int  # sum of the layer blobs as shipped
    uncompressed_bytes: int  # sum of the layer tars


def image_name(version: str = __version__) -> str:
    return f"{IMAGE_REPO}:{version}"


def _run(argv: Sequence[str], what: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if out.returncode != 0:
        raise ClusterError(f"{what} failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-3000:]}")
    return out.stdout


# ---- base layer ------------------------------------------------------------------------------------------


def assemble_base(root: Path, cache: Path, arch: str) -> None:
    """Unpack the locked Debian packages into `root`, trim them and add users, a shell and `python3`."""
    pins = debs.read_lock(DEBIAN_LOCK)
    wrong = [p.name for p in pins if p.arch not in (arch, "all")]
    if wrong:
        raise ClusterError(f"{DEBIAN_LOCK} is for another architecture than {arch} ({', '.join(wrong)})")
    for pin in pins:
        debs.extract(debs.fetch(pin, cache), root)
    for rel in PRUNE:
        shutil.rmtree(root / rel, ignore_errors=True)
    _prune_docs(root / "usr/share/doc")
    dynload = root / f"usr/lib/{PY}/lib-dynload"
    for so in dynload.glob("*.so"):
        if so.name.split(".", 1)[0] in DROP_EXTENSIONS:
            so.unlink()
    (root / "usr/bin/python3").symlink_to(PY)
    busybox = root / "bin/busybox"
    for applet in _applets(busybox):
        link = root / "bin" / applet
        if applet not in NO_APPLETS and applet != "busybox" and not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    etc = root / "etc"
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    for d in ("tmp", "var/tmp", "root", "home/nonroot", "proc", "sys", "dev", "run", "usr/local/bin", SITE):
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "var/tmp"):
        (root / d).chmod(0o1777)


def _prune_docs(doc: Path) -> None:
    """Keep each package's copyright file (the licences travel with the binaries), drop the rest."""
    if not doc.is_dir():
        return
    for pkg in doc.iterdir():
        if pkg.is_symlink() and not pkg.exists():  # points at a package the image does not have
            pkg.unlink()
        elif pkg.is_dir() and not pkg.is_symlink():
            for item in pkg.iterdir():
                if item.name != "copyright":
                    shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


# ---- app layer -------------------------------------------------------------------------------------------


def _packages(source: Path) -> list[str]:
    """Top-level packages pyproject includes ([tool.setuptools.packages.find] include patterns)."""
    doc = tomllib.loads((source / "pyproject.toml").read_text())
    patterns = doc["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(p.name for p in source.iterdir()
                  if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns))


def copy_sources(source: Path, dest: Path) -> None:
    """pyproject.toml and the packages' files (code and package data) of `source`, as the image takes them."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "pyproject.toml", dest / "pyproject.toml")
    _copy_package_files(source, dest)


def _copy_package_files(source: Path, dest: Path) -> None:
    """Every package's source and data files under `source`, at the same relative paths under `dest`."""
    for pkg in _packages(source):
        for dirpath, dirnames, filenames in os.walk(source / pkg):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in filenames:
                if name.endswith(SOURCE_SUFFIXES):
                    src = Path(dirpath) / name
                    dst = dest / src.relative_to(source)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)


def assemble_app(root: Path, version: str, source: Path = REPO) -> None:
    """topodra's packages into site-packages, its dist-info and the `topodra` command (what pip would write)."""
    site = root / SITE
    _copy_package_files(source, site)
    info = site / f"topodra-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: topodra\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[console_scripts]\ntopodra = topodra_cli.main:main\n")
    (info / "INSTALLER").write_text("topodra-imagebuild\n")
    script = root / "usr/local/bin/topodra"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!/usr/bin/{PY}\nimport sys\n\nfrom topodra_cli.main import main\n\nsys.exit(main())\n")
    script.chmod(0o755)


# ---- running the image's own Python on this host ---------------------------------------------------------


def image_python(base: Path, arch: str, *args: str, pythonpath: Sequence[Path] = ()) -> str:
    """Run the image's interpreter through the image's own loader and libraries (no chroot, no root needed)."""
    if arch != _arch():
        raise ClusterError(f"building a {arch} image needs a {arch} host (the image's Python runs here)")
    triplet = TRIPLETS[arch]
    argv = [str(base / LOADERS[arch]), "--library-path", f"{base}/lib/{triplet}:{base}/usr/lib/{triplet}",
            str(base / "usr/bin" / PY), "-s", *args]
    env = {"PYTHONHOME": str(base / "usr"), "PYTHONPATH": os.pathsep.join(map(str, pythonpath)),
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
    return _run(argv, f"the image's python {' '.join(args)[:80]}", env=env)


def compile_tree(base: Path, arch: str, tree: Path, in_image: str) -> None:
    """Byte-compile `tree` (which sits at `in_image` in the image) with unchecked-hash pycs."""
    if not tree.is_dir():
        return
    image_python(base, arch, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                 "-d", in_image, str(tree))


# ---- checks ----------------------------------------------------------------------------------------------


def check_libraries(roots: Sequence[Path]) -> None:
    """Every ELF file of every layer finds its shared libraries in the image."""
    missing = elf.unresolved(roots)
    if missing:
        lines = [f"  {path}: {', '.join(libs)}" for path, libs in sorted(missing.items())]
        raise ClusterError("the image lacks shared libraries (add their Debian packages to hack/image/debian.in "
                           "and lock again):\n" + "\n".join(lines))


def check_forbidden(roots: Sequence[Path]) -> None:
    """No compiler, pip or package manager in the image."""
    bad = []
    for r in roots:
        for pattern in ("usr/bin/gcc*", "usr/bin/cc", "usr/bin/apt*", "usr/bin/dpkg*", "bin/dpkg*", "usr/bin/pip*",
                        f"{SITE}/pip", f"{SITE}/setuptools", "usr/lib/python3/dist-packages/pip"):
            bad += [str(p.relative_to(r)) for p in r.glob(pattern)]
    if bad:
        raise ClusterError(f"the image must not contain {', '.join(sorted(bad))}")


# ---- the image -------------------------------------------------------------------------------------------


def image_config(version: str) -> ImageConfig:
    return ImageConfig(
        entrypoint=ENTRYPOINT, env=ENV, user="0", workdir="/",
        labels={"org.opencontainers.image.title": "topodra", "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "Apache-2.0",
                "org.opencontainers.image.description": "topodra DRA driver and scheduler extender; Python 3.11 "
                f"and libraries from Debian 12 ({DEBIAN_RELEASE}) packages"},
    )


OWNERS = {"root": 0, "home/nonroot": NONROOT_UID}  # owned dirs are private (0700)


def assemble(work: Path, *, version: str = __version__, cache: Path | None = None,
             source: Path = REPO) -> tuple[Path, Path, Path]:
    """The three layers' trees (base, deps, app) under `work`, byte-compiled and checked."""
    arch = _arch()
    base, deps, app = (work / n for n in ("base", "deps", "app"))
    assemble_base(base, cache or default_out() / "debs", arch)
    wheels.install(REQUIREMENTS_LOCK, deps / SITE, arch)
    for rel in PRUNE_SITE:
        shutil.rmtree(deps / SITE / rel, ignore_errors=True)
    assemble_app(app, version, source)
    compile_tree(base, arch, base / f"usr/lib/{PY}", f"/usr/lib/{PY}")
    compile_tree(base, arch, deps / SITE, f"/{SITE}")
    compile_tree(base, arch, app / SITE, f"/{SITE}")
    check_libraries((base, deps, app))
    check_forbidden((base, deps, app))
    paths = (deps / SITE, app / SITE)
    image_python(base, arch, "-c", f"import {SMOKE_IMPORTS}", pythonpath=paths)
    got = image_python(base, arch, "-m", "topodra_cli.main", "version", pythonpath=paths)
    if version not in got:
        raise ClusterError(f"`topodra version` in the image printed {got!r}, expected {version}")
    return base, deps, app


def build(out_dir: Path | None = None, *, version: str = __version__, cache: Path | None = None,
          compress: bool = True, source: Path = REPO) -> BuildResult:
    """Assemble, check and write `topodra-<version>.oci.tar` into `out_dir`; topodra's code comes from `source`."""
    out_dir = out_dir or default_out()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="topodra-image-") as tmp:
        trees = assemble(Path(tmp), version=version, cache=cache, source=source)
        tars = [layers.tar_tree(d, OWNERS) for d in trees]
    built = [Layer.of(t, compress=compress) for t in tars]
    name = image_name(version)
    image = Image(name, out_dir / f"topodra-{version}.oci.tar")
    _write(image.tarball, oci_archive(name, built, arch=_arch(), config=image_config(version),
                                      created_by="topodra_cli.imagebuild", docker_manifest=True))
    return BuildResult(image, manifest_digest(image.tarball), sum(len(la.blob) for la in built),
                       sum(len(t) for t in tars))


def write_rootfs(dest: Path, *, cache: Path | None = None, source: Path = REPO) -> None:
    """The image's files merged into one directory `dest` (the Dockerfile's build stage copies it to scratch)."""
    with tempfile.TemporaryDirectory(prefix="topodra-rootfs-") as tmp:
        for tree in assemble(Path(tmp), cache=cache, source=source):
            shutil.copytree(tree, dest, symlinks=True, dirs_exist_ok=True)
    for rel, uid in OWNERS.items():
        os.chown(dest / rel, uid, uid)
        (dest / rel).chmod(0o700)


def build_topodra_image(out_dir: Path) -> Image:
    """The topodra image (see the module docstring), written into `out_dir`."""
    return build(out_dir).image


def build_binary_image(name: str, binary: Path, out_dir: Path) -> Image:
    """A one-binary image (a static Go binary such as kube-scheduler) at /usr/local/bin/<name of the binary>.

    The entrypoint is the binary, so both `command: [kube-scheduler, ...]` and `args:` alone work.
    """
    if not binary.is_file() or not _is_static(binary):
        raise ClusterError(f"{binary} is not a statically linked 64-bit ELF; a one-binary image cannot run it")
    tool = binary.name
    with tempfile.TemporaryDirectory(prefix="topodra-binimage-") as tmp:
        root = Path(tmp)
        (root / "usr/local/bin").mkdir(parents=True)
        shutil.copyfile(binary, root / "usr/local/bin" / tool)
        (root / "usr/local/bin" / tool).chmod(0o755)
        (root / "etc").mkdir()
        (root / "etc/passwd").write_text(PASSWD)
        (root / "etc/group").write_text(GROUP)
        for d in ("tmp", "home/nonroot", "root"):
            (root / d).mkdir(parents=True)
        (root / "tmp").chmod(0o1777)
        tar = layers.tar_tree(root, OWNERS)
    last = name.rsplit("/", 1)[-1]
    repo, _, tag = last.partition(":")
    image = Image(name, out_dir / f"{repo}-{tag or 'latest'}.oci.tar")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = ImageConfig(entrypoint=(f"/usr/local/bin/{tool}",), env=("PATH=/usr/local/bin:/bin",), user="0")
    _write(image.tarball, oci_archive(name, [Layer.of(tar, compress=True)], arch=_arch(), config=config,
                                      created_by="topodra_cli.imagebuild", docker_manifest=True))
    return image


def _write(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    part.replace(path)


# ---- loading into the local cluster's real nodes ---------------------------------------------------------


def running_node_sockets(cluster_dir: Path | None = None) -> list[tuple[str, Path]]:
    """(node name, containerd socket) of each real node of the local cluster whose containerd is serving."""
    from topodra_cli.localcluster.cluster import default_dir
    from topodra_cli.localcluster.containerd import Containerd
    from topodra_cli.localcluster.nodestate import load_state

    nodes = (cluster_dir or default_dir()) / "nodes"
    out = []
    for d in sorted(nodes.iterdir()) if nodes.is_dir() else ():
        st = load_state(d)
        if st is None:
            continue
        sock = Containerd(d, st.containerd_version).socket
        if sock.is_socket():
            out.append((st.name, sock))
    return out


def load_into_nodes(images: Sequence[Image], cluster_dir: Path | None = None) -> list[str]:
    """Import `images` into every running real node's containerd; the names of those nodes."""
    from topodra_cli.localcluster.cluster import default_dir
    from topodra_cli.localcluster.containerd import Containerd
    from topodra_cli.localcluster.nodestate import load_state

    loaded = []
    nodes = (cluster_dir or default_dir()) / "nodes"
    for name, sock in running_node_sockets(cluster_dir):
        st = load_state(nodes / name)
        version = st.containerd_version if st else ""
        import_images(Containerd(nodes / name, version).bin_dir / "ctr", str(sock), images)
        loaded.append(name)
    return loaded


# ---- command line ----------------------------------------------------------------------------------------


def scheduler_image_name(version: str) -> str:
    return f"registry.k8s.io/kube-scheduler:{version}"


def _cached_scheduler() -> tuple[str, Path] | None:
    """The pinned kube-scheduler that `make k8s` built, when it is there: (image name, binary)."""
    binary = bin_dir(K8S_VERSION) / "kube-scheduler"
    return (scheduler_image_name(K8S_VERSION), binary) if binary.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m topodra_cli.imagebuild", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("build", help="build the topodra image (the default), and kube-scheduler's if it is built")
    b.add_argument("--out", type=Path, default=default_out())
    b.add_argument("--no-load", action="store_true", help="do not import the images into running real nodes")
    b.add_argument("--no-scheduler", action="store_true",
                   help="skip the one-binary kube-scheduler image (built from `make k8s`'s binary when present)")
    bi = sub.add_parser("binary", help="a one-binary image from a static binary, e.g. kube-scheduler")
    bi.add_argument("name", help="image name, e.g. registry.k8s.io/kube-scheduler:v1.37.2")
    bi.add_argument("binary", type=Path)
    bi.add_argument("--out", type=Path, default=default_out())
    bi.add_argument("--no-load", action="store_true")
    rf = sub.add_parser("rootfs", help="the image's files into a directory (for the Dockerfile)")
    rf.add_argument("dest", type=Path)
    sub.add_parser("lock-debian", help="pin hack/image/debian.in to apt's candidates (after apt-get update)")
    sub.add_parser("lock-requirements", help="pin pyproject's runtime dependencies with hashes")
    args = ap.parse_args(argv)
    cmd = args.cmd or "build"
    try:
        if cmd == "lock-debian":
            debs.write_lock(DEBIAN_LOCK, debs.lock_packages(debs.read_names(DEBIAN_IN)))
            print(f"wrote {DEBIAN_LOCK}")
            return 0
        if cmd == "lock-requirements":
            wheels.lock(REPO / "pyproject.toml", REQUIREMENTS_LOCK)
            print(f"wrote {REQUIREMENTS_LOCK}")
            return 0
        if cmd == "rootfs":
            write_rootfs(args.dest)
            print(f"wrote {args.dest}")
            return 0
        images: list[Image] = []
        if cmd == "binary":
            images.append(build_binary_image(args.name, args.binary, args.out))
        else:
            out = getattr(args, "out", None) or default_out()
            res = build(out)
            images.append(res.image)
            print(f"layers: {res.compressed_bytes / 1e6:.1f} MB compressed, {res.uncompressed_bytes / 1e6:.1f} MB "
                  "uncompressed")
            sched = None if getattr(args, "no_scheduler", False) else _cached_scheduler()
            if sched is not None:
                images.append(build_binary_image(sched[0], sched[1], out))
        for image in images:
            print(f"{image.name} {image.tarball} {manifest_digest(image.tarball)}")
        if not getattr(args, "no_load", False):
            for node in load_into_nodes(images):
                print(f"imported into node {node}")
    except ClusterError as e:
        print(f"imagebuild: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
