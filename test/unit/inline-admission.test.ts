import { describe, expect, it } from 'vitest';
import { createInlineAdmission } from '../../activities/inline-admission.ts';
import { inlineCallsPerWorker, parseConfig } from '../../lib/config.ts';

describe('createInlineAdmission', () => {
  it('admits at most perWorker calls at once and perOrganization of one organization, and frees a place on release', () => {
    const admission = createInlineAdmission({ perWorker: 3, perOrganization: 2 });
    const a1 = admission.tryAdmit('org-a');
    const a2 = admission.tryAdmit('org-a');
    expect(a1).toBeTypeOf('function');
    expect(a2).toBeTypeOf('function');
    // One organization cannot take more than its share, however many places the worker has left.
    expect(admission.tryAdmit('org-a')).toBeUndefined();
    const b1 = admission.tryAdmit('org-b');
    expect(b1).toBeTypeOf('function');
    // The worker is full: no organization gets in, not even one with nothing running.
    expect(admission.tryAdmit('org-c')).toBeUndefined();
    a1!();
    // A release counts once, however often it is called.
    a1!();
    expect(admission.tryAdmit('org-c')).toBeTypeOf('function');
    expect(admission.tryAdmit('org-a')).toBeUndefined();
    b1!();
    expect(admission.tryAdmit('org-a')).toBeTypeOf('function');
    expect(admission.tryAdmit('org-a')).toBeUndefined();
  });

  it("counts a run's calls side by side once: they hold one workflow task slot", () => {
    const admission = createInlineAdmission({ perWorker: 2, perOrganization: 1 });
    const run1 = [admission.tryAdmit('org-a', 'run-1'), admission.tryAdmit('org-a', 'run-1'), admission.tryAdmit('org-a', 'run-1')];
    expect(run1.every((release) => typeof release === 'function')).toBe(true);
    // Another run of the organization: its place is taken.
    expect(admission.tryAdmit('org-a', 'run-2')).toBeUndefined();
    // The same run's calls for another organization take that organization's place.
    const other = admission.tryAdmit('org-b', 'run-1');
    expect(other).toBeTypeOf('function');
    expect(admission.tryAdmit('org-c')).toBeUndefined();
    run1[0]!();
    run1[0]!();
    run1[1]!();
    // One call of run-1 is still running: the place is still held.
    expect(admission.tryAdmit('org-a', 'run-2')).toBeUndefined();
    run1[2]!();
    expect(admission.tryAdmit('org-a', 'run-2')).toBeTypeOf('function');
    other!();
    expect(admission.tryAdmit('org-c')).toBeTypeOf('function');
  });

  it('refuses limits that are not positive integers', () => {
    expect(() => createInlineAdmission({ perWorker: 0, perOrganization: 1 })).toThrow(/perWorker/);
    expect(() => createInlineAdmission({ perWorker: 2, perOrganization: 1.5 })).toThrow(/perOrganization/);
  });
});

describe('worker.inlineCallsPerWorker', () => {
  const minimal = { publicUrl: 'https://forgelink.example.com', auth: { adminToken: 'a'.repeat(32) }, encryption: { key: Buffer.alloc(32, 7).toString('base64') } };
  it('defaults to half the workflow task slots and always leaves one slot for runs that call no tenant', () => {
    expect(inlineCallsPerWorker({ maxConcurrentWorkflowTaskExecutions: 10 })).toBe(5);
    expect(inlineCallsPerWorker({ maxConcurrentWorkflowTaskExecutions: 3 })).toBe(1);
    expect(inlineCallsPerWorker({ maxConcurrentWorkflowTaskExecutions: 10, inlineCallsPerWorker: 8 })).toBe(8);
    expect(parseConfig(minimal).worker).toMatchObject({ inlineCallsPerOrganization: 2 });
    expect(() => parseConfig({ ...minimal, worker: { maxConcurrentWorkflowTaskExecutions: 4, inlineCallsPerWorker: 4 } })).toThrow(/inlineCallsPerWorker: must be below maxConcurrentWorkflowTaskExecutions/);
  });
});
