#!/usr/bin/env python3
"""The Python example agent: visible periodic work, and the same verification switches as the Node one.

Work: every EXAMPLE_TICK_MS (default 100) while it is the active agent, it appends
"<epoch ms> <version> <pid> tick <n>" to <root>/work.log.
Verification: its version directory may hold example.json: {"verify": "fail", "reason": "..."} makes it
refuse to start (a broken release), {"crashAfterGoMs": 300} makes it die soon after taking over.
"""
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import upgrader_agent  # noqa: E402  (the library beside this directory, or an installed one)


def behaviour() -> dict:
    try:
        with open("example.json", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def main() -> None:
    agent = upgrader_agent.connect()
    version = agent.version or "unversioned"
    root = agent.root or os.getcwd()
    tick_s = int(os.environ.get("EXAMPLE_TICK_MS", "100")) / 1000

    def say(text: str) -> None:
        sys.stderr.write(f"[python example-agent {version} pid {os.getpid()}] {text}\n")
        sys.stderr.flush()

    wanted = behaviour()
    say(f"verifying myself before taking over from {agent.from_version}" if agent.role == "candidate" else "starting")
    time.sleep(wanted.get("verifyMs", 100) / 1000)
    if wanted.get("verify") == "fail":
        say(f"verification failed: {wanted.get('reason', 'incompatible state')}")
        sys.exit(1)

    stopped = threading.Event()
    working = threading.Lock()

    def finish() -> None:
        # No tick after `stopped`: the one being written ends first.
        stopped.set()
        with working:
            pass

    agent.on_stop(finish)
    agent.ready()
    agent.wait_for_go()
    say("working")
    if "crashAfterGoMs" in wanted:
        threading.Timer(wanted["crashAfterGoMs"] / 1000, lambda: os._exit(3)).start()
    n = 0
    while True:
        with working:
            if stopped.is_set():
                break
            n += 1
            with open(os.path.join(root, "work.log"), "a", encoding="utf-8") as log:
                log.write(f"{time.time() * 1000:.3f} {version} {os.getpid()} tick {n}\n")
        stopped.wait(tick_s)


if __name__ == "__main__":
    main()
