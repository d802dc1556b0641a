/**
 * Gives the memory a burst of handoffs leaves behind back to the system once the upgrader is quiet again.
 *
 * A handoff makes a few kilobytes of objects that live across several scavenges (the agents' records,
 * the state written, log lines waiting for their agent), so they are promoted and die in the old
 * generation. V8 collects it only when it has grown by its minimum step (8 MB plus the young generation
 * for a heap this small) or when its memory reducer runs, which it does only for a while after a full
 * collection. An upgrader that goes idle after a burst of handoffs therefore keeps anywhere from 0 to
 * about 10 MB of dead objects resident, depending on where in that cycle the burst ended (measured:
 * idle RSS 46.9 MB after 10 handoffs, 57.0 MB after 1,000; 47.4 MB after one full collection).
 *
 * So: once no handoff has run for SETTLE_MS, a full collection (collectGarbage). It is armed only by the
 * end of a handoff, so an idle upgrader gets no wake-up from it, and it never runs during a handoff.
 * The collection function is made at run time (V8's --expose-gc set only while it is created), as a
 * V8 option on the command line costs start-up; node:v8 and node:vm are loaded the first time too.
 */

/** How long after the last handoff the collection runs. */
export const SETTLE_MS = 5000;

let gc: (() => void) | null = null;

/** Full, non-incremental collections of the V8 heap (about 10 to 20 ms each for the upgrader's heap). */
export async function collectGarbage(): Promise<void> {
  if (!gc) {
    const [{ setFlagsFromString }, { runInNewContext }] = await Promise.all([import('node:v8'), import('node:vm')]);
    setFlagsFromString('--expose-gc');
    try {
      gc = runInNewContext('gc') as () => void;
    } finally {
      setFlagsFromString('--no-expose-gc');
    }
  }
  // Twice: the first frees the dead objects, but pages it leaves partly filled are moved together (and
  // their memory returned) only by a collection that knows how full they are, the next one. Measured
  // after 1,000 handoffs: old space 13.2 MB committed; after one collection 9.2 MB; after two 6.5 MB.
  gc();
  gc();
}
