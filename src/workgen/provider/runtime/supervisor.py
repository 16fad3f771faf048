"""The supervisor that lives inside an activity's sandbox and spawns its commands.

This file runs *inside* the sandbox under the image's own ``python3`` (stdlib only, nothing of
the host's environment), started once per activity so that each command then costs about a
plain process spawn rather than a new set of namespaces. It is sent to the interpreter as
source text (``python3 -c``): nothing of the project is mounted into the sandbox.

Protocol on the supervisor's stdin/stdout (the host side is ``channel.py``):

* requests, one JSON object per line::

    {"op": "spawn", "id": 7, "argv": ["/bin/sh", "-c", "date"], "env": {...}, "cwd": "/golem/work",
     "stream": false}
    {"op": "kill", "id": 7, "sig": 9}
    {"op": "usage", "id": 0}

* replies, binary frames ``!BII`` (type, command id, payload length) then the payload: READY,
  FAILED (a spawn that did not happen: payload is the reason), STDOUT and STDERR (raw bytes),
  EXIT (JSON: return code, and a note when output was left unread), USAGE (JSON). A spawn that
  succeeds is not acknowledged: requests are handled in order, so a later kill finds it.

Output of a command not streamed (``"stream": false``) is held back until its exit or until
``FLUSH_AT`` bytes are waiting, so a short command costs the host one wake-up, not one per frame.

Output flows with back-pressure: when the host reads slowly the outgoing buffer fills, the
supervisor stops reading the commands' pipes, and the commands block on their writes.

The commands share the supervisor's user, so it keeps out of their reach by other means: it is
the PID namespace's init (bubblewrap's ``--as-pid-1``), which the kernel shields from every
signal sent from inside the namespace, SIGKILL and SIGSTOP included; and it makes itself
non-dumpable, so that without ``CAP_SYS_PTRACE`` no command can trace it or open its ``/proc``
files. Being init it also reaps every orphan, and its exit ends every process in the sandbox.
Deadlines never rely on it answering: the host kills the whole sandbox when it does not.
"""

SOURCE_MARKER = "workgen-supervisor"

# Everything below is executed by the sandbox's interpreter; keep it stdlib-only and free of
# syntax newer than Python 3.8.
SOURCE = r'''
import errno, json, os, resource, selectors, signal, struct, sys, time

READY, FAILED, STDOUT, STDERR, EXIT, USAGE = 1, 3, 4, 5, 6, 7
HEADER = struct.Struct("!BII")
CHUNK = 65536
HIGH_WATER = 1 << 20
FLUSH_AT = 1 << 16
# After a command exits, its output pipes normally close at once; a background process that
# inherited them may keep them open, and must not hold the command's result forever.
EOF_GRACE = 1.0

sel = selectors.DefaultSelector()
out = bytearray()
urgent = False
commands = {}
by_pid = {}
reading_paused = False
finished_cpu = 0.0


def send(kind, cid, payload=b"", now=True):
    global urgent
    out.extend(HEADER.pack(kind, cid, len(payload)))
    out.extend(payload)
    urgent = urgent or now


def send_json(kind, cid, obj):
    send(kind, cid, json.dumps(obj).encode())


class Command:
    def __init__(self, cid, pid, fds, stream):
        self.cid, self.pid, self.stream = cid, pid, stream
        self.fds = dict(fds)  # fd -> frame type
        self.status = None
        self.exited_at = None
        self.killed = False

    def close_fd(self, fd):
        if fd in self.fds:
            del self.fds[fd]
            if not reading_paused:
                sel.unregister(fd)
            os.close(fd)

    def maybe_finish(self, now):
        if self.status is None:
            return
        if self.killed and group_alive(self.pid):
            # A killed command is over only when its whole group is gone (and reaped), so the
            # next command finds the process slots free. Processes forked meanwhile get killed.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        note = None
        if self.fds and now - self.exited_at >= EOF_GRACE:
            note = "a background process kept the output open; output after exit not captured"
            for fd in list(self.fds):
                self.close_fd(fd)
        if not self.fds:
            send_json(EXIT, self.cid, {"code": self.status, "note": note})
            del commands[self.cid]


cwd_now = None
spawn_options = {}


def spawn(req):
    global cwd_now
    cid = req["id"]
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    try:
        argv = req["argv"]
        env = req.get("env") or {}
        cwd = req.get("cwd") or "/"
        if cwd != cwd_now:
            cwd_now = None  # unknown until chdir succeeds
            os.chdir(cwd)
            cwd_now = cwd
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, w_out, 1),
            (os.POSIX_SPAWN_DUP2, w_err, 2),
        ]
        spawner = os.posix_spawnp if "/" not in argv[0] else os.posix_spawn
        pid = spawner(argv[0], argv, env, file_actions=actions, setsid=True,
                      setsigdef=(signal.SIGPIPE, signal.SIGCHLD), **spawn_options)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        for fd in (r_out, w_out, r_err, w_err):
            os.close(fd)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        send(FAILED, cid, ("cannot start %r: %s" % (req.get("argv", ["?"])[0], reason)).encode())
        return
    os.close(w_out)
    os.close(w_err)
    for fd in (r_out, r_err):
        os.set_blocking(fd, False)
        if not reading_paused:
            sel.register(fd, selectors.EVENT_READ, ("pipe", cid))
    cmd = Command(cid, pid, {r_out: STDOUT, r_err: STDERR}, bool(req.get("stream")))
    commands[cid] = cmd
    by_pid[pid] = cmd


def group_alive(pgid):
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) == pgid:
                        return True
            except (OSError, IndexError, ValueError):
                continue
    return False


def kill(req):
    cmd = commands.get(req["id"])
    if cmd is None:
        return
    if int(req.get("sig", signal.SIGKILL)) == signal.SIGKILL:
        cmd.killed = True
    try:
        os.killpg(cmd.pid, int(req.get("sig", signal.SIGKILL)))
    except ProcessLookupError:
        pass


def cpu_seconds():
    # Live processes' own and reaped children's CPU time add up to everything this sandbox
    # has burnt: a process's c-times include all descendants it waited for.
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / tick


def reap(now):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        cmd = by_pid.pop(pid, None)
        if cmd is None:
            continue
        if os.WIFSIGNALED(status):
            cmd.status = -os.WTERMSIG(status)
        else:
            cmd.status = os.WEXITSTATUS(status)
        cmd.exited_at = now
        cmd.maybe_finish(now)


def set_reading(enabled):
    global reading_paused
    if enabled == (not reading_paused):
        return
    reading_paused = not enabled
    for cmd in commands.values():
        for fd in cmd.fds:
            if enabled:
                sel.register(fd, selectors.EVENT_READ, ("pipe", cmd.cid))
            else:
                sel.unregister(fd)


def apply_limits(limits):
    cpus = limits.pop("cpus", None)
    if cpus:
        # The activity gets the CPU threads its offer promised, and no more.
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[:max(1, int(cpus))])
    for name, value in limits.items():
        res = getattr(resource, "RLIMIT_" + name.upper())
        resource.setrlimit(res, (value, value))


def shield():
    # PR_SET_DUMPABLE = 4. Without ctypes (a minimal image) there is no way to ask; say so.
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(4, 0, 0, 0, 0) != 0:
            return "prctl(PR_SET_DUMPABLE) failed: errno %d" % ctypes.get_errno()
    except (ImportError, OSError, AttributeError) as exc:
        return "cannot make the supervisor non-dumpable: %s" % exc
    return None


def main():
    global urgent
    limits = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    # A request wakes the supervisor at once; were it a normal task, it would take the CPU from
    # the host process that wrote it, in the middle of its work (measured: a sixth of the
    # host's time went to such waits). A batch task never preempts on waking; the commands it
    # spawns get the normal policy back.
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        spawn_options["scheduler"] = (os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    shield_problem = shield()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    apply_limits(limits)
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    os.set_blocking(stdin, False)
    os.set_blocking(stdout, False)
    sel.register(stdin, selectors.EVENT_READ, ("in", 0))
    sel.register(wake_r, selectors.EVENT_READ, ("wake", 0))
    send_json(READY, 0, {"pid": os.getpid(), "init": os.getpid() == 1,
                         "shield": shield_problem})
    inbuf = b""
    writing = False
    reaping = True
    while True:
        if out and not writing and (urgent or len(out) >= FLUSH_AT):
            # Written at once: waiting for the selector to call the pipe writable costs a
            # round of system calls per frame. It is watched only while the host lags.
            try:
                del out[:os.write(stdout, out)]
            except BlockingIOError:
                pass
            except BrokenPipeError:
                return
            urgent = bool(out)
        want_write = bool(out) and (writing or urgent or len(out) >= FLUSH_AT)
        if want_write != writing:
            if want_write:
                sel.register(stdout, selectors.EVENT_WRITE, ("out", 0))
            else:
                sel.unregister(stdout)
            writing = want_write
        timeout = None
        waiting = any(c.status is not None for c in commands.values())
        if waiting:
            timeout = 0.01 if any(c.killed for c in commands.values()) else EOF_GRACE / 4
        for key, _ in sel.select(timeout):
            kind, cid = key.data
            if kind == "pipe":
                owner = commands.get(cid)
                if owner is None or key.fd not in owner.fds:
                    continue  # closed earlier in this round
                try:
                    data = os.read(key.fd, CHUNK)
                except BlockingIOError:
                    continue
                cmd = commands.get(cid)
                if cmd is None or key.fd not in cmd.fds:
                    continue
                if data:
                    send(cmd.fds[key.fd], cid, data, cmd.stream)
                else:
                    cmd.close_fd(key.fd)
                    cmd.maybe_finish(time.monotonic())
            elif kind == "out":
                try:
                    n = os.write(stdout, out)
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    return
                del out[:n]
                urgent = urgent and bool(out)
            elif kind == "wake":
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                reaping = True
            else:
                try:
                    data = os.read(stdin, CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    return
                inbuf += data
                *lines, inbuf = inbuf.split(b"\n")
                for line in lines:
                    req = json.loads(line)
                    op = req["op"]
                    if op == "spawn":
                        spawn(req)
                    elif op == "kill":
                        kill(req)
                    elif op == "usage":
                        send_json(USAGE, req["id"], {"cpu_sec": cpu_seconds()})
        if reaping or waiting:
            # Exits are learnt from SIGCHLD (the wake-up pipe); an exited command whose
            # output is still open is looked at again when its grace period may be over.
            now = time.monotonic()
            if reaping:
                reap(now)
                reaping = False
            for cmd in list(commands.values()):
                cmd.maybe_finish(now)
        set_reading(len(out) < HIGH_WATER)


main()
'''
