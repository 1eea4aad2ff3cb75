/**
 * The floor under a webhook acknowledgement (bench/ingest.ts): a bare node:http server that reads
 * each request's body (the row the receiver would store, as JSON) and commits the receiver's INSERT
 * into a scratch copy of the intake table with a pool of its own, then answers 202. Nothing else:
 * no framework, no verification or normalization, no relay, no Temporal client. Its latency under
 * the same load is what any acknowledgement that stores a row gets on the machine.
 * ACK_FLOOR_DATABASE_URL and ACK_FLOOR_PORT say where; each answer carries `x-insert-ms`, the
 * insert's round trip (pool checkout included).
 */
import { createServer } from 'node:http';
import pg from 'pg';

const { ACK_FLOOR_DATABASE_URL: databaseUrl, ACK_FLOOR_PORT: port } = process.env;
if (!databaseUrl || !port) throw new Error('ACK_FLOOR_DATABASE_URL and ACK_FLOOR_PORT are required');

// The receiver's statement (lib/db/repositories/deliveries.ts storeDelivery), on the scratch table.
const INSERT = `insert into "ack_floor_deliveries" ("provider", "delivery_id", "connection_id", "events", "installation_id", "instance_url", "start") values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing`;
// The API's pool size (lib/db/index.ts createDb's default).
const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 });
pool.on('error', () => {});

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => {
    const row = JSON.parse(Buffer.concat(chunks).toString('utf8')) as (string | null)[];
    const began = performance.now();
    pool.query(INSERT, row).then(
      () => res.writeHead(202, { 'content-type': 'application/json', 'x-insert-ms': (performance.now() - began).toFixed(2) }).end('{"status":"accepted"}'),
      (error: Error) => res.writeHead(503, { 'content-type': 'text/plain' }).end(error.message),
    );
  });
});
server.keepAliveTimeout = 5000;
server.listen(Number(port), '127.0.0.1', () => console.log('ack floor listening'));
process.once('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => void pool.end().then(() => process.exit(0)));
});
