import { describe, expect, it } from 'vitest';
import { open, seal, type EncryptionKeys } from '../../lib/crypto.ts';
import { redactSecrets, rememberSecret } from '../../lib/secret-redaction.ts';

const keys: EncryptionKeys = { current: { id: 'k1', key: Buffer.alloc(32, 7) } };

describe('secrets cut out of text a server controls', () => {
  it('redacts a secret once opened, in each form it goes out in', () => {
    const secret = `tok-${Math.random().toString(36).slice(2)}/+=`;
    const forms = [secret, encodeURIComponent(secret), Buffer.from(`:${secret}`).toString('base64'), Buffer.from(`PAT:${secret}`).toString('base64')];
    const text = forms.map((f) => `<${f}>`).join(' ');
    expect(redactSecrets(text)).toBe(text);
    expect(open(keys, seal(keys, secret, 'conn-1'), 'conn-1')).toBe(secret);
    expect(redactSecrets(text)).toBe(forms.map(() => '<[redacted]>').join(' '));
  });

  it('leaves values too short to be secrets alone', () => {
    rememberSecret('short');
    expect(redactSecrets('a short answer')).toBe('a short answer');
  });

  it('forgets the oldest of more than 4,096 secrets', () => {
    const first = `first-${Math.random().toString(36).slice(2)}`;
    rememberSecret(first);
    for (let i = 0; i < 4096; i++) rememberSecret(`filler-secret-${i}-${first}`);
    expect(redactSecrets(`x ${first} y`)).toBe(`x ${first} y`);
    const last = `filler-secret-4095-${first}`;
    expect(redactSecrets(`x ${last} y`)).toBe('x [redacted] y');
  });
});
