/**
 * What systemd hears of the upgrader: READY=1 once the first active agent is ready (or the root is halted), STOPPING=1 when it
 * stops, and a STATUS= line after every transition for `systemctl status` (what runs, and what the last
 * upgrade did).
 */
import type { Context } from './handoff.js';
import type { SystemdNotifier } from './notify.js';
import type { UpgradeRecord } from './state.js';

export class SystemdStatus {
  private announcedReady = false;

  constructor(private readonly notifier: SystemdNotifier) {}

  update(previous: Context, next: Context, lastUpgrade: UpgradeRecord | undefined, pidOf: (id: number) => number | undefined): void {
    if (!this.notifier.enabled) return;
    // A root that starts halted is up as asked: the unit must not fail its start waiting for an agent.
    if ((next.active?.ready || next.state === 'halted') && !this.announcedReady) {
      this.announcedReady = true;
      this.notifier.ready();
    }
    if (next.state === 'stopping' && previous.state !== 'stopping') this.notifier.stopping();
    this.notifier.status(statusLine(next, lastUpgrade, pidOf));
  }

  stopWatchdog(): void {
    this.notifier.stopWatchdog();
  }
}

export function statusLine(ctx: Context, last: UpgradeRecord | undefined, pidOf: (id: number) => number | undefined): string {
  const lastText = last ? `; last upgrade ${last.from} -> ${last.to} ${last.result}${last.reason ? `: ${last.reason}` : ''}` : '';
  switch (ctx.state) {
    case 'verifying':
    case 'draining':
    case 'waiting':
      if (!ctx.handoff) return `restarting ${ctx.pending?.version} once the old agent has exited${lastText}`;
      return `upgrading ${ctx.handoff.from} -> ${ctx.handoff.to} (${ctx.state})${lastText}`;
    case 'running': {
      const active = ctx.active!;
      return `running ${active.version} (pid ${pidOf(active.id)}${active.ready ? '' : ', not ready yet'}${ctx.probation ? ', on probation' : ''})${lastText}`;
    }
    case 'halting':
      return `halting ${ctx.halt?.version} (asked by ${ctx.halt?.by}): waiting for the agent to exit${lastText}`;
    case 'halted': {
      const halt = ctx.halt!;
      return `halted since ${halt.since} (asked by ${halt.by}): no agent runs until upgrader resume or upgrade${halt.reason ? `; ${halt.reason}` : ''}${lastText}`;
    }
    default:
      return `${ctx.state}${lastText}`;
  }
}
