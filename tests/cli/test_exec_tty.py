"""``agentio exec -i -t`` driven through a pseudo-terminal, as a person at a terminal would."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time

from .conftest import TIMEOUT, cli, start_container


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Screen:
    """What the command wrote to the terminal, read from the pty master."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.text = b""

    def wait_for(self, wanted: bytes) -> None:
        """Read until ``wanted`` appeared (bounded by TIMEOUT)."""
        deadline = time.monotonic() + TIMEOUT
        while wanted not in self.text:
            left = deadline - time.monotonic()
            assert left > 0, f"{wanted!r} never appeared in {self.text!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: every slave end closed
                    chunk = b""
                assert chunk, f"terminal closed before {wanted!r}: {self.text!r}"
                self.text += chunk


def test_exec_tty_raw_mode_window_size_and_ctrl_c(address: str) -> None:
    start_container(address)
    master, slave = pty.openpty()
    _set_size(slave, 30, 100)
    script = ("trap 'stty size; echo resized' WINCH; trap 'echo interrupted; exit 42' INT; "
              "stty size; echo ready; read line; echo \"got:$line\"; "
              "while :; do sleep 0.05; done")
    child = subprocess.Popen(
        cli("--address", address, "--sandbox-id", "sb-cli", "exec", "-i", "-t", "c1", "--",
            "sh", "-c", script),
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    screen = Screen(master)
    try:
        # the guest terminal starts with our size
        screen.wait_for(b"ready")
        assert b"30 100" in screen.text
        # our terminal is raw while the command runs: no local echo, no line editing
        attrs = termios.tcgetattr(slave)
        assert not attrs[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
        # input reaches the guest (whose own terminal echoes it)
        os.write(master, b"hello\r")
        screen.wait_for(b"got:hello")
        # a window change becomes a resize of the guest terminal
        _set_size(slave, 40, 120)
        child.send_signal(signal.SIGWINCH)
        screen.wait_for(b"resized")
        assert b"40 120" in screen.text
        # Ctrl-C travels as the ^C byte and interrupts the guest process, not us
        os.write(master, b"\x03")
        screen.wait_for(b"interrupted")
        assert child.wait(timeout=TIMEOUT) == 42
        # the terminal is restored
        attrs = termios.tcgetattr(slave)
        assert attrs[3] & termios.ICANON and attrs[3] & termios.ECHO
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
        os.close(slave)


def test_exec_tty_without_a_local_terminal(address: str) -> None:
    start_container(address)
    done = subprocess.run(
        cli("--address", address, "--sandbox-id", "sb-cli", "exec", "-t", "c1", "--",
            "sh", "-c", "test -t 0 && echo on-a-tty; exit 5"),
        capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert done.returncode == 5
    assert done.stdout.replace(b"\r\n", b"\n") == b"on-a-tty\n"


def test_an_interactive_script_session_carries_on_after_a_failed_command(address: str) -> None:
    master, slave = pty.openpty()
    child = subprocess.Popen(
        cli("--address", address, "--sandbox-id", "sb-cli", "run-script", "-"),
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    screen = Screen(master)
    try:
        screen.wait_for(b"agentio> ")
        os.write(master, b"stats nosuch\n")
        screen.wait_for(b"agentio stats:")  # the error, then the next prompt
        os.write(master, b"check\n")
        screen.wait_for(b"status: serving")
        os.write(master, b"\x04")  # end of input ends the session
        assert child.wait(TIMEOUT) == 1  # the first failure's status
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
        os.close(slave)
