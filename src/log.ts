/**
 * The upgrader's log: JSON lines on stderr (pino), written synchronously so that nothing is lost
 * when the process is killed, and so that lines keep their order with the agents' own stderr.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(level = process.env.UPGRADER_LOG_LEVEL ?? 'info'): Logger {
  return pino(
    { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
    pino.destination({ fd: 2, sync: true }),
  );
}
