import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { rememberSecret } from './secret-redaction.ts';

export interface EncryptionKeys {
  /** The key new ciphertexts are sealed with. */
  current: { id: string; key: Buffer };
  /** Older keys still accepted for opening, so keys can be rotated without re-encrypting at once. */
  previous?: { id: string; key: Buffer }[];
}

export function keysFromConfig(encryption: {
  key: string;
  keyId: string;
  previousKeys: { id: string; key: string }[];
}): EncryptionKeys {
  return {
    current: { id: encryption.keyId, key: Buffer.from(encryption.key, 'base64') },
    previous: encryption.previousKeys.map((k) => ({ id: k.id, key: Buffer.from(k.key, 'base64') })),
  };
}

const VERSION = 'v1';

/**
 * Seals a secret with AES-256-GCM. The output `v1.<keyId>.<iv>.<tag>.<ciphertext>` (base64url parts)
 * carries the key id so a rotated key can still open it. `context` (e.g. the connection id) is bound
 * as additional authenticated data: a ciphertext copied onto another row will not open.
 */
export function seal(keys: EncryptionKeys, plaintext: string, context: string): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', keys.current.key, iv);
  cipher.setAAD(Buffer.from(context, 'utf8'));
  const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
  const tag = cipher.getAuthTag();
  return [VERSION, keys.current.id, iv.toString('base64url'), tag.toString('base64url'), ciphertext.toString('base64url')].join('.');
}

/**
 * A sealed value this deployment cannot open: its key id is not configured (a key removed from
 * `encryption.previousKeys` too early), or it does not authenticate under it. No retry can fix it;
 * an operator can, by configuring the key again.
 */
export class UnreadableSecretError extends Error {
  override name = 'UnreadableSecretError';
}

export function open(keys: EncryptionKeys, sealed: string, context: string): string {
  const parts = sealed.split('.');
  if (parts.length !== 5 || parts[0] !== VERSION) throw new UnreadableSecretError('sealed value has an unknown format');
  const [, keyId, iv, tag, ciphertext] = parts as [string, string, string, string, string];
  const key = [keys.current, ...(keys.previous ?? [])].find((k) => k.id === keyId);
  if (!key) {
    throw new UnreadableSecretError(`sealed value uses unknown encryption key id "${keyId}": configure that key again (encryption.previousKeys) to open it`);
  }
  try {
    const decipher = createDecipheriv('aes-256-gcm', key.key, Buffer.from(iv, 'base64url'));
    decipher.setAAD(Buffer.from(context, 'utf8'));
    decipher.setAuthTag(Buffer.from(tag, 'base64url'));
    const secret = Buffer.concat([decipher.update(Buffer.from(ciphertext, 'base64url')), decipher.final()]).toString('utf8');
    // Cut out of any provider text that echoes it (lib/secret-redaction.ts).
    rememberSecret(secret);
    return secret;
  } catch {
    throw new UnreadableSecretError(`sealed value does not authenticate under encryption key id "${keyId}" (a different key under the same id, or altered data)`);
  }
}

export function sealedKeyId(sealed: string): string | undefined {
  return sealed.split('.')[1];
}

/** API tokens are random, shown once, and stored only as their SHA-256 (they carry 256 bits of entropy). */
export function generateApiToken(): string {
  return `fl_${randomBytes(32).toString('base64url')}`;
}

export function hashApiToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Constant-time string comparison that does not leak length through early exit. */
/**
 * `sha256=<hex>` HMAC-SHA256 of the exact bytes: the form of GitHub's X-Hub-Signature-256 and
 * Bitbucket's X-Hub-Signature, and of the signature forgelink puts on what it sends subscribers.
 */
export function signHmacSha256(secret: string, body: string | Uint8Array): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

export function safeEqual(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a, 'utf8').digest();
  const hb = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

/**
 * A signed, expiring value for round trips through a browser (the GitHub App install `state`):
 * `base64url(json).base64url(hmac)`. The HMAC key is derived from the encryption key.
 */
export function signState(keys: EncryptionKeys, payload: object, ttlSeconds: number, now = Date.now()): string {
  const body = Buffer.from(JSON.stringify({ ...payload, exp: Math.floor(now / 1000) + ttlSeconds })).toString('base64url');
  return `${body}.${stateMac(keys.current.key, body)}`;
}

export function verifyState<T extends object>(keys: EncryptionKeys, state: string, now = Date.now()): (T & { exp: number }) | undefined {
  const [body, mac] = state.split('.');
  if (!body || !mac) return undefined;
  const valid = [keys.current, ...(keys.previous ?? [])].some((k) => safeEqual(stateMac(k.key, body), mac));
  if (!valid) return undefined;
  let payload: T & { exp: number };
  try {
    payload = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  return typeof payload.exp === 'number' && payload.exp * 1000 > now ? payload : undefined;
}

function stateMac(key: Buffer, body: string): string {
  const derived = createHmac('sha256', key).update('forgelink:state').digest();
  return createHmac('sha256', derived).update(body).digest('base64url');
}
