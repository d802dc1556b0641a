"""The agent's side of upgrader protocol v1, for Python 3.9 and later, standard library only.

    import upgrader_agent

    agent = upgrader_agent.connect()
    verify_myself()
    agent.ready()                  # a candidate now waits for go; an active agent is simply up
    agent.wait_for_go()
    agent.on_stop(finish_work)     # runs before `stopped` is sent; then the process exits
    answer = agent.request_upgrade("1.2.0")   # UpgradeAnswer(ok=False, reason=..., code=...) if refused

The upgrader talks to the agent over stdin and stdout, one JSON object per line (docs/protocol.md). A
thread reads stdin; everything the agent writes goes out whole, one line at a time. When stdin ends, the
upgrader is gone, and the agent exits (status 0), as an agent must.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass
from typing import IO, Callable, Dict, Mapping, Optional

__all__ = ["Agent", "UpgradeAnswer", "connect", "PROTOCOL_VERSION", "MAX_LINE_BYTES"]

PROTOCOL_VERSION = 1
"""The protocol version this library speaks (the upgrader sets UPGRADER_PROTOCOL to it)."""

MAX_LINE_BYTES = 64 * 1024
"""The longest line either side may send; a longer one is dropped whole, as the upgrader does."""

MAX_STATUS_CHARS = 1024
"""The upgrader keeps this much of a status message; status() sends no more."""

MODES = ("live", "sequential")


@dataclass(frozen=True)
class UpgradeAnswer:
    """The upgrader's answer to request_upgrade: ok once this agent is told to stop (its successor is
    ready), else the reason and, from upgraders that send one, a stable code to act on."""

    ok: bool
    reason: Optional[str] = None
    code: Optional[str] = None


class _Pending:
    def __init__(self, version: str) -> None:
        self.version = version
        self.done = threading.Event()
        self.answer: Optional[UpgradeAnswer] = None


class Agent:
    """One agent process's connection to its upgrader. Make one, with connect(), at start-up."""

    def __init__(
        self,
        stdin: Optional[IO[bytes]] = None,
        stdout: Optional[IO[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        exit: Optional[Callable[[int], None]] = None,
        on_end: Optional[Callable[[], None]] = None,
    ) -> None:
        environment = os.environ if env is None else env
        self.supervised: bool = environment.get("UPGRADER_PROTOCOL") == str(PROTOCOL_VERSION)
        """False when no upgrader started this process (it then behaves as an active agent)."""
        self.role: str = "candidate" if environment.get("UPGRADER_ROLE") == "candidate" else "active"
        self.version: Optional[str] = environment.get("UPGRADER_VERSION")
        self.root: Optional[str] = environment.get("UPGRADER_ROOT")
        self.from_version: Optional[str] = environment.get("UPGRADER_FROM_VERSION")
        self._stdin = stdin if stdin is not None else sys.stdin.buffer
        self._stdout = stdout if stdout is not None else sys.stdout
        # os._exit: the exit may come from the reader thread, where sys.exit would end that thread only.
        self._exit = exit if exit is not None else os._exit
        self._on_end = on_end if on_end is not None else (lambda: self._exit(0))
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._go = threading.Event()
        if self.role == "active":
            self._go.set()
        self._stopping = False
        self._stop_handler: Callable[[], None] = lambda: None
        self._pending: Optional[_Pending] = None
        self._reader = threading.Thread(target=self._read, name="upgrader-protocol", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ what an agent calls

    def ready(self) -> None:
        """Reports readiness. A candidate sends it once it has verified itself, and then does no work until go."""
        self._send({"type": "ready"})

    def wait_for_go(self, timeout: Optional[float] = None) -> bool:
        """Returns once this agent may work: at once for an active agent, on `go` for a candidate.
        False if `timeout` seconds passed first."""
        return self._go.wait(timeout)

    @property
    def is_active(self) -> bool:
        """True while this agent may do the work: told go (or active from the start), not told stop."""
        return self._go.is_set() and not self._stopping

    def on_stop(self, handler: Callable[[], None]) -> None:
        """Runs before `stopped` is sent, when the upgrader hands the work to a new version (or stops).
        Finish and release here; the process exits once `stopped` is written."""
        self._stop_handler = handler

    def request_upgrade(self, version: str, mode: str = "live", timeout: Optional[float] = None) -> UpgradeAnswer:
        """Asks the upgrader to hand off to `version` and waits for the answer: ok when the new version is
        ready and this agent is told to stop, or the refusal or failure (this agent carries on). One request
        at a time: another while one is pending is refused here.

        On ok the stop handler is about to run in the library's thread, after which the process exits: the
        caller must not end the main thread first (Python would end the process before `stopped` is sent)."""
        if not isinstance(version, str) or not version:
            raise ValueError(f"version must be a non-empty string, not {version!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        with self._state_lock:
            if self._pending is not None:
                return UpgradeAnswer(False, f"an upgrade to {self._pending.version} is already pending", "in-progress")
            pending = self._pending = _Pending(version)
        self._send({"type": "upgrade", "version": version, "mode": mode})
        if not pending.done.wait(timeout):
            # Given up on: a later request may be made (an answer to this one, if any, is then ignored).
            with self._state_lock:
                if self._pending is pending:
                    self._pending = None
            return UpgradeAnswer(False, f"no answer from the upgrader within {timeout} s", None)
        return pending.answer or UpgradeAnswer(False, "no answer", None)

    def status(self, message: str) -> None:
        """A short message that `upgrader status` shows as the agent's latest."""
        self._send({"type": "status", "message": str(message)[:MAX_STATUS_CHARS]})

    # ------------------------------------------------------------------ the protocol

    def _send(self, message: Dict[str, object]) -> None:
        # ASCII JSON: valid whatever the locale's encoding, and whatever a message holds.
        line = json.dumps(message, separators=(",", ":"), ensure_ascii=True) + "\n"
        with self._write_lock:
            self._stdout.write(line)
            self._stdout.flush()

    def _read(self) -> None:
        try:
            for line in _lines(self._stdin):
                message = _parse(line)
                if message is not None:
                    self._handle(message)
        finally:
            # Whatever ended the loop (stdin closed, a read error), the upgrader is gone for this agent.
            self._on_end()

    def _settle(self, answer: UpgradeAnswer) -> None:
        with self._state_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.answer = answer
            pending.done.set()

    def _handle(self, message: Dict[str, object]) -> None:
        kind = message["type"]
        if kind == "go":
            self._go.set()
        elif kind == "upgrade-failed":
            with self._state_lock:
                mine = self._pending is not None and self._pending.version == message.get("version")
            if mine:
                code = message.get("code")
                self._settle(UpgradeAnswer(False, str(message.get("reason")), code if isinstance(code, str) else None))
        elif kind == "stop" and not self._stopping:
            self._stopping = True
            self._settle(UpgradeAnswer(True))
            try:
                try:
                    self._stop_handler()
                except BaseException as error:  # even sys.exit() in the handler: `stopped` must still be sent
                    sys.stderr.write(f"stop handler failed: {error!r}\n")
                self._send({"type": "stopped"})
            except BaseException as error:  # the upgrader's end of the pipe is gone: nothing to tell it
                sys.stderr.write(f"could not send stopped: {error!r}\n")
            finally:
                self._exit(0)


def _lines(stream: IO[bytes]):
    """Yields each line of `stream`, decoded, without its newline; a line over MAX_LINE_BYTES is dropped whole.

    Reads the file descriptor itself, not Python's buffered reader: a thread blocked in the buffered reader
    holds its lock, and an agent that then calls sys.exit() would abort at interpreter shutdown."""
    fd = stream.fileno()
    pending = b""
    dropping = False
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        pending += chunk
        while True:
            newline = pending.find(b"\n")
            if newline < 0:
                if len(pending) > MAX_LINE_BYTES:
                    pending, dropping = b"", True
                break
            line, pending = pending[:newline], pending[newline + 1 :]
            if dropping or len(line) > MAX_LINE_BYTES:
                dropping = False
                continue
            try:
                yield line.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError:
                continue


_SHAPES = {
    "go": {},
    "stop": {},
    "upgrade-failed": {"version": str, "reason": str},
}


def _parse(line: str) -> Optional[Dict[str, object]]:
    """An upgrader message, or None for anything else (not JSON, an unknown type, a field of the wrong kind)."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str) or message["type"] not in _SHAPES:
        return None
    for field, kind in _SHAPES[message["type"]].items():
        if not isinstance(message.get(field), kind):
            return None
    return message


def connect(**options: object) -> Agent:
    """The agent's connection to its upgrader, over this process's stdin and stdout."""
    return Agent(**options)  # type: ignore[arg-type]
