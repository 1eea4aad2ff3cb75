import dgram from 'node:dgram';
import type { AddressInfo } from 'node:net';

/**
 * What the fake DNS server does with a question: answer these addresses, say the name does not
 * exist, fail (SERVFAIL), refuse (REFUSED), say it did not understand the question (FORMERR) or does
 * not support it (NOTIMP), or never answer.
 */
export type DnsBehaviour = string[] | 'nxdomain' | 'servfail' | 'refused' | 'formerr' | 'notimp' | 'silent';

const RCODES = { formerr: 1, servfail: 2, nxdomain: 3, notimp: 4, refused: 5 } as const;

export interface FakeDns {
  /** `127.0.0.1:PORT`, for security.dnsServers. */
  server: string;
  /** Every question received, in order: `name type` (`stall.tenant.test A`). */
  queries: string[];
  /** Resolves once `count` questions have been received in all. */
  received(count: number): Promise<void>;
  close(): Promise<void>;
}

const TYPES: Record<number, string> = { 1: 'A', 28: 'AAAA' };

/**
 * A UDP DNS server on 127.0.0.1 that answers A and AAAA questions as `behave` says: a tenant's
 * name server that never answers reads and ignores ('silent'), like a black-holed authority.
 */
export async function startFakeDns(behave: (name: string, type: string) => DnsBehaviour): Promise<FakeDns> {
  const socket = dgram.createSocket('udp4');
  const queries: string[] = [];
  const waiting: { count: number; resolve: () => void }[] = [];
  socket.on('message', (message, peer) => {
    let offset = 12;
    const labels: string[] = [];
    while (offset < message.length && message[offset] !== 0) {
      const length = message[offset]!;
      labels.push(message.toString('latin1', offset + 1, offset + 1 + length));
      offset += 1 + length;
    }
    const questionEnd = offset + 5;
    const name = labels.join('.').toLowerCase();
    const type = TYPES[message.readUInt16BE(offset + 1)] ?? String(message.readUInt16BE(offset + 1));
    queries.push(`${name} ${type}`);
    for (const waiter of waiting.filter((w) => queries.length >= w.count)) {
      waiting.splice(waiting.indexOf(waiter), 1);
      waiter.resolve();
    }
    const behaviour = behave(name, type);
    if (behaviour === 'silent') return;
    const addresses = typeof behaviour === 'string' ? [] : behaviour.filter((a) => (type === 'A' ? !a.includes(':') : type === 'AAAA' && a.includes(':')));
    const header = Buffer.alloc(12);
    header.writeUInt16BE(message.readUInt16BE(0), 0);
    header.writeUInt16BE(0x8180 | (typeof behaviour === 'string' ? RCODES[behaviour] : 0), 2);
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(addresses.length, 6);
    const answers = addresses.map((address) => {
      const data = address.includes(':') ? ipv6Bytes(address) : Buffer.from(address.split('.').map(Number));
      const record = Buffer.alloc(12);
      record.writeUInt16BE(0xc00c, 0);
      record.writeUInt16BE(address.includes(':') ? 28 : 1, 2);
      record.writeUInt16BE(1, 4);
      record.writeUInt32BE(60, 6);
      record.writeUInt16BE(data.length, 10);
      return Buffer.concat([record, data]);
    });
    socket.send(Buffer.concat([header, message.subarray(12, questionEnd), ...answers]), peer.port, peer.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return {
    server: `127.0.0.1:${(socket.address() as AddressInfo).port}`,
    queries,
    received: (count) => (queries.length >= count ? Promise.resolve() : new Promise((resolve) => waiting.push({ count, resolve }))),
    close: () => new Promise((resolve) => socket.close(() => resolve())),
  };
}

function ipv6Bytes(address: string): Buffer {
  const [head = '', tail = ''] = address.split('::');
  const groups = (part: string) => (part ? part.split(':') : []);
  const all = address.includes('::') ? [...groups(head), ...Array<string>(8 - groups(head).length - groups(tail).length).fill('0'), ...groups(tail)] : groups(head);
  return Buffer.from(all.flatMap((g) => [parseInt(g, 16) >> 8, parseInt(g, 16) & 0xff]));
}
