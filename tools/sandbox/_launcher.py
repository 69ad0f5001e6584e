"""A tiny launcher run as ``python -I -S -c LAUNCHER_SOURCE CONFIG_JSON -- ARGV...``.

It runs in the child process between fork and the snippet: drops root to an unprivileged uid/gid (when
asked and when root), sets resource limits, then ``execv``s ARGV (rlimits survive exec). Doing this in a
separate interpreter instead of ``Popen(preexec_fn=...)`` keeps it safe when the host is multi-threaded.

CONFIG_JSON: ``{"uid": int|null, "gid": int|null, "rlimits": [[NAME, VALUE], ...], "nproc_extra": int|null}``.
``nproc_extra`` sets RLIMIT_NPROC to (processes the target uid already has) + nproc_extra, because
NPROC counts every process of that uid on the machine.
"""

from __future__ import annotations

LAUNCHER_SOURCE = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
argv = sys.argv[3:]
uid, gid = cfg.get("uid"), cfg.get("gid")
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
