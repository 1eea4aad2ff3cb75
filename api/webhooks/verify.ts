import { createHash, timingSafeEqual } from 'node:crypto';
import { signHmacSha256 } from '../../lib/crypto.ts';
import type { Provider } from '../../lib/domain.ts';
import type { RawBody, WebhookHeaders } from './normalize.ts';

/*
 * Every check takes a list of acceptable secrets (the current one first, then those being rotated out) and compares
 * against each of them: SHA-256 digests of both sides have equal length, so timingSafeEqual never exits early on a
 * length difference, and no secret is skipped after a match, so timing does not tell which one matched. Empty
 * secrets are ignored: an empty HMAC key or token is one anybody can produce. A missing or garbled header is false.
 */

/** A credential a delivery may carry: a secret (an HMAC key or a token), with Azure DevOps' Basic auth user. */
export interface DeliveryCredential {
  user?: string;
  secret: string;
}

/** A provider's check of one delivery against a list of accepted credentials; every one is compared, in constant time. */
export function verifyDelivery(provider: Provider, headers: WebhookHeaders, body: RawBody, credentials: readonly DeliveryCredential[]): boolean {
  const secrets = credentials.map((c) => c.secret);
  switch (provider) {
    case 'github':
      return verifyGithubSignature(body, headers['x-hub-signature-256'], secrets);
    case 'gitlab':
      return verifyGitlabToken(headers['x-gitlab-token'], secrets);
    case 'bitbucket':
      return verifyBitbucketSignature(body, headers['x-hub-signature'], secrets);
    case 'azure-devops':
      return verifyAzureBasicAuth(headers.authorization, credentials.map((c) => ({ user: c.user ?? '', password: c.secret })));
  }
}

/** GitHub App deliveries: X-Hub-Signature-256 over the raw body, keyed with the App's webhook secret. */
export function verifyGithubSignature(rawBody: RawBody, header: string | undefined, secrets: readonly string[]): boolean {
  return verifyHmacSignature(rawBody, header, secrets);
}

/** Bitbucket Data Center deliveries: X-Hub-Signature over the raw body, keyed with the webhook's secret. */
export function verifyBitbucketSignature(rawBody: RawBody, header: string | undefined, secrets: readonly string[]): boolean {
  return verifyHmacSignature(rawBody, header, secrets);
}

/** GitLab deliveries: X-Gitlab-Token carries the hook's secret token as is. */
export function verifyGitlabToken(header: string | undefined, secrets: readonly string[]): boolean {
  if (typeof header !== 'string' || header === '') return false;
  return matchesAny(header, usable(secrets));
}

/** Azure DevOps Service Hooks: `Authorization: Basic base64(user:password)` set on the subscription. */
export function verifyAzureBasicAuth(authorizationHeader: string | undefined, credentials: readonly { user: string; password: string }[]): boolean {
  const match = typeof authorizationHeader === 'string' ? /^basic\s+(\S+)\s*$/i.exec(authorizationHeader) : null;
  if (!match) return false;
  const given = Buffer.from(match[1]!, 'base64').toString('utf8');
  return matchesAny(given, credentials.filter((c) => c.user !== '' && c.password !== '').map((c) => `${c.user}:${c.password}`));
}

function verifyHmacSignature(rawBody: RawBody, header: string | undefined, secrets: readonly string[]): boolean {
  if (typeof header !== 'string' || header === '') return false;
  // Hex digits are case-insensitive; the expected value is lower case.
  const given = header.trim().toLowerCase();
  return matchesAny(given, usable(secrets).map((secret) => signHmacSha256(secret, rawBody)));
}

function matchesAny(given: string, expected: readonly string[]): boolean {
  const givenDigest = sha256(given);
  let matched = false;
  for (const candidate of expected) {
    matched = timingSafeEqual(givenDigest, sha256(candidate)) || matched;
  }
  return matched;
}

function usable(secrets: readonly string[]): string[] {
  return secrets.filter((secret) => secret !== '');
}

function sha256(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}
