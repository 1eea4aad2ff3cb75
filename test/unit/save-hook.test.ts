import { describe, expect, it } from 'vitest';
import { saveHook } from '../../activities/hooks.ts';
import { ProviderHttpError, type HookSpec, type NameCheck, type ProviderHook, type RepositoryRef } from '../../activities/providers/port.ts';

const ref = { repositoryId: 'r1' } as unknown as RepositoryRef;
const spec = { url: 'https://forgelink.example.com/hook' } as unknown as HookSpec;

/** An adapter whose update answers as told and whose creation hands out a new id; both calls are recorded. */
function adapter(update: () => Promise<ProviderHook>) {
  const calls: string[] = [];
  return {
    calls,
    updateHook: async (_ref: RepositoryRef, hookId: string) => (calls.push(`update ${hookId}`), update()),
    createHook: async (_ref: RepositoryRef, _spec: HookSpec, checked?: NameCheck) => (calls.push(checked ? 'create (checked)' : 'create'), { id: 'new' } as ProviderHook),
  };
}

describe('saveHook', () => {
  it('updates the listed hook, creates one when none is listed, and creates it when it was deleted since the listing', async () => {
    const updated = adapter(async () => ({ id: 'h1' }) as ProviderHook);
    expect((await saveHook(updated, ref, 'h1', spec)).id).toBe('h1');
    expect(updated.calls).toEqual(['update h1']);

    const none = adapter(async () => ({ id: 'never' }) as ProviderHook);
    expect((await saveHook(none, ref, undefined, spec)).id).toBe('new');
    expect(none.calls).toEqual(['create']);

    const gone = adapter(async () => {
      throw new ProviderHttpError('gitlab', 404, 'Not Found');
    });
    expect((await saveHook(gone, ref, 'h1', spec)).id).toBe('new');
    expect(gone.calls).toEqual(['update h1', 'create']);
  });

  it("creates after an update's 404 without the step's earlier name lookup (Bitbucket DC): the name may have moved since, so the adapter checks it afresh", async () => {
    const checked: NameCheck = { idAtName: '42' };
    const moved = adapter(async () => {
      throw new ProviderHttpError('bitbucket', 404, 'Not Found');
    });
    expect((await saveHook(moved, ref, 'h1', spec, checked)).id).toBe('new');
    expect(moved.calls).toEqual(['update h1', 'create']);
    // With no hook listed, the lookup made after the listing still serves the creation.
    const none = adapter(async () => ({ id: 'never' }) as ProviderHook);
    await saveHook(none, ref, undefined, spec, checked);
    expect(none.calls).toEqual(['create (checked)']);
  });

  it('does not create a second hook when the update fails for another reason', async () => {
    const refused = adapter(async () => {
      throw new ProviderHttpError('gitlab', 403, 'Forbidden');
    });
    await expect(saveHook(refused, ref, 'h1', spec)).rejects.toThrow(ProviderHttpError);
    expect(refused.calls).toEqual(['update h1']);
  });
});
