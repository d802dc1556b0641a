/**
 * Text from files another user writes (state records, reasons, agents' messages, a child's output) shown on
 * an operator's terminal: every control character but newline and tab escaped, so that it can neither move
 * the cursor, clear the screen, set the title nor hide what follows.
 */
export function printable(text: string): string {
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
