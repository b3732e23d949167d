"""The supervisor :func:`~pydron.backend.launchers.ssh_transport.start_remote` runs with the
remote interpreter (``python -c <this source>``), to tie a remote process's life to the
SSH connection.

It reads a JSON header (``argv``, ``env``, ``cwd``, ``grace``, and ``n``: the size of the
child's stdin data) and then that data from its own stdin, starts the command in a new
session, and then waits for its own stdin to end: that happens when the SSH connection
drops (or the master closes the channel's write side), and then the child's whole
process group is ended -- TERM, a grace period, KILL. Without a pty, sshd sends no SIGHUP
on a drop, so this is what ties the remote process's life to the connection. Its exit
status is the child's (128+N if a signal N ended it).
"""
import json
import os
import signal
import subprocess
import sys
import threading


def _read():
    try:
        return os.read(0, 65536)
    except OSError:
        return b""


def _child_setup():
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def main():
    buf = b""
    while b"\n" not in buf:
        chunk = _read()
        if not chunk:
            os._exit(0)  # the master went away before sending the command
        buf += chunk
    line, data = buf.split(b"\n", 1)
    head = json.loads(line)
    while len(data) < head["n"]:
        chunk = _read()
        if not chunk:
            os._exit(0)
        data += chunk
    env = dict(os.environ)
    env.update(head["env"])
    try:
        child = subprocess.Popen(head["argv"], stdin=subprocess.PIPE, env=env,
                                 cwd=head["cwd"], start_new_session=True,
                                 preexec_fn=_child_setup if sys.platform.startswith("linux")
                                 else None)
    except OSError as exc:
        sys.stderr.write("pydron: cannot start %s: %s\n" % (head["argv"][0], exc))
        sys.stderr.flush()
        os._exit(127)

    def feed():
        try:
            if data:
                child.stdin.write(data)
            child.stdin.close()
        except OSError:
            pass
    threading.Thread(target=feed, daemon=True).start()
    stop = threading.Event()

    def watch():
        while _read():
            pass
        stop.set()
    threading.Thread(target=watch, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, lambda *a: stop.set())

    def group(sig):
        try:
            os.killpg(child.pid, sig)
        except OSError:
            pass
    while child.poll() is None:
        if stop.wait(0.1):
            group(signal.SIGTERM)
            try:
                child.wait(head["grace"])
            except subprocess.TimeoutExpired:
                pass
            break
    group(signal.SIGKILL)
    code = child.wait()
    # os._exit: the watcher thread may still sit in a read of stdin; nothing is left to flush.
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
