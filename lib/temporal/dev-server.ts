import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { defineSearchAttributeKey, type SearchAttributeType } from '@temporalio/common';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { findOrBuildTemporalCli } from './cli.ts';

const devServerSettings = z.object({
  namespace: z.string().default('default'),
  ip: z.string().default('127.0.0.1'),
  port: z.number().int().optional(),
  uiPort: z.number().int().optional(),
  dbFilename: z.string().optional(),
  logLevel: z.string().default('warn'),
  searchAttributes: z.record(z.string(), z.enum(['Keyword', 'Text', 'Int', 'Double', 'Bool', 'Datetime', 'KeywordList'])).default({}),
  /** Server dynamic config (`--dynamic-config-value KEY=JSON`), e.g. system.enableActivityEagerExecution. */
  dynamicConfig: z.record(z.string(), z.union([z.boolean(), z.number(), z.string()])).default({}),
});
export type DevServerSettings = z.infer<typeof devServerSettings>;

export function readDevServerSettings(file = 'temporal-dev.yml'): DevServerSettings {
  const parsed = devServerSettings.safeParse(parseYaml(readFileSync(file, 'utf8')));
  if (!parsed.success) {
    throw new Error(`${file}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}

/** `temporal server start-dev` arguments for the settings' dynamic config (values as JSON). */
function dynamicConfigArgs(settings: Pick<DevServerSettings, 'dynamicConfig'>): string[] {
  return Object.entries(settings.dynamicConfig).flatMap(([key, value]) => ['--dynamic-config-value', `${key}=${JSON.stringify(value)}`]);
}

const SA_TYPES: Record<string, SearchAttributeType> = {
  Keyword: 'KEYWORD',
  Text: 'TEXT',
  Int: 'INT',
  Double: 'DOUBLE',
  Bool: 'BOOL',
  Datetime: 'DATETIME',
  KeywordList: 'KEYWORD_LIST',
} as Record<string, SearchAttributeType>;

export interface DevServer {
  address: string;
  namespace: string;
  uiUrl?: string;
  /** The server process (a child of this one), when it could be found: what a stack records to stop it after a crash. */
  pid?: number;
  stop(): Promise<void>;
}

/** The `temporal server start-dev` child of this process (the SDK spawns it and does not say its pid). */
function devServerChildPid(): number | undefined {
  const ps = spawnSync('ps', ['-A', '-o', 'pid=,ppid=,args='], { encoding: 'utf8' });
  for (const line of ps.stdout?.split('\n') ?? []) {
    const [pid, ppid, ...args] = line.trim().split(/\s+/);
    if (Number(ppid) === process.pid && args.includes('start-dev')) return Number(pid);
  }
  return undefined;
}

/** The `start-dev` options for the settings: what startDevServer runs (the CLI at `cliPath`, else the SDK's download). */
export function localServerOptions(settings: DevServerSettings, cliPath?: string) {
  return {
    executable: cliPath ? { type: 'existing-path' as const, path: cliPath } : { type: 'cached-download' as const },
    namespace: settings.namespace,
    ip: settings.ip,
    port: settings.port,
    ui: settings.uiPort !== undefined,
    uiPort: settings.uiPort,
    dbFilename: settings.dbFilename ? path.resolve(settings.dbFilename) : undefined,
    log: { format: 'pretty', level: settings.logLevel },
    searchAttributes: Object.entries(settings.searchAttributes).map(([name, type]) => defineSearchAttributeKey(name, SA_TYPES[type]!)),
    extraArgs: dynamicConfigArgs(settings),
  };
}

/** Starts `temporal server start-dev` (the CLI found or built by findOrBuildTemporalCli, else the SDK's download). */
export async function startDevServer(
  settings: DevServerSettings,
  log: (line: string) => void = () => {},
): Promise<DevServer> {
  const cliPath = findOrBuildTemporalCli(log);
  if (!cliPath) log('no Temporal CLI and no Go found: letting the Temporal SDK download the dev server');
  if (settings.dbFilename) mkdirSync(path.dirname(path.resolve(settings.dbFilename)), { recursive: true });
  const env = await TestWorkflowEnvironment.createLocal({ server: localServerOptions(settings, cliPath) });
  return {
    address: env.address,
    namespace: settings.namespace,
    uiUrl: settings.uiPort !== undefined ? `http://${settings.ip}:${settings.uiPort}` : undefined,
    pid: devServerChildPid(),
    stop: () => env.teardown(),
  };
}
