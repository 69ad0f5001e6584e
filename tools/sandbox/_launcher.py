"""A tiny launcher run as ``python -I -S -c LAUNCHER_SOURCE CONFIG_JSON -- ARGV...``.

It runs in the child process between fork and the snippet, in this order:

1. ``cgroup_procs`` (when given, as root): writes its own pid there, so it and everything it starts
   stays in the call's memory cgroup (an unprivileged process cannot move out).
2. ``private`` (when given, as root): unshares a mount and an IPC namespace (and a network namespace when
   ``netns`` is set), makes every mount private,
   and mounts a fresh size-capped tmpfs (``size`` bytes, mode 1777) over ``/tmp``, ``/var/tmp`` and
   every world-writable tmpfs mount point (``/dev/shm``, ``/run/lock``, ...), so nothing the snippet
   leaves there (files, SysV/POSIX shared memory) outlives the call or is seen by other calls. It then
   creates ``workdir`` in the new ``/tmp`` (owned by the sandbox uid, 0700), copies ``script_src`` (a
   root-only host file) to ``script_dst`` inside it with ``O_CREAT|O_EXCL|O_NOFOLLOW``, and changes
   into it. No sandbox process exists yet in these namespaces, so nothing can race these steps.
   ``netns`` without ``private`` (not root): unshares a user and a network namespace, or fails.
3. Drops root to ``uid``/``gid`` (when asked and when root), sets the rlimits, ``execv``s ARGV.

Doing this in a separate interpreter instead of ``Popen(preexec_fn=...)`` keeps it safe when the host is
multi-threaded. ``nproc_extra`` sets RLIMIT_NPROC to (processes the target uid already has) +
nproc_extra, because NPROC counts every process of that uid on the machine.

CONFIG_JSON: ``{"uid", "gid", "rlimits": [[NAME, VALUE], ...], "nproc_extra", "cgroup_procs",
"private": {"size", "workdir", "script_src", "script_dst"}, "netns", "nonce"}`` (all optional). A setup failure
exits 125 with ``sandbox launcher [NONCE]: ...`` on stderr (the snippet never sees the nonce, so it
cannot fake one).
"""

from __future__ import annotations

LAUNCHER_SOURCE = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
argv = sys.argv[3:]
uid, gid = cfg.get("uid"), cfg.get("gid")

def fail(msg):
    sys.stderr.write("sandbox launcher [%s]: %s\n" % (cfg.get("nonce", ""), msg))
    os._exit(125)

if cfg.get("cgroup_procs"):
    try:
        with open(cfg["cgroup_procs"], "w") as f:
            f.write(str(os.getpid()))
    except OSError as e:
        fail("cannot join the memory cgroup: %s" % e)

priv = cfg.get("private")
if priv:
    import ctypes
    src = os.open(priv["script_src"], os.O_RDONLY | os.O_NOFOLLOW)  # read before /tmp is replaced
    data = b""
    while True:
        chunk = os.read(src, 1 << 20)
        if not chunk:
            break
        data += chunk
    os.close(src)
    libc = ctypes.CDLL(None, use_errno=True)
    def check(rc, what):
        if rc != 0:
            fail("%s: %s" % (what, os.strerror(ctypes.get_errno())))
    netns = 0x40000000 if cfg.get("netns") else 0  # CLONE_NEWNET: no interface but a loopback that is down
    check(libc.unshare(0x00020000 | 0x08000000 | netns), "unshare(mount, ipc%s)" % (", net" if netns else ""))
    check(libc.mount(b"none", b"/", None, 16384 | 262144, None), "make mounts private")  # MS_REC | MS_PRIVATE
    targets = ["/tmp", "/var/tmp"]
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4].replace("\\040", " ")
            if parts[parts.index("-") + 1] == "tmpfs" and point not in targets:
                try:
                    if os.stat(point).st_mode & 0o002:
                        targets.append(point)
                except OSError:
                    pass
    opts = ("size=%d,mode=1777" % priv["size"]).encode()
    for t in targets:
        if os.path.isdir(t):
            check(libc.mount(b"tmpfs", t.encode(), b"tmpfs", 2 | 4, opts), "mount tmpfs on " + t)  # NOSUID|NODEV
    wd = priv["workdir"]
    os.mkdir(wd, 0o700)
    if uid is not None and os.geteuid() == 0:
        os.chown(wd, uid, gid if gid is not None else uid)
    dfd = os.open(wd, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    fd = os.open(priv["script_dst"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)
    os.fchdir(dfd)
    os.close(dfd)

elif cfg.get("netns"):  # not root: a user namespace of its own makes a network namespace possible
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000 | 0x40000000) != 0:  # CLONE_NEWUSER | CLONE_NEWNET
        fail("unshare(user, net): %s" % os.strerror(ctypes.get_errno()))

if os.geteuid() == 0 and uid is not None:
    os.setgroups([])
    os.setgid(gid if gid is not None else uid)
    os.setuid(uid)
for name, value in cfg.get("rlimits", []):
    resource.setrlimit(getattr(resource, name), (value, value))
extra = cfg.get("nproc_extra")
if extra is not None and os.geteuid() != 0:
    me = os.getuid()
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat("/proc/" + pid).st_uid == me:
                    n += 1
            except OSError:
                pass
    resource.setrlimit(resource.RLIMIT_NPROC, (n + extra, n + extra))
os.umask(0o077)
try:
    os.execv(argv[0], argv)
except OSError as e:
    sys.stderr.write("sandbox launcher: cannot execute %r: %s\n" % (argv[0], e))
    os._exit(127)
"""
