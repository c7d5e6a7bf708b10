"""The container image: built by deploy/build-image.sh (buildah, on a debootstrapped Debian base), then
its command run as a container would run it, against the fake upstream on loopback.

How the container is run here (docs/deploy.md): buildah's chroot isolation shares the host's network,
so the image's command is started on a free loopback port. `buildah run` does not pass SIGTERM on to
its command (buildah 1.28 kills it), so the test mounts the image's root filesystem (`buildah mount`)
and starts the image's CMD itself, as the image's USER, with its ENV and WORKDIR, in a private mount
namespace (`unshare --mount`) where the root filesystem is read-only (as deploy/k8s runs it), the
config folder is bind-mounted on /config, a data folder on /data and a tmpfs on /tmp, then `chroot`:
the gateway is then the test's own child, and SIGTERM reaches it as it would from a container engine. Needs root, buildah, unshare and chroot; skipped, with the reason, without.
Select it with `-m image`, leave it out with `-m "not image"`. The first build makes the Debian base
and downloads the wheels (a few minutes); later builds come from buildah's layer cache.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayProcess, test_config

pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/respan-gateway:test"
#: Measured 312 MB (uncompressed: the Debian base with python3 is 133 MB; of the venv's 179 MB the
#: tokenizer data of bpe-openai is 76 MB, botocore (bedrock) 32 MB and cryptography (vertex_ai) 16 MB);
#: docs/deploy.md states it. The bound leaves room for small growth.
MAX_IMAGE_MB = 340


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (buildah's chroot isolation, chroot, unshare --mount)"
    for tool in ("buildah", "unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install buildah debootstrap; .ci/run does it)"
    base = subprocess.run(["buildah", "inspect", "--type", "image", "localhost/respan-base-debian:bookworm"],
                          capture_output=True, timeout=60)
    if base.returncode != 0 and shutil.which("debootstrap") is None:
        return "`debootstrap` is not installed and the Debian base is not built yet (apt-get install debootstrap)"
    probe = subprocess.run(["buildah", "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"buildah cannot run here: {probe.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """Builds the image (cached after the first time); returns its OCI config (User, Env, Cmd...)."""
    reason = _why_not_runnable()
    if reason:
        pytest.skip(f"IMAGE TEST SKIPPED: {reason}")
    built = subprocess.run([str(ROOT / "deploy/build-image.sh")], cwd=ROOT, env={**os.environ, "IMAGE": IMAGE},
                           capture_output=True, text=True, timeout=1100)
    assert built.returncode == 0, f"deploy/build-image.sh failed:\n{built.stdout}\n{built.stderr[-4000:]}"
    assert f"{IMAGE} is " in built.stdout
    inspect = subprocess.run(["buildah", "inspect", "--type", "image", IMAGE], capture_output=True, text=True, check=True)
    return json.loads(inspect.stdout)["Docker"]["config"]


@dataclass
class Container:
    """A working container of the image, its root filesystem mounted at ``rootfs``."""

    name: str
    rootfs: Path


@pytest.fixture
def container(image: dict[str, Any]) -> Iterator[Container]:
    name = subprocess.run(["buildah", "from", "--pull-never", "--quiet", IMAGE],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        mount = subprocess.run(["buildah", "mount", name], capture_output=True, text=True, check=True)
        yield Container(name, Path(mount.stdout.strip()))
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def container_command(image: dict[str, Any], rootfs: Path, config_dir: Path, data_dir: Path, port: int) -> list[str]:
    """The image's CMD as its USER, with its ENV and WORKDIR, on /config and /data, on 127.0.0.1:port,
    its root filesystem read-only."""
    cmd = [*image["Cmd"], "--host", "127.0.0.1", "--port", str(port)]  # the last --host/--port wins
    mounts = " && ".join([
        # The root filesystem read-only, as deploy/k8s runs it (readOnlyRootFilesystem), /tmp a tmpfs.
        f"mount --bind {rootfs} {rootfs}", f"mount -o remount,bind,ro {rootfs}", f"mount -t tmpfs tmpfs {rootfs}/tmp",
        f"mount --bind {config_dir} {rootfs}/config", f"mount -o remount,bind,ro {rootfs}/config",
        f"mount --bind {data_dir} {rootfs}/data",
        f"mount -t proc proc {rootfs}/proc", f"mount --rbind /dev {rootfs}/dev",
    ])
    inside = ["env", "-i", *image["Env"], "env", "-C", image.get("WorkingDir") or "/", *cmd]
    # exec all the way down: the process the test signals is the gateway itself.
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh",
            "chroot", f"--userspec={image['User']}", str(rootfs), *inside]


def test_the_image_runs_as_a_non_root_user(image: dict[str, Any], container: Container) -> None:
    user = image["User"]
    assert user.split(":")[0] not in ("", "0", "root"), f"the image runs as {user!r}"
    uid = int(user.split(":")[0])
    passwd = (container.rootfs / "etc/passwd").read_text()
    assert any(line.split(":")[2] == str(uid) for line in passwd.splitlines()), "the image's user is not in /etc/passwd"
    # What buildah itself runs the image as (its USER applied by the engine, not by this test).
    ran = subprocess.run(["buildah", "run", "--isolation", "chroot", container.name, "--", "id", "-u"],
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == str(uid)


def test_the_image_is_small(container: Container) -> None:
    rootfs = container.rootfs
    du = subprocess.run(["du", "-sxb", str(rootfs)], capture_output=True, text=True, check=True)
    megabytes = int(du.stdout.split()[0]) / 1e6
    print(f"image root filesystem: {megabytes:.0f} MB")
    assert megabytes < MAX_IMAGE_MB, f"the image grew to {megabytes:.0f} MB (bound {MAX_IMAGE_MB} MB)"
    # The final stage has the venv but no installer and no compiler.
    assert (rootfs / "opt/venv/bin/respan-gateway").is_file()
    for tool in ("opt/venv/bin/pip", "usr/bin/gcc", "usr/bin/cc", "usr/bin/make"):
        assert not (rootfs / tool).exists(), f"/{tool} is in the image"


def test_serves_from_config_drains_a_stream_on_sigterm_and_flushes_its_log(
    image: dict[str, Any], container: Container, tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    config_dir.mkdir()
    data_dir.mkdir()
    uid, gid = (int(x) for x in image["User"].split(":"))
    os.chown(data_dir, uid, gid)  # as an operator prepares a volume (compose's named volumes are made so)
    # Relative, as in the default config: the image's WORKDIR / puts it in the /data volume.
    (config_dir / "gateway.toml").write_text(
        test_config(fake_upstream.url, '[database]\nurl = "sqlite:///data/respan.sqlite3"\n[logging]\nflush_interval = 30\n'))

    gateway = GatewayProcess(str(config_dir / "gateway.toml"))
    gateway.command = container_command(image, container.rootfs, config_dir, data_dir, gateway.port)
    gateway.start()
    try:
        assert httpx2.get(gateway.url + "/healthz", timeout=5).json() == {"status": "ok"}
        # The config is the one in /config: its key and its provider `fake` answer.
        models = httpx2.get(gateway.base_url + "models", headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=5)
        assert models.status_code == 200, models.text
        assert "gpt-test" in {m["id"] for m in models.json()["data"]}
        with open(f"/proc/{gateway.process.pid}/status") as status:
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(uid)}, f"the gateway runs as uid {uids}"

        # Respan's extra_headers reach the upstream: the fake streams 8 chunks, 150 ms apart.
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "extra_headers": {"x-fake-scenario": "slow-chunks-150,chunks-8"}}
        headers = {"authorization": f"Bearer {TEST_KEY}"}
        code: list[int] = []
        with httpx2.stream("POST", gateway.base_url + "chat/completions", json=body, headers=headers, timeout=30) as r:
            assert r.status_code == 200
            log_id = r.headers["x-respan-log-id"]
            lines = r.iter_lines()
            events = [next(line for line in lines if line.startswith("data: "))]
            # A long flush interval: only the drain on SIGTERM writes the record before the exit.
            stopper = threading.Thread(target=lambda: code.append(gateway.terminate(timeout=60)))
            stopper.start()
            events += [line for line in lines if line.startswith("data: ")]
        stopper.join(70)
    finally:
        gateway.stop()
    assert code == [0], gateway.output
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop", "the stream was cut by the shutdown"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]).count(" ") == 7

    database = data_dir / "respan.sqlite3"
    assert database.is_file(), f"no database in the data volume: {sorted(p.name for p in data_dir.rglob('*'))}"
    assert database.stat().st_uid == uid
    conn = sqlite3.connect(database)
    try:
        rows = conn.execute("SELECT unique_id, status_code, stream FROM request_logs").fetchall()
    finally:
        conn.close()
    assert (log_id, 200, 1) in rows, rows
