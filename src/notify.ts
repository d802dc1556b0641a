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
    const done = (problem?: string) => {
      if (problem) this.log.warn({ message: next, problem }, 'could not notify systemd');
      this.sending = false;
      this.drain();
    };
    try {
      const child = spawn(this.tool, [`--pid=${process.pid}`, '--no-block', ...next], { stdio: 'ignore' });
      child.on('error', (error) => done(error.message));
      child.on('exit', (code) => done(code === 0 ? undefined : `systemd-notify exited with ${code}`));
    } catch (error) {
      done(String(error));
    }
  }
}
