import { context, propagation, ROOT_CONTEXT, trace, type Context } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { Resource } from '@opentelemetry/resources';
import { BatchSpanProcessor, NoopSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { addLogFields } from './logger.ts';

/** tracing.* of the config. */
export interface TracingConfig {
  enabled: boolean;
  /** OTLP/HTTP traces endpoint (default: the exporter's own, http://localhost:4318/v1/traces, or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). */
  endpoint?: string;
  /** Sent with every export (a collector's API key). */
  headers?: Record<string, string>;
  /** Share of new traces kept (a delivery's whole trace is kept or dropped together). */
  sampleRatio?: number;
}

/**
 * What a process traces with. Off (the default), nothing is registered: the OpenTelemetry API
 * stays its no-op self, the API adds no middleware, clients and activities get no interceptor,
 * and the spans the workflow interceptors make inside the sandbox are dropped by the sink.
 */
export interface Tracing {
  enabled: boolean;
  /** Where finished spans go; the worker's workflow-span sink hands its spans here too. */
  spanProcessor: SpanProcessor;
  resource: Resource;
  /** Flushes what is buffered and stops exporting. */
  shutdown(): Promise<void>;
}

export const TRACING_OFF: Tracing = { enabled: false, spanProcessor: new NoopSpanProcessor(), resource: Resource.empty(), shutdown: async () => {} };

let registered: Tracing | undefined;

/**
 * Registers the process's tracer provider (once: OpenTelemetry's globals are per process) with an
 * OTLP/HTTP exporter, or with `spanProcessor` (tests: an in-memory exporter).
 */
export function startTracing(config: TracingConfig, options: { serviceName: string; spanProcessor?: SpanProcessor }): Tracing {
  if (!config.enabled) return TRACING_OFF;
  if (registered) return registered;
  const resource = new Resource({ 'service.name': options.serviceName });
  const spanProcessor = options.spanProcessor ?? new BatchSpanProcessor(new OTLPTraceExporter({ ...(config.endpoint ? { url: config.endpoint } : {}), headers: config.headers ?? {} }));
  const provider = new NodeTracerProvider({
    resource,
    // A run's spans follow the sampled flag of the Temporal header our own code wrote; every API request starts its trace (api/request-context.ts).
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.sampleRatio ?? 1) }),
    spanProcessors: [spanProcessor],
  });
  // W3C trace context and the AsyncLocalStorage context manager.
  provider.register();
  // Every log line written inside a span names its trace, so logs and traces join up.
  addLogFields(() => {
    const span = trace.getActiveSpan()?.spanContext();
    return span && span.traceId !== '00000000000000000000000000000000' ? { traceId: span.traceId, spanId: span.spanId } : undefined;
  });
  registered = { enabled: true, spanProcessor, resource, shutdown: () => provider.shutdown() };
  return registered;
}

/** The active trace context as a W3C `traceparent` (to store with work that continues elsewhere), or undefined. */
export function currentTraceparent(): string | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier.traceparent;
}

/** The context a stored `traceparent` continues (the root context when there is none). */
export function contextFromTraceparent(traceparent: string | undefined): Context {
  return traceparent ? propagation.extract(ROOT_CONTEXT, { traceparent }) : ROOT_CONTEXT;
}
