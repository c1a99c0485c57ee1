#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal, types lines into it, and prints what the terminal
showed; exits with the command's status. For interactive (-t / -it) client tests.

    pty-run.py [--rows R --cols C] [--input LINE]... [--timeout S] -- CMD [ARGS...]

Each --input line is typed (with a newline) once the terminal has been quiet for a
moment, in order; after the last one the script waits for the command to exit.
"""
import argparse, fcntl, os, pty, select, struct, sys, termios, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", action="append", default=[])
    ap.add_argument("--rows", type=int, default=24)
    ap.add_argument("--cols", type=int, default=80)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", a.rows, a.cols, 0, 0))
    out = bytearray()
    pending = list(a.input)
    deadline = time.monotonic() + a.timeout
    last_output = time.monotonic()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
            last_output = time.monotonic()
        elif pending and time.monotonic() - last_output > 1.5:
            os.write(fd, pending.pop(0).encode() + b"\r")
            last_output = time.monotonic()
    else:
        os.kill(pid, 9)
        sys.stdout.write(out.decode(errors="replace"))
        sys.exit("pty-run: timed out")
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(out.decode(errors="replace"))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
