import type http from 'node:http';
import { checkAnswerText, messageExcerpt, refusedUnparsed } from './answer.ts';
import { abandonRequest, activityCancellations, callDeadline, NULL_BODY_STATUSES, OutboundRefusedError, ResponseTooLargeError, type Outbound } from '../outbound.ts';

/** What typed-rest-client hands its raw request: the options for http(s).request and the module it calls. */
interface RequestInfo {
  parsedUrl: URL;
  httpModule: Pick<typeof http, 'request'>;
  options: Omit<http.RequestOptions, 'headers'> & { headers: http.OutgoingHttpHeaders };
}

/** typed-rest-client's answer: the message, and a read of it whole (which it would gunzip without a limit). */
interface SdkResponse {
  message: http.IncomingMessage;
  readBody(): Promise<string>;
}

/**
 * A typed-rest-client HttpClient: every request goes through requestRaw, with the agent _getAgent
 * picks; request() sends a read again on 502/503/504 or a network error while _allowRetries.
 */
interface SdkHttpClient {
  _getAgent(url: URL): http.Agent;
  requestRaw(info: RequestInfo, data: unknown): Promise<SdkResponse>;
  _allowRetries: boolean;
  _maxRetries: number;
}

/** The typed-rest-client clients inside an azure-devops-node-api client (WebApi has only `rest`). */
interface SdkClients {
  http?: SdkHttpClient;
  rest?: {
    client?: SdkHttpClient;
    processResponse?: (res: SdkResponse, options: unknown) => Promise<unknown>;
  };
}

/**
 * How long one SDK request may take. Its answer's headers within `answerMs`; then its body may be
 * silent at most `answerMs` at a time and must be complete within `completeMs` of the request: a
 * project's repositories come in one unpaged answer (up to the 8 MiB read cap), which a slow
 * on-premises server may send steadily for longer than a request's usual deadline.
 */
export interface SdkCallLimits {
  answerMs: number;
  completeMs: number;
}

/**
 * Makes an azure-devops-node-api client's HTTP clients (typed-rest-client) call out as the worker's
 * other outbound calls do (activities/outbound.ts):
 * - through the guarded keep-alive pool for the organization's protocol, never an agent of their own
 *   nor a tunnel through HTTPS_PROXY/HTTP_PROXY, so every socket has the connect-time address checks
 *   (resource-area URLs the server names included) and the read cap; and connections are shared,
 *   where typed-rest-client would open one per request or keep a pool per client object (several per
 *   adapter, one adapter per activity);
 * - uncompressed: each request asks for identity and a successful answer with a body in any other
 *   encoding is refused unread, since typed-rest-client gunzips an answer whole with no limit on
 *   what it inflates (the read cap counts the compressed bytes); another answer's body is dropped;
 * - within `limits` (SdkCallLimits), and ended with the activity's cancellation: either destroys the
 *   socket. The SDK's socketTimeout counts only silence, so a server sending a byte now and then
 *   kept a call open for ever;
 * - once: the activity's retry policy is the only one. The SDK makes its locations client with
 *   5 retries of its own whatever the options say, each retry within the limits above: a server
 *   answering its discovery 503 with a body trickling for just under 120 s held a step ~12 minutes;
 * - to the organization's origin only, the one whose address and protocol were checked and the
 *   only one the PAT is for (the adapter refuses a resource area placed elsewhere, naming it).
 */
export function guardSdkClient<T extends object>(client: T, organizationUrl: string, agents: Outbound['agents'], limits: SdkCallLimits): T {
  const agent = organizationUrl.startsWith('https:') ? agents.https : agents.http;
  const origin = new URL(organizationUrl).origin;
  const { http: direct, rest } = client as SdkClients;
  for (const httpClient of [direct, rest?.client]) {
    if (!httpClient) continue;
    // Fields request() reads on every call: a typed-rest-client without them retries in some other way.
    if (typeof httpClient._allowRetries !== 'boolean' || typeof httpClient._maxRetries !== 'number') {
      throw new Error("typed-rest-client's HttpClient no longer has _allowRetries/_maxRetries: turn its retries off another way");
    }
    httpClient._allowRetries = false;
    httpClient._maxRetries = 0;
    httpClient._getAgent = () => agent;
    const requestRaw = httpClient.requestRaw.bind(httpClient);
    httpClient.requestRaw = (info, data) =>
      info.parsedUrl.origin === origin
        ? boundedRequest(info, agent, (bounded) => requestRaw(bounded, data), limits)
        : Promise.reject(new OutboundRefusedError(`an Azure DevOps SDK request to ${info.parsedUrl.origin} refused: the PAT goes to the organization's origin ${origin} only`));
  }
  // typed-rest-client drops an answer it failed to read and resolves null, as for a 404: an answer
  // cut at the limit or the deadline made a project's repositories an empty list. The read's error
  // is thrown instead. Every answer the SDK parses comes through here (RestClient.processResponse,
  // JSON.parse of the whole text): it is counted first, and one too costly to parse is refused
  // unparsed (activities/providers/answer.ts; an error status's own failure wins, its body unparsed).
  const processResponse = rest?.processResponse?.bind(rest);
  if (rest && processResponse) {
    rest.processResponse = async (res, options) => {
      let readError: unknown;
      const readBody = res.readBody.bind(res);
      const failed = (res.message.statusCode ?? 0) > 299;
      res.readBody = () =>
        readBody()
          .then((text) => {
            if (failed) return errorBody(origin, text);
            checkAnswerText('azure-devops', origin, text);
            return text;
          })
          .catch((error: unknown) => {
            readError = error;
            throw error;
          });
      const result = await processResponse(res, options);
      if (readError !== undefined) throw readError;
      return result;
    };
  }
  return client;
}

/**
 * An error answer's body as the SDK may read it: only its message, a bounded string. The SDK makes
 * its error from the body's `message` (new Error(obj.message)) or the whole text: a tenant's
 * `{"message":[[[…]]]}` overflowed the stack there (a RangeError, retried as unavailable), and its
 * text could be megabytes. One too costly to parse is not parsed: the status decides.
 */
function errorBody(origin: string, text: string): string {
  if (!text) return text;
  let message: unknown;
  try {
    checkAnswerText('azure-devops', origin, text);
    message = (JSON.parse(text) as { message?: unknown } | null)?.message;
  } catch (error) {
    if (!refusedUnparsed(error) && !(error instanceof SyntaxError)) throw error;
    message = error instanceof SyntaxError ? text.trim() : undefined;
  }
  return message === undefined || message === null || message === '' ? '' : JSON.stringify({ message: messageExcerpt(message) });
}

function boundedRequest(info: RequestInfo, agent: http.Agent, send: (info: RequestInfo) => Promise<SdkResponse>, { answerMs, completeMs }: SdkCallLimits): Promise<SdkResponse> {
  const deadline = callDeadline(completeMs, activityCancellations(), 'answer not complete');
  if (deadline.signal.aborted) return Promise.reject(deadline.signal.reason);
  let request: http.ClientRequest | undefined;
  let message: http.IncomingMessage | undefined;
  /** What ended the call early: its deadline, its cancellation, or its answer's wait or silence. */
  let endedBy: unknown;
  /**
   * Settles the call when it ends before its answer: typed-rest-client waits for the request's
   * 'error', which a request still queued in the agent (every socket to its host busy) never emits
   * on Node 20 until one frees, up to the longest deadline of the calls holding them.
   */
  let endedUnanswered!: (reason: unknown) => void;
  const unanswered = new Promise<never>((_, reject) => (endedUnanswered = reject));
  const end = (reason: unknown) => {
    endedBy ??= reason;
    message?.destroy(reason as Error);
    if (request) abandonRequest(agent, request, reason);
    endedUnanswered(reason);
  };
  deadline.signal.addEventListener('abort', () => end(deadline.signal.reason), { once: true });
  // Until the answer's headers, then from one piece of its body to the next.
  const wait = setTimeout(() => end(new DOMException(message ? `answer silent for ${answerMs} ms` : `no answer within ${answerMs} ms`, 'TimeoutError')), answerMs);
  wait.unref?.();
  const finish = () => {
    clearTimeout(wait);
    deadline.done();
  };
  const { httpModule } = info;
  const bounded: RequestInfo = {
    ...info,
    options: { ...info.options, headers: { ...info.options.headers, 'accept-encoding': 'identity' } },
    httpModule: { request: ((options: http.RequestOptions, callback: (res: http.IncomingMessage) => void) => (request = httpModule.request(options, callback))) as typeof http.request },
  };
  /** Why the read failed: the deadline or cancellation, the read cap (the read itself sees only "aborted"), or its own error. */
  const cause = (error: unknown) => {
    if (endedBy !== undefined) return endedBy;
    const cut = message?.socket?.errored;
    return cut instanceof ResponseTooLargeError ? cut : error;
  };
  return Promise.race([send(bounded), unanswered]).then(
    (res) => {
      message = res.message;
      // Errors reach whoever reads the answer; one nobody reads, ended at its deadline, must not fail the process.
      message.on('error', () => {});
      const encoding = String(message.headers['content-encoding'] ?? '').trim().toLowerCase() || 'identity';
      if (encoding !== 'identity') {
        message.destroy();
        finish();
        const status = message.statusCode ?? 0;
        if (status >= 200 && status < 300 && !NULL_BODY_STATUSES.has(status) && info.options.method !== 'HEAD') {
          throw new OutboundRefusedError(
            `${info.parsedUrl.origin} answered with Content-Encoding ${encoding}, though asked for none: not decoded (a proxy in front of the server compresses despite Accept-Encoding: identity; configure it to honour that)`,
          );
        }
        // An error's body (a gateway's 503) or a bodiless answer's is dropped unread: its status and
        // Retry-After are the answer, so a busy server stays a retryable failure.
        res.readBody = () => Promise.resolve('');
        return res;
      }
      if (message.closed) finish();
      else {
        // The socket's reads, not the message's (a data listener would start the body flowing before the SDK reads it).
        const socket = message.socket;
        const heard = () => wait.refresh();
        wait.refresh();
        socket?.on('data', heard);
        message.once('close', () => {
          socket?.off('data', heard);
          finish();
        });
      }
      const readBody = res.readBody.bind(res);
      res.readBody = () => readBody().catch((error: unknown) => Promise.reject(cause(error)));
      return res;
    },
    (error: unknown) => {
      finish();
      throw cause(error);
    },
  );
}
