"""A clean Debian 12 root to install the .deb into, as a user's machine would be.

The minbase root is made once per machine with debootstrap and kept outside the clone
(CONFAB_TEST_CACHE, default /var/cache/confab-test), with the .debs apt downloads into it
(apt-archives/, bind-mounted into every root). Each test run works on a fresh copy.

Every command in a root runs in a private mount namespace (unshare --mount, propagation
private): /proc, /sys, /dev, /dev/shm, the apt cache and /tmp/.X11-unix are mounted there
and nowhere else, so they vanish with the last process in the root, even one killed with
SIGKILL. The copy is a tmpfs mounted for the run: `Root.close()` kills every process whose
root is the copy, unmounts it (umount -R), checks that the host sees no mount left under it,
and removes the empty mount point.
"""

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(os.environ.get("CONFAB_TEST_CACHE", "/var/cache/confab-test"))
BASE = CACHE / "bookworm-minbase"
ARCHIVES = CACHE / "apt-archives"
RUNS = CACHE / "runs"
MIRROR = "http://deb.debian.org/debian"
READY = ".confab-ready"          # in BASE: debootstrap finished and the root was set up
LISTS_FRESH_S = 12 * 3600        # apt lists older than this are updated first

# What a Debian 12 installer leaves in sources.list: the release, its updates and security
# (WebKitGTK, for one, is only current through bookworm-security).
SOURCES = f"""\
deb {MIRROR} bookworm main
deb {MIRROR} bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
"""


class RootError(AssertionError):
    pass


def run(cmd, log=None, timeout=1800, **kw):
    """Runs cmd; on failure raises with the end of its output."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, **kw)
    if log:
        Path(log).write_text(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise RootError(f"{shlex.join(map(str, cmd))} failed ({proc.returncode}):\n{tail}")
    return proc.stdout


@contextmanager
def _locked():
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def namespace_cmd(root, argv, env=None, display_dir=False):
    """argv run as root inside `root`, with its mounts in a private mount namespace."""
    r = shlex.quote(str(root))
    mounts = [
        f"mount -t proc proc {r}/proc",
        f"mount -t sysfs sysfs {r}/sys",
        f"mount --bind /dev {r}/dev",
        f"mount -t tmpfs -o mode=1777,nosuid,nodev shm {r}/dev/shm",
        f"mount --bind {shlex.quote(str(ARCHIVES))} {r}/var/cache/apt/archives",
    ]
    if display_dir:
        mounts += [f"mkdir -p {r}/tmp/.X11-unix", f"mount --bind /tmp/.X11-unix {r}/tmp/.X11-unix"]
    envs = [f"{k}={v}" for k, v in (env or {}).items()]
    inner = " && ".join(mounts) + " && exec chroot " + r + " /usr/bin/env -i " + shlex.join(
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *envs, *map(str, argv)])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-euc", inner]


def _prepare(root):
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")


def ensure_base(log_dir, timing):
    """The cached minbase root, made (debootstrap) or refreshed (apt-get update) if needed."""
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    with _locked():
        if not (BASE / READY).exists():
            if not shutil.which("debootstrap"):
                raise RootError("debootstrap is missing: run scripts/bootstrap")
            tmp = BASE.with_name(BASE.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            if BASE.exists():
                shutil.rmtree(BASE)
            t = time.monotonic()
            run(["debootstrap", "--variant=minbase", "bookworm", str(tmp), MIRROR],
                log=log_dir / "debootstrap.log")
            for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            (tmp / "etc/apt/sources.list").write_text(SOURCES)
            # Like any chroot: services that packages install are not started in it.
            rc = tmp / "usr/sbin/policy-rc.d"
            rc.write_text("#!/bin/sh\nexit 101\n")
            rc.chmod(0o755)
            # A throwaway root: dpkg need not fsync every file it unpacks (much faster).
            (tmp / "etc/dpkg/dpkg.cfg.d/unsafe-io").write_text("force-unsafe-io\n")
            (tmp / READY).write_text("")
            tmp.rename(BASE)
            timing("debootstrap (first run on this machine)", time.monotonic() - t)
        stamp = BASE / ".confab-apt-updated"
        if not stamp.exists() or time.time() - stamp.stat().st_mtime > LISTS_FRESH_S:
            t = time.monotonic()
            _prepare(BASE)
            run(namespace_cmd(BASE, ["apt-get", "update", "-q"]), log=log_dir / "apt-update.log")
            stamp.write_text("")
            timing("apt-get update of the cached root", time.monotonic() - t)


class Root:
    """A fresh copy of the cached root for one test."""

    def __init__(self, log_dir, path=None):
        RUNS.mkdir(parents=True, exist_ok=True)
        self.path = path or RUNS / f"run-{os.getpid()}-{time.monotonic_ns()}"
        self.log_dir = log_dir
        if path:
            return
        self._sweep()
        # On a tmpfs of its own: quick to fill, and gone at once with one umount.
        self.path.mkdir()
        run(["mount", "-t", "tmpfs", "-o", "size=6g,mode=755", "confab-test-root", str(self.path)])
        try:
            run(["cp", "-a", f"{BASE}/.", str(self.path)])
            _prepare(self.path)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _sweep():
        """Removes the roots of earlier runs that were killed before their clean-up."""
        for old in RUNS.glob("run-*"):
            pid = old.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                Root(None, path=old).close()

    def cmd(self, argv, env=None, display_dir=False):
        return namespace_cmd(self.path, argv, env, display_dir)

    def run(self, argv, env=None, log=None, timeout=1800):
        return run(self.cmd(argv, env), log=log, timeout=timeout)

    def processes(self):
        """Pids of every process whose root directory is this root."""
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.readlink(p / "root") == str(self.path):
                        pids.append(int(p.name))
                except OSError:
                    pass
        return pids

    def host_mounts(self):
        prefix = str(self.path) + "/"
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        return [m for m in points if m == str(self.path) or m.startswith(prefix)]

    def close(self):
        for _ in range(3):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        if self.host_mounts():
            subprocess.run(["umount", "-R", str(self.path)], check=False)
        left = self.host_mounts()
        if left:
            raise RootError(f"mounts left under {self.path}: {left}")
        # Only the empty mount point is left (rmdir never deletes through a mount).
        self.path.rmdir()
        if self.processes():
            raise RootError(f"processes left in the removed root {self.path}: {self.processes()}")
