import { context, ROOT_CONTEXT, SpanKind, trace, TraceFlags } from '@opentelemetry/api';
import { SamplingDecision } from '@opentelemetry/sdk-trace-base';
import { describe, expect, it } from 'vitest';
import { tracingSampler } from '../../lib/tracing.ts';

const remoteParent = (traceId: string, sampled: boolean) =>
  trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId: '0123456789abcdef', traceFlags: sampled ? TraceFlags.SAMPLED : TraceFlags.NONE, isRemote: true });
const decide = (ratio: number, parent: typeof ROOT_CONTEXT, traceId: string) => tracingSampler(ratio).shouldSample(parent, traceId, 'GET /api/v1/orgs', SpanKind.SERVER, {}, []).decision;

describe('the tracing sampler', () => {
  it("does not let a caller's sampled flag force its trace in: a remote parent is decided by the ratio on its trace id", () => {
    const traceId = 'abcdef0123456789abcdef0123456789';
    expect(decide(0, remoteParent(traceId, true), traceId)).toBe(SamplingDecision.NOT_RECORD);
    expect(decide(1, remoteParent(traceId, false), traceId)).toBe(SamplingDecision.RECORD_AND_SAMPLED);
  });

  it('keeps a trace together: a remote hop decides as the root did for the same trace id, whatever the flag says', () => {
    for (const traceId of ['00000000000000000000000000000001', 'ffffffffffffffffffffffffffffffff', '7fffffff000000000000000000000000', '80000001000000000000000000000000']) {
      const root = decide(0.5, context.active(), traceId);
      expect(decide(0.5, remoteParent(traceId, true), traceId)).toBe(root);
      expect(decide(0.5, remoteParent(traceId, false), traceId)).toBe(root);
    }
  });
});
