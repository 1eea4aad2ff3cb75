import { pino, type Logger } from 'pino';

export type { Logger };

/** Structured logs; keys that could hold a secret are redacted wherever they appear. */
export function createLogger(name: string, level = process.env.LOG_LEVEL ?? 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    {
      name,
      level,
      redact: {
        paths: ['token', '*.token', 'secret', '*.secret', 'authorization', '*.authorization', 'headers.authorization', 'req.headers.authorization', 'credential', '*.credential', 'privateKey', '*.privateKey', 'password', '*.password'],
        censor: '[redacted]',
      },
    },
    destination,
  );
}
