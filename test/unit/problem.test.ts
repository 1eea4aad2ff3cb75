import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { Problem, problemJson, serviceUnavailable } from '../../api/problem.ts';

/**
 * A problem's Retry-After travels with it (api/problem.ts): problemJson, the one writer of problem
 * answers, sets the header from `retryAfterSeconds`, whether the problem is answered where it is
 * made or thrown to the app's error handler (app.onError answers a thrown Problem with problemJson).
 */
describe('problem answers', () => {
  const app = new Hono();
  app.onError((error, c) => (error instanceof Problem ? problemJson(c, error) : c.text('not a problem', 500)));
  app.get('/answered', (c) => problemJson(c, serviceUnavailable('the database is unavailable; try again', 5)));
  app.get('/thrown', () => {
    throw serviceUnavailable('too many unverified webhook bodies are being received at once; deliver it again', 1);
  });
  app.get('/without', () => {
    throw new Problem(503, 'Service Unavailable', 'the workflow engine (Temporal) is unavailable; try again');
  });

  it('answers a problem with retryAfterSeconds with its Retry-After, returned or thrown', async () => {
    const answered = await app.request('/answered');
    expect(answered.status).toBe(503);
    expect(answered.headers.get('retry-after')).toBe('5');
    expect(answered.headers.get('content-type')).toBe('application/problem+json');
    expect(await answered.json()).toEqual({ type: 'about:blank', title: 'Service Unavailable', status: 503, detail: 'the database is unavailable; try again' });

    const thrown = await app.request('/thrown');
    expect(thrown.status).toBe(503);
    expect(thrown.headers.get('retry-after')).toBe('1');
    expect(await thrown.json()).toMatchObject({ status: 503, detail: 'too many unverified webhook bodies are being received at once; deliver it again' });
  });

  it('answers a problem without retryAfterSeconds without Retry-After', async () => {
    const res = await app.request('/without');
    expect(res.status).toBe(503);
    expect(res.headers.has('retry-after')).toBe(false);
  });
});
