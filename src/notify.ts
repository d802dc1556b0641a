/**
 * systemd's notification protocol (sd_notify), for `Type=notify` units.
 *
 * Node has no AF_UNIX datagram socket, so messages are sent by the `systemd-notify` tool that ships
 * with systemd, one at a time and in order. Under `User=` a child's message is accepted only with
 * `NotifyAccess=all` in the unit, which ours sets. Agents never see NOTIFY_SOCKET (agent-process.ts).
 * Outside systemd (no NOTIFY_SOCKET) every call is a no-op, and nothing here ever throws or blocks.
 */
import { spawn } from 'node:child_process';
import type { Logger } from './log.js';

const BARRIER_TIMEOUT_MS = 5000;

export class SystemdNotifier {
  private readonly queue: string[][] = [];
  private sending = false;
  private lastStatus: string | null = null;
  private watchdog: NodeJS.Timeout | null = null;

  constructor(
    private readonly log: Logger,
    private readonly socket = process.env.NOTIFY_SOCKET,
    private readonly tool = process.env.UPGRADER_SYSTEMD_NOTIFY ?? 'systemd-notify',
  ) {}

  get enabled(): boolean {
    return Boolean(this.socket);
  }

  ready(): void {
    this.send(['READY=1']);
  }

  stopping(): void {
    this.stopWatchdog();
    this.send(['STOPPING=1']);
  }

  /** Sends STATUS= only when it changed. */
  status(text: string): void {
    if (text === this.lastStatus) return;
    this.lastStatus = text;
    this.send([`STATUS=${text}`]);
  }

  /** Pings the watchdog at half the interval systemd asked for; only when WatchdogSec= is set. */
  startWatchdog(env = process.env): void {
    const usec = Number(env.WATCHDOG_USEC);
    if (!this.enabled || !usec || (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== process.pid)) return;
    this.watchdog = setInterval(() => this.send(['WATCHDOG=1']), Math.max(1, usec / 2000));
  }

  stopWatchdog(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
  }

  private send(assignments: string[]): void {
    if (!this.enabled) return;
    this.queue.push(assignments);
    this.drain();
  }

  private drain(): void {
    if (this.sending) return;
    const next = this.queue.shift();
    if (!next) return;
    this.sending = true;
    let finished = false;
    const done = (problem?: string) => {
      if (finished) return;
      finished = true;
      if (problem) this.log.warn({ message: next, problem }, 'could not notify systemd');
      this.sending = false;
      this.drain();
    };
    try {
      // Without --no-block, systemd-notify waits until systemd has processed the message (a barrier).
      // That matters under User=: the message carries the tool's own PID, and systemd must still find
      // that process to know which unit the message is for. A barrier that never returns is cut short.
      const child = spawn(this.tool, [`--pid=${process.pid}`, ...next], { stdio: 'ignore' });
      const timer = setTimeout(() => child.kill('SIGKILL'), BARRIER_TIMEOUT_MS);
      child.on('error', (error) => {
        clearTimeout(timer);
        done(error.message);
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        done(code === 0 ? undefined : `systemd-notify ended with ${signal ?? code}`);
      });
    } catch (error) {
      done(String(error));
    }
  }
}
