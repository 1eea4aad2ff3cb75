import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { signHmacSha256 } from '../../lib/crypto.ts';
import {
  verifyAzureBasicAuth,
  verifyBitbucketSignature,
  verifyGithubSignature,
  verifyGitlabToken,
} from '../../api/webhooks/verify.ts';

const current = 'whsec-current-5b1f0c';
const previous = 'whsec-previous-93ad27';

describe('signHmacSha256', () => {
  it('produces the sha256=<hex> value of GitHub documentation example', () => {
    // docs.github.com "Validating webhook deliveries": secret and payload with their expected signature.
    expect(signHmacSha256("It's a Secret to Everybody", 'Hello, World!')).toBe(
      'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17',
    );
  });

  it('signs bytes and the same text alike', () => {
    expect(signHmacSha256(current, Buffer.from('{"a":"é"}'))).toBe(signHmacSha256(current, '{"a":"é"}'));
  });
});

describe.each([
  ['GitHub X-Hub-Signature-256', verifyGithubSignature],
  ['Bitbucket X-Hub-Signature', verifyBitbucketSignature],
])('%s', (_name, verify) => {
  const rawBody = readFileSync(new URL('../fixtures/bitbucket/repo-refs-changed.json', import.meta.url));
  const signature = signHmacSha256(current, rawBody);

  it('accepts the HMAC of the raw bytes, as bytes or as text', () => {
    expect(verify(rawBody, signature, [current])).toBe(true);
    expect(verify(rawBody.toString('utf8'), signature, [current])).toBe(true);
    expect(verify(rawBody, signature.toUpperCase().replace('SHA256=', 'sha256='), [current])).toBe(true);
  });

  it('refuses a forged signature or a body changed after signing', () => {
    expect(verify(rawBody, signHmacSha256('guessed-secret', rawBody), [current])).toBe(false);
    const reserialized = JSON.stringify(JSON.parse(rawBody.toString('utf8')));
    expect(verify(reserialized, signature, [current])).toBe(false);
    const flipped = signature.slice(0, -1) + (signature.endsWith('0') ? '1' : '0');
    expect(verify(rawBody, flipped, [current])).toBe(false);
  });

  it('refuses a missing or garbled header', () => {
    expect(verify(rawBody, undefined, [current])).toBe(false);
    expect(verify(rawBody, '', [current])).toBe(false);
    expect(verify(rawBody, 'sha256=', [current])).toBe(false);
    expect(verify(rawBody, 'sha256=not-hex-at-all', [current])).toBe(false);
    expect(verify(rawBody, signature.slice('sha256='.length), [current])).toBe(false);
    expect(verify(rawBody, `sha1=${signature.slice('sha256='.length)}`, [current])).toBe(false);
  });

  it('refuses signatures of the wrong length', () => {
    expect(verify(rawBody, signature.slice(0, -2), [current])).toBe(false);
    expect(verify(rawBody, `${signature}00`, [current])).toBe(false);
  });

  it('accepts the previous secret during rotation, and only while it is listed', () => {
    const signedWithPrevious = signHmacSha256(previous, rawBody);
    expect(verify(rawBody, signedWithPrevious, [current, previous])).toBe(true);
    expect(verify(rawBody, signature, [current, previous])).toBe(true);
    expect(verify(rawBody, signedWithPrevious, [current])).toBe(false);
  });

  it('accepts nothing without a configured secret', () => {
    expect(verify(rawBody, signature, [])).toBe(false);
    expect(verify(rawBody, signHmacSha256('', rawBody), [''])).toBe(false);
  });
});

describe('GitLab X-Gitlab-Token', () => {
  it('accepts the secret token, current or previous', () => {
    expect(verifyGitlabToken(current, [current])).toBe(true);
    expect(verifyGitlabToken(previous, [current, previous])).toBe(true);
  });

  it('refuses another token, a retired one, and tokens of another length', () => {
    expect(verifyGitlabToken('whsec-current-5b1f0d', [current])).toBe(false);
    expect(verifyGitlabToken(previous, [current])).toBe(false);
    expect(verifyGitlabToken(current.slice(0, -1), [current])).toBe(false);
    expect(verifyGitlabToken(`${current} `, [current])).toBe(false);
  });

  it('refuses a missing token and accepts nothing without a configured secret', () => {
    expect(verifyGitlabToken(undefined, [current])).toBe(false);
    expect(verifyGitlabToken('', [current])).toBe(false);
    expect(verifyGitlabToken('', [''])).toBe(false);
    expect(verifyGitlabToken(current, [])).toBe(false);
  });
});

describe('Azure DevOps Basic auth', () => {
  const basic = (credentials: string) => `Basic ${Buffer.from(credentials).toString('base64')}`;
  const pairs = (user: string, passwords: string[]) => passwords.map((password) => ({ user, password }));

  it('accepts the configured user and password, in any scheme case', () => {
    expect(verifyAzureBasicAuth(basic('forgelink:pa:ss'), pairs('forgelink', ['pa:ss']))).toBe(true);
    expect(verifyAzureBasicAuth(basic('forgelink:pa:ss').replace('Basic', 'basic'), pairs('forgelink', ['pa:ss']))).toBe(true);
  });

  it('accepts the previous password during rotation, and only while it is listed', () => {
    expect(verifyAzureBasicAuth(basic(`forgelink:${previous}`), pairs('forgelink', [current, previous]))).toBe(true);
    expect(verifyAzureBasicAuth(basic(`forgelink:${previous}`), pairs('forgelink', [current]))).toBe(false);
  });

  it('takes each user with its own password only (one pair per connection credential)', () => {
    const credentials = [{ user: 'forgelink-a', password: current }, { user: 'forgelink-b', password: previous }];
    expect(verifyAzureBasicAuth(basic(`forgelink-a:${current}`), credentials)).toBe(true);
    expect(verifyAzureBasicAuth(basic(`forgelink-b:${previous}`), credentials)).toBe(true);
    expect(verifyAzureBasicAuth(basic(`forgelink-a:${previous}`), credentials)).toBe(false);
  });

  it('refuses a wrong user or password, including ones of another length', () => {
    expect(verifyAzureBasicAuth(basic(`intruder:${current}`), pairs('forgelink', [current]))).toBe(false);
    expect(verifyAzureBasicAuth(basic(`forgelink:${current}x`), pairs('forgelink', [current]))).toBe(false);
    expect(verifyAzureBasicAuth(basic(`forgelink:${current.slice(1)}`), pairs('forgelink', [current]))).toBe(false);
    expect(verifyAzureBasicAuth(basic('forgelink'), pairs('forgelink', [current]))).toBe(false);
  });

  it('refuses missing, garbled or non-Basic headers and accepts nothing without a password', () => {
    expect(verifyAzureBasicAuth(undefined, pairs('forgelink', [current]))).toBe(false);
    expect(verifyAzureBasicAuth('', pairs('forgelink', [current]))).toBe(false);
    expect(verifyAzureBasicAuth('Basic', pairs('forgelink', [current]))).toBe(false);
    expect(verifyAzureBasicAuth('Basic !!!not-base64!!!', pairs('forgelink', [current]))).toBe(false);
    expect(verifyAzureBasicAuth(`Bearer ${Buffer.from(`forgelink:${current}`).toString('base64')}`, pairs('forgelink', [current]))).toBe(false);
    expect(verifyAzureBasicAuth(basic('forgelink:'), pairs('forgelink', ['']))).toBe(false);
    expect(verifyAzureBasicAuth(basic(`:${current}`), pairs('', [current]))).toBe(false);
    expect(verifyAzureBasicAuth(basic(`forgelink:${current}`), pairs('forgelink', []))).toBe(false);
  });
});
