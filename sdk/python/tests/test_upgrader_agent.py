"""Unit tests of upgrader_agent over in-memory pipes (the integration tests run it under a real upgrader)."""
import io
import json
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import upgrader_agent  # noqa: E402


class Harness:
    """An agent wired to a pipe for its stdin and a buffer for its stdout, with exits recorded, not taken."""

    def __init__(self, role: str = "active") -> None:
        read_fd, self.write_fd = os.pipe()
        self.out = io.StringIO()
        self.exited = threading.Event()
        self.ended = threading.Event()
        self.codes = []
        env = {"UPGRADER_PROTOCOL": "1", "UPGRADER_ROLE": role, "UPGRADER_VERSION": "2.0.0", "UPGRADER_ROOT": "/srv/a", "UPGRADER_FROM_VERSION": "1.0.0"}
        self.agent = upgrader_agent.Agent(stdin=os.fdopen(read_fd, "rb"), stdout=self.out, env=env, exit=self._exit, on_end=self.ended.set)

    def _exit(self, code: int) -> None:
        self.codes.append(code)
        self.exited.set()

    def send(self, raw: str) -> None:
        os.write(self.write_fd, raw.encode("utf-8"))

    def close(self) -> None:
        os.close(self.write_fd)

    def sent(self):
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def ask_in_background(self, version: str):
        """request_upgrade(version) in a thread, once the request is on the wire: the thread and a list for its answer."""
        answer = []
        asking = threading.Thread(target=lambda: answer.append(self.agent.request_upgrade(version)))
        asking.start()
        self.wait_until_sent()
        return asking, answer

    def wait_until_sent(self, deadline_s: float = 2.0) -> None:
        """Waits, with a deadline, until the agent has written a line."""
        end = time.monotonic() + deadline_s
        while not self.out.getvalue():
            if time.monotonic() > end:
                raise AssertionError("the agent wrote nothing in time")
            time.sleep(0.005)


class AgentTest(unittest.TestCase):
    def test_reads_its_environment(self) -> None:
        h = Harness("candidate")
        self.assertTrue(h.agent.supervised)
        self.assertEqual((h.agent.role, h.agent.version, h.agent.root, h.agent.from_version), ("candidate", "2.0.0", "/srv/a", "1.0.0"))
        h.close()

    def test_a_candidate_works_only_after_go(self) -> None:
        h = Harness("candidate")
        h.agent.ready()
        self.assertFalse(h.agent.wait_for_go(0.05))
        self.assertFalse(h.agent.is_active)
        h.send('{"type":"go"}\n')
        self.assertTrue(h.agent.wait_for_go(2))
        self.assertTrue(h.agent.is_active)
        self.assertEqual(h.sent(), [{"type": "ready"}])
        h.close()

    def test_stop_runs_the_handler_before_stopped_then_exits(self) -> None:
        h = Harness()
        order = []
        h.agent.on_stop(lambda: order.append(("handler", list(h.sent()))))
        h.send('{"type":"stop"}\n')
        self.assertTrue(h.exited.wait(2))
        self.assertEqual(order, [("handler", [])])
        self.assertEqual(h.sent(), [{"type": "stopped"}])
        self.assertEqual(h.codes, [0])
        h.close()

    def test_an_upgrade_request_gets_its_refusal_with_the_code(self) -> None:
        h = Harness()
        asking, answer = h.ask_in_background("3.0.0")
        self.assertEqual(h.sent(), [{"type": "upgrade", "version": "3.0.0", "mode": "live"}])
        self.assertEqual(h.agent.request_upgrade("4.0.0").code, "in-progress")
        # An answer about another version is not this request's.
        h.send('{"type":"upgrade-failed","version":"9.9.9","reason":"x"}\n')
        h.send('{"type":"upgrade-failed","version":"3.0.0","reason":"3.0.0 is quarantined","code":"quarantined"}\n')
        asking.join(2)
        self.assertEqual(answer, [upgrader_agent.UpgradeAnswer(False, "3.0.0 is quarantined", "quarantined")])
        h.close()

    def test_an_upgrade_that_goes_through_ends_with_stop(self) -> None:
        h = Harness()
        asking, answer = h.ask_in_background("3.0.0")
        h.send('{"type":"stop"}\n')
        asking.join(2)
        self.assertEqual(answer, [upgrader_agent.UpgradeAnswer(True)])
        h.close()

    def test_refuses_a_request_the_upgrader_would_never_answer_and_sends_ascii(self) -> None:
        h = Harness()
        with self.assertRaises(ValueError):
            h.agent.request_upgrade("1.2", mode="fast")
        self.assertEqual(h.agent.request_upgrade("1.2", timeout=0.01).ok, False)
        # Given up on, it no longer blocks the next request.
        self.assertNotEqual(h.agent.request_upgrade("1.3", timeout=0.01).code, "in-progress")
        h.agent.status("caf\u00e9 \udcff" + "x" * 5000)
        last = h.out.getvalue().splitlines()[-1]
        self.assertTrue(last.isascii())
        self.assertEqual(len(json.loads(last)["message"]), upgrader_agent.MAX_STATUS_CHARS)
        h.close()

    def test_a_stop_handler_that_calls_sys_exit_still_sends_stopped(self) -> None:
        h = Harness()
        h.agent.on_stop(lambda: sys.exit(3))
        h.send('{"type":"stop"}\n')
        self.assertTrue(h.exited.wait(2))
        self.assertEqual(h.sent(), [{"type": "stopped"}])
        h.close()

    def test_ignores_what_is_not_a_message_and_ends_with_stdin(self) -> None:
        h = Harness("candidate")
        h.send("not json\n" + '{"type":"go","x":' + "\n" + "{}\n" + '{"type":[]}\n' + '{"type":"upgrade-failed","version":1}\n')
        os.write(h.write_fd, b"\xff\xfe not utf-8\n")
        h.send("x" * (upgrader_agent.MAX_LINE_BYTES + 10) + "\n")
        h.send('{"type":"go"}\n')
        self.assertTrue(h.agent.wait_for_go(2))
        h.close()
        self.assertTrue(h.ended.wait(2))
        self.assertEqual(h.codes, [])


if __name__ == "__main__":
    unittest.main()
