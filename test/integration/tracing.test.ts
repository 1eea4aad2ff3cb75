import { randomUUID } from 'node:crypto';
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTracing } from '../../lib/tracing.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { seedAttachedRepository, send, uniqueExternalId } from '../support/events.ts';
import { recordHistory } from '../support/histories.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';

/**
 * Tracing on (as tracing.enabled wires it, with an in-memory exporter instead of OTLP): one trace
 * runs from a delivery's receipt (the API's server span), through the intake row and the relay's
 * start, the event run and its activities, to the client span of the subscriber's POST — which
 * carries the trace on to the subscriber in its traceparent header.
 */
describe('one trace from a delivery to its subscriber', () => {
  const exporter = new InMemorySpanExporter();
  const tracing = startTracing({ enabled: true }, { serviceName: 'forgelink-test', spanProcessor: new SimpleSpanProcessor(exporter) });
  let h: Harness;
  let subscriber: FakeSubscriber;

  beforeAll(async () => {
    [h, subscriber] = await Promise.all([startHarness({ tracing }), startFakeSubscriber()]);
  });
  afterAll(async () => {
    await h?.close();
    await subscriber?.close();
    await tracing.shutdown();
  });

  it("starts an API request's trace at its server span: a caller's traceparent is a link, not the parent, whatever id or flag it chose", async () => {
    const { org, token } = await createOrgWithToken(h);
    // Trace id parts that XOR to 0: under any sampleRatio above 0 a ratio sampler keeps it.
    const chosen = { traceId: '12345678123456780000000000000000', spanId: '0123456789abcdef' };
    for (const headers of [{ authorization: `Bearer ${token}` }, {}] as Record<string, string>[]) {
      const res = await h.request('GET', `/api/v1/orgs/${org.slug}/connections`, { headers: { ...headers, traceparent: `00-${chosen.traceId}-${chosen.spanId}-01` } });
      expect(res.status).toBe('authorization' in headers ? 200 : 401);
      const span = exporter.getFinishedSpans().findLast((s) => s.kind === SpanKind.SERVER && s.attributes['http.route'] === '/api/v1/orgs/:org/connections');
      expect(span, 'the request span').toBeDefined();
      expect(span!.spanContext().traceId).not.toBe(chosen.traceId);
      expect(span!.parentSpanId).toBeUndefined();
      expect(span!.links.map((link) => [link.context.traceId, link.context.spanId])).toEqual([[chosen.traceId, chosen.spanId]]);
      exporter.reset();
    }
  });

  it('links the receipt, the run, its activities and the POST to the subscriber', async () => {
    const { org, token } = await createOrgWithToken(h);
    const registered = await h.request('POST', `/api/v1/orgs/${org.slug}/subscribers`, { token, body: { url: subscriber.url } });
    subscriber.verifyWith(((await registered.json()) as { secret: string }).secret);
    const repository = { externalId: uniqueExternalId('gitlab'), fullName: `traced/${randomUUID().slice(0, 8)}` };
    const { hook } = await seedAttachedRepository(h, { organizationId: org.id, provider: 'gitlab', ...repository });
    const payload = { ...withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository), test_push: randomUUID() };
    // A sender's own trace context is not continued (anyone can send one before the delivery is verified).
    const chosen = delivery('gitlab', payload, { deliveryId: randomUUID(), secret: hook.secret, url: hook.url });
    const chosenTraceId = 'abcdef0123456789abcdef0123456789';
    const res = await send(h, { ...chosen, headers: { ...chosen.headers, traceparent: `00-${chosenTraceId}-0123456789abcdef-01` } });
    expect(res.status).toBe(202);
    const { workflowId } = (await res.json()) as { workflowId: string };
    expect(await resultOf(h, workflowId)).toMatchObject({ delivered: 1 });

    const spans = exporter.getFinishedSpans();
    const receipt = spans.find((s) => s.kind === SpanKind.SERVER && s.attributes['http.route'] === '/api/events-handler/v1/events/gitlab' && s.attributes['http.response.status_code'] === 202);
    expect(receipt, 'the receipt span').toBeDefined();
    const traceId = receipt!.spanContext().traceId;
    expect(traceId).not.toBe(chosenTraceId);
    expect(receipt!.parentSpanId).toBeUndefined();
    const trace = spans.filter((s) => s.spanContext().traceId === traceId);
    const post = trace.find((s) => s.kind === SpanKind.CLIENT && s.attributes['url.full'] === subscriber.url);
    expect(post, `the subscriber POST in the receipt's trace (spans in it: ${trace.map((s) => s.name).join(', ')})`).toMatchObject({ name: 'POST', attributes: { 'http.request.method': 'POST', 'http.response.status_code': 204 } });

    // Walk up from the POST: each span's parent is in the trace, and the chain ends at the receipt.
    const byId = new Map(trace.map((s) => [s.spanContext().spanId, s]));
    const chain: ReadableSpan[] = [];
    for (let span: ReadableSpan | undefined = post; span; span = span.parentSpanId ? byId.get(span.parentSpanId) : undefined) chain.push(span);
    const names = chain.map((s) => s.name).reverse();
    expect(chain.at(-1)).toBe(receipt);
    expect(names[0]).toBe('POST /api/events-handler/v1/events/gitlab');
    expect(names).toEqual(expect.arrayContaining(['StartWorkflow:eventWorkflow', 'RunWorkflow:eventWorkflow', expect.stringMatching(/^StartActivity:/), expect.stringMatching(/^RunActivity:/)]));
    expect(names.at(-1)).toBe('POST');
    const run = chain.find((s) => s.name === 'RunWorkflow:eventWorkflow');
    expect(run?.attributes).toMatchObject({ workflowId });

    // The subscriber can go on with the trace.
    expect(subscriber.received.at(-1)!.headers.traceparent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    // A run started in a trace, which a worker with tracing off must replay too (test/unit/workflow-replay.test.ts).
    await recordHistory(h.client, workflowId, 'event-traced');
  });
});
