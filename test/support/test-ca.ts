import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

/**
 * A certificate authority made by a test (openssl, P-256, valid two days) in `dir`: ca.pem/ca.key,
 * and `issue(name, extensions)` writes `name`.pem/`name`.key signed by it.
 */
export interface TestCa {
  /** The path of a file in the CA's directory. */
  file(name: string): string;
  issue(name: string, extensions: string): void;
}

export const SERVER_EXTENSIONS = (...subjectAltNames: string[]) =>
  `basicConstraints=critical,CA:FALSE\nsubjectAltName=${subjectAltNames.join(',')}\nextendedKeyUsage=serverAuth\n`;
export const CLIENT_EXTENSIONS = 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n';

export function makeTestCa(dir: string): TestCa {
  const file = (name: string) => path.join(dir, name);
  const openssl = (...args: string[]) => {
    const result = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    if (result.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${result.stderr}`);
  };
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', file('ca.key'), '-subj', '/CN=forgelink test CA', '-days', '2', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign', '-out', file('ca.pem'));
  return {
    file,
    issue(name, extensions) {
      openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', file(`${name}.key`));
      openssl('req', '-new', '-key', file(`${name}.key`), '-subj', `/CN=${name}`, '-out', file(`${name}.csr`));
      writeFileSync(file(`${name}.ext`), extensions);
      openssl('x509', '-req', '-in', file(`${name}.csr`), '-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', file(`${name}.ext`), '-out', file(`${name}.pem`));
    },
  };
}
