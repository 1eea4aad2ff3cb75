import { randomUUID } from 'node:crypto';
import { createApiMetrics } from '../../lib/metrics.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { seedAttachedRepository, uniqueExternalId, type DeliveringHook } from './events.ts';
import { gatedBodyPool } from './gated-body-thread.ts';
import { createOrgWithToken, type Harness } from './harness.ts';

/** An organization with one attached GitLab repository and its hook, for the large-body tests. */
export interface LargeBodyTenant {
  repository: { externalId: string; fullName: string };
  hook: DeliveringHook;
}

/** Tenants a and b, each an organization of its own. */
export async function largeBodyTenants(h: Harness, label: string): Promise<Record<'a' | 'b', LargeBodyTenant>> {
  const tenants = {} as Record<'a' | 'b', LargeBodyTenant>;
  for (const name of ['a', 'b'] as const) {
    const { org } = await createOrgWithToken(h);
    const repository = { externalId: uniqueExternalId('gitlab'), fullName: `tenant-${name}/${label}` };
    const { hook } = await seedAttachedRepository(h, { organizationId: org.id, provider: 'gitlab', ...repository });
    tenants[name] = { repository, hook };
  }
  return tenants;
}

/** A push of the tenant's repository, its body padded with `padding` bytes of small objects (read by JSON.parse, not by the receiver). */
export function paddedPush(tenant: LargeBodyTenant, padding = 0): Delivery {
  const payload = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), tenant.repository);
  const item = { id: 12345, name: 'padding', done: false };
  payload.padding = Array.from({ length: Math.floor(padding / (JSON.stringify(item).length + 1)) }, () => item);
  return delivery('gitlab', payload, { deliveryId: randomUUID(), ...tenant.hook });
}

/**
 * A push of the tenant's repository whose body, `bytes` long, is mostly `padding: [{},{},…]`: valid
 * JSON the receiver reads none of, built to be costly once parsed (~22 bytes of heap a byte).
 */
export function costlyPush(tenant: LargeBodyTenant, bytes: number): Delivery {
  const payload = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), tenant.repository);
  const unit = '{},';
  const room = bytes - JSON.stringify(payload).length - 20;
  return delivery('gitlab', payload, { deliveryId: randomUUID(), ...tenant.hook, rawBody: `${JSON.stringify(payload).slice(0, -1)},"padding":[${unit.repeat(Math.floor(room / unit.length))}{}]}` });
}

/**
 * The receivers as the API serves them, reading large bodies on a gated pool of `threads` threads
 * (test/support/gated-body-thread.ts), with `post` and `jobs`: the large bodies running on them and
 * waiting for one (forgelink_webhook_body_thread_jobs). Open the gate and close the pool after each test.
 */
export function gatedReceivers(h: Harness, maxBodyBytes: number, threads = 1, deadlineMs?: number) {
  const gated = gatedBodyPool(threads, deadlineMs);
  const app = h.appWith({ metrics: createApiMetrics(), metricsPath: '/metrics', webhooks: { ...h.apiDeps.webhooks, maxBodyBytes, bodyPool: gated.pool } });
  return {
    app,
    gated,
    post: async (d: Delivery) => app.request(d.path, { method: 'POST', headers: d.headers, body: d.body }),
    jobs: async (state: 'running' | 'waiting') => Number(new RegExp(`forgelink_webhook_body_thread_jobs\\{state="${state}"\\} (\\d+)`).exec(await (await app.request('/metrics')).text())?.[1]),
  };
}
