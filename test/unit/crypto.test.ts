import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { generateApiToken, hashApiToken, open, safeEqual, seal, sealedKeyId, UnreadableSecretError, type EncryptionKeys } from '../../lib/crypto.ts';

const k1 = { id: 'k1', key: randomBytes(32) };
const k2 = { id: 'k2', key: randomBytes(32) };

describe('crypto', () => {
  it('seals with AES-256-GCM, keeps the key id, and opens again', () => {
    const keys: EncryptionKeys = { current: k1 };
    const sealed = seal(keys, 'glpat-secret', 'conn-1');
    expect(sealed).not.toContain('glpat-secret');
    expect(sealedKeyId(sealed)).toBe('k1');
    expect(open(keys, sealed, 'conn-1')).toBe('glpat-secret');
    expect(seal(keys, 'glpat-secret', 'conn-1')).not.toBe(sealed);
  });

  it('opens values sealed with a previous key after rotation', () => {
    const old = seal({ current: k1 }, 'token', 'c');
    const rotated: EncryptionKeys = { current: k2, previous: [k1] };
    expect(open(rotated, old, 'c')).toBe('token');
    expect(sealedKeyId(seal(rotated, 'token', 'c'))).toBe('k2');
    expect(() => open({ current: k2 }, old, 'c')).toThrow(/unknown encryption key id "k1"/);
  });

  it('refuses tampered ciphertext and a ciphertext moved to another row', () => {
    const keys: EncryptionKeys = { current: k1 };
    const sealed = seal(keys, 'token', 'conn-1');
    const parts = sealed.split('.');
    const ct = Buffer.from(parts[4]!, 'base64url');
    ct[0]! ^= 1;
    parts[4] = ct.toString('base64url');
    // Every refusal is an UnreadableSecretError: permanent, so activities fail at once instead of retrying.
    expect(() => open(keys, parts.join('.'), 'conn-1')).toThrow(UnreadableSecretError);
    expect(() => open(keys, sealed, 'conn-2')).toThrow(UnreadableSecretError);
    expect(() => open(keys, 'garbage', 'conn-1')).toThrow(UnreadableSecretError);
    expect(() => open(keys, 'garbage', 'conn-1')).toThrow(/unknown format/);
    expect(() => open({ current: k2 }, sealed, 'conn-1')).toThrow(UnreadableSecretError);
  });

  it('issues random API tokens stored only as hashes', () => {
    const a = generateApiToken();
    expect(a).toMatch(/^fl_[A-Za-z0-9_-]{43}$/);
    expect(generateApiToken()).not.toBe(a);
    expect(hashApiToken(a)).toMatch(/^[0-9a-f]{64}$/);
    expect(hashApiToken(a)).not.toContain(a);
  });

  it('compares secrets without regard to where they differ', () => {
    expect(safeEqual('abc', 'abc')).toBe(true);
    expect(safeEqual('abc', 'abd')).toBe(false);
    expect(safeEqual('abc', 'abcd')).toBe(false);
    expect(safeEqual('', '')).toBe(true);
  });
});
