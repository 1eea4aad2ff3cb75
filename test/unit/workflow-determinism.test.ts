import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * Workflow code runs in Temporal's deterministic sandbox and is replayed: it may import only the
 * workflow SDK, our pure contract/domain modules, and activity *types*.
 */
// The OpenTelemetry package's workflow entry is written for the sandbox (workflows/tracing-interceptors.ts).
const ALLOWED_VALUE_IMPORTS = [/^@temporalio\/interceptors-opentelemetry\/lib\/workflow\/index\.js$/, /^@temporalio\/workflow$/, /^@temporalio\/common$/, /^\.\/[a-z-]+\.ts$/, /^\.\.\/lib\/domain\.ts$/];

function imports(file: string): { spec: string; typeOnly: boolean }[] {
  const source = readFileSync(file, 'utf8');
  const found: { spec: string; typeOnly: boolean }[] = [];
  for (const m of source.matchAll(/^\s*(import|export)\s+(type\s+)?[^;]*?from\s+'([^']+)'/gms)) {
    found.push({ spec: m[3]!, typeOnly: Boolean(m[2]) });
  }
  return found;
}

describe('workflow code', () => {
  const dir = path.resolve('workflows');
  const files = readdirSync(dir).filter((f) => f.endsWith('.ts'));

  it('exists', () => {
    expect(files).toContain('index.ts');
    expect(files).toContain('contract.ts');
  });

  it.each(files)('%s imports nothing with I/O', (file) => {
    for (const { spec, typeOnly } of imports(path.join(dir, file))) {
      if (typeOnly) continue;
      expect(spec, `${file} imports ${spec}`).toSatisfy((s: string) => ALLOWED_VALUE_IMPORTS.some((re) => re.test(s)));
    }
    const source = readFileSync(path.join(dir, file), 'utf8');
    expect(source, `${file} must not reach the process or load modules dynamically`).not.toMatch(/\bprocess\.|\brequire\(|\bimport\(/);
  });
});
