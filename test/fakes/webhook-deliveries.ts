import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Provider } from '../../lib/domain.ts';

/**
 * Webhook deliveries the way each provider sends them (headers, signature, body), built from the
 * recorded payloads in test/fixtures. Used by the receiver tests and the ingestion benchmark.
 */

// Payloads are edited (repository ids, delivery ids), so they are handled as plain JSON.
export type Payload = Record<string, any>;

export function fixture(path: string): Payload {
  return JSON.parse(readFileSync(new URL(`../fixtures/${path}`, import.meta.url), 'utf8'));
}

export interface Delivery {
  provider: Provider;
  deliveryId: string;
  path: string;
  headers: Record<string, string>;
  body: string;
}

export interface DeliveryOptions {
  deliveryId: string;
  /** HMAC secret (GitHub, Bitbucket), token (GitLab) or Basic password (Azure DevOps); absent: unsigned. */
  secret?: string;
  /** Azure DevOps Basic user. */
  basicAuthUser?: string;
  /** The URL the hook delivers to (its path and query are kept: a connection's hook names the connection); default the provider's receiver path. */
  url?: string;
  /** X-GitHub-Event; default push. */
  githubEvent?: string;
  /** Sent (and signed) instead of the payload's JSON: for bodies that are not JSON. */
  rawBody?: string;
}

const hmac = (secret: string, body: string) => `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;

const GITLAB_EVENT_HEADER: Record<string, string> = {
  push: 'Push Hook',
  tag_push: 'Tag Push Hook',
  merge_request: 'Merge Request Hook',
};

export function receiverPath(provider: Provider): string {
  return `/api/events-handler/v1/events/${provider}`;
}

/** One delivery of `payload`, signed (or not) as the provider does. Azure DevOps carries its id in the body. */
export function delivery(provider: Provider, payload: Payload, options: DeliveryOptions): Delivery {
  const { deliveryId, secret } = options;
  let body = options.rawBody ?? JSON.stringify(payload);
  const headers: Record<string, string> = {};
  switch (provider) {
    case 'github':
      Object.assign(headers, {
        'content-type': 'application/json',
        'user-agent': 'GitHub-Hookshot/8a1b2c3',
        'x-github-event': options.githubEvent ?? 'push',
        'x-github-delivery': deliveryId,
        'x-github-hook-installation-target-type': 'integration',
      });
      if (secret) headers['x-hub-signature-256'] = hmac(secret, body);
      break;
    case 'gitlab':
      Object.assign(headers, {
        'content-type': 'application/json',
        'user-agent': 'GitLab/17.6.0',
        'x-gitlab-event': GITLAB_EVENT_HEADER[payload.object_kind] ?? 'System Hook',
        'x-gitlab-event-uuid': deliveryId,
        'idempotency-key': deliveryId,
        'x-gitlab-instance': 'https://gitlab.example.com',
      });
      if (secret) headers['x-gitlab-token'] = secret;
      break;
    case 'bitbucket':
      Object.assign(headers, {
        'content-type': 'application/json; charset=utf-8',
        'user-agent': 'Atlassian HttpClient 4.2.0 / Bitbucket-9.4.0 (9004000) / Default',
        'x-event-key': payload.eventKey,
        'x-request-id': deliveryId,
      });
      if (secret) headers['x-hub-signature'] = hmac(secret, body);
      break;
    case 'azure-devops':
      body = options.rawBody ?? JSON.stringify({ ...payload, id: deliveryId });
      headers['content-type'] = 'application/json; charset=utf-8';
      if (secret) headers.authorization = `Basic ${Buffer.from(`${options.basicAuthUser ?? ''}:${secret}`).toString('base64')}`;
      break;
  }
  const path = options.url ? `${new URL(options.url).pathname}${new URL(options.url).search}` : receiverPath(provider);
  return { provider, deliveryId, path, headers, body };
}

/** The payload moved onto another repository (the provider's id and its name; GitHub: and installation), leaving the rest as recorded. */
/**
 * `instanceUrl`: the GitLab instance that sends it, as a real one names itself in `project.web_url`
 * (the recorded fixture names gitlab.example.com); the receiver tells instances apart by it.
 */
export function withRepository(provider: Provider, payload: Payload, repository: { externalId: string; fullName: string; installationId?: string; instanceUrl?: string }): Payload {
  const copy = structuredClone(payload);
  const [owner, name] = splitFullName(repository.fullName);
  switch (provider) {
    case 'github':
      Object.assign(copy.repository, { id: Number(repository.externalId), full_name: repository.fullName, name });
      if (repository.installationId) copy.installation = { ...copy.installation, id: Number(repository.installationId) };
      break;
    case 'gitlab':
      copy.project_id = Number(repository.externalId);
      Object.assign(copy.project, { id: Number(repository.externalId), path_with_namespace: repository.fullName, name });
      if (repository.instanceUrl) {
        copy.project.web_url = `${repository.instanceUrl}/${repository.fullName}`;
        if (copy.repository) copy.repository.homepage = copy.project.web_url;
      }
      break;
    case 'bitbucket': {
      const repo = copy.repository ?? copy.pullRequest.toRef.repository;
      Object.assign(repo, { id: Number(repository.externalId), slug: name, name });
      repo.project.key = owner;
      break;
    }
    case 'azure-devops':
      Object.assign(copy.resource.repository, { id: repository.externalId, name });
      copy.resource.repository.project.name = owner;
      break;
  }
  return copy;
}

function splitFullName(fullName: string): [string, string] {
  const slash = fullName.lastIndexOf('/');
  return [fullName.slice(0, slash), fullName.slice(slash + 1)];
}

/** The App installation the recorded GitHub payloads come from: a connection must be bound to it to receive them. */
export const GITHUB_FIXTURE_INSTALLATION_ID = '1';

/** A push of one branch on each provider, from the recorded payloads. */
export const PUSH_FIXTURES: Record<Provider, string> = {
  github: 'github/push-branch-updated.json',
  gitlab: 'gitlab/push.json',
  bitbucket: 'bitbucket/repo-refs-changed.json',
  'azure-devops': 'azure-devops/git-push.json',
};
