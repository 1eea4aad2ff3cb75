/**
 * Secrets this process has opened lately, to be cut out of text a tenant's server controls. A
 * provider's error body, or a proxy's, can echo what it was sent (a token, or the Basic credential
 * built from it); that text becomes a failure message in the run's history (the Temporal UI) and a
 * reason stored on the connection or hook, where a secret must never be. `open()` (lib/crypto.ts)
 * remembers every secret it opens; ProviderHttpError and the activities' last-resort failure
 * message (activities/errors.ts) pass provider text through `redactSecrets` before cutting it short.
 */

/** How many secrets are remembered (the oldest go first): far more than a worker holds open at once. */
const MAX_REMEMBERED = 4096;
/** Shorter values are not secrets worth the false matches (nothing forgelink opens is this short). */
const MIN_SECRET_LENGTH = 8;
export const REDACTED = '[redacted]';

/** Each remembered secret with the forms it travels in: as sent, and in the Basic credentials built from it. */
const remembered = new Map<string, string[]>();

/** The forms in which `secret` goes out: itself, URL-encoded, and the Basic credentials the Azure DevOps clients build. */
function formsOf(secret: string): string[] {
  const forms = new Set([secret, encodeURIComponent(secret)]);
  for (const user of ['', 'PAT']) forms.add(Buffer.from(`${user}:${secret}`, 'utf8').toString('base64'));
  // Longest first: base64('PAT:' + s) holds base64(':' + s) whole ('PAT' is one 3-byte group).
  return [...forms].sort((a, b) => b.length - a.length);
}

export function rememberSecret(secret: string): void {
  if (secret.length < MIN_SECRET_LENGTH) return;
  remembered.delete(secret);
  remembered.set(secret, formsOf(secret));
  if (remembered.size > MAX_REMEMBERED) remembered.delete(remembered.keys().next().value!);
}

/** `text` with every form of every remembered secret replaced by `[redacted]`. */
export function redactSecrets(text: string): string {
  if (remembered.size === 0 || text.length < MIN_SECRET_LENGTH) return text;
  let result = text;
  for (const forms of remembered.values()) {
    for (const form of forms) if (result.includes(form)) result = result.split(form).join(REDACTED);
  }
  return result;
}
