import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { localServerOptions, readDevServerSettings } from '../../lib/temporal/dev-server.ts';

/** The dynamic-config arguments startDevServer passes to `temporal server start-dev`. */
const dynamicConfigArgs = (settings: Parameters<typeof localServerOptions>[0]) => localServerOptions(settings).extraArgs;

const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-dev-server-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;

function settingsFile(yaml: string): string {
  const file = path.join(dir, `temporal-dev-${files++}.yml`);
  writeFileSync(file, yaml);
  return file;
}

describe('dev server settings', () => {
  it("turn the project's dynamic config into start-dev arguments, eager activities on", () => {
    const settings = readDevServerSettings('temporal-dev.yml');
    expect(settings.dynamicConfig).toMatchObject({ 'system.enableActivityEagerExecution': true });
    expect(dynamicConfigArgs(settings)).toContain('system.enableActivityEagerExecution=true');
  });

  it("lift the single history shard's queue poll limits, so tasks are handed over at once", () => {
    const args = dynamicConfigArgs(readDevServerSettings('temporal-dev.yml'));
    for (const queue of ['transfer', 'timer', 'visibility']) {
      const value = args.find((a) => a.startsWith(`history.${queue}ProcessorMaxPollRPS=`));
      expect(value, queue).toBeDefined();
      expect(Number(value!.split('=')[1])).toBeGreaterThanOrEqual(1000);
    }
  });

  it('quote string values as JSON, as the CLI expects', () => {
    const settings = readDevServerSettings(settingsFile('dynamicConfig:\n  limit.maxIDLength: 255\n  frontend.namespaceRPS.visibility: "x"\n'));
    expect(dynamicConfigArgs(settings)).toEqual(['--dynamic-config-value', 'limit.maxIDLength=255', '--dynamic-config-value', 'frontend.namespaceRPS.visibility="x"']);
  });

  it('name the key of a value that is not a boolean, number or string', () => {
    expect(() => readDevServerSettings(settingsFile('dynamicConfig:\n  system.enableActivityEagerExecution: [1, 2]\n'))).toThrow(/dynamicConfig\.system\.enableActivityEagerExecution/);
  });

  it('default to no dynamic config', () => {
    expect(dynamicConfigArgs(readDevServerSettings(settingsFile('namespace: default\n')))).toEqual([]);
  });
});
