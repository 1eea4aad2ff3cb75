/**
 * The OpenTelemetry workflow interceptors, for runs that were started in a trace only. A run whose
 * start carried no trace context (tracing off: the client has no interceptor) runs as if they were
 * not bundled, so tracing off adds nothing to an activation, and the choice comes from the run's
 * own history (its start headers), the same on every replay. Not a workflow: the bundle's
 * interceptor module (worker/create-worker.ts).
 */
import type {
  ActivityInput,
  ContinueAsNewInput,
  LocalActivityInput,
  Next,
  SignalWorkflowInput,
  StartChildWorkflowExecutionInput,
  WorkflowExecuteInput,
  WorkflowInboundCallsInterceptor,
  WorkflowInterceptors,
  WorkflowOutboundCallsInterceptor,
} from '@temporalio/workflow';
import { OpenTelemetryInboundInterceptor, OpenTelemetryOutboundInterceptor } from '@temporalio/interceptors-opentelemetry/lib/workflow/index.js';

/** The header the OpenTelemetry client interceptor puts the trace context in. */
const TRACE_HEADER = '_tracer-data';

export function interceptors(): WorkflowInterceptors {
  // Per run: set when its execution starts.
  const run = { traced: false };
  let inbound: OpenTelemetryInboundInterceptor | undefined;
  let outbound: OpenTelemetryOutboundInterceptor | undefined;
  const traced = () => run.traced && (outbound ??= new OpenTelemetryOutboundInterceptor());
  const gatedInbound: WorkflowInboundCallsInterceptor = {
    execute(input: WorkflowExecuteInput, next: Next<WorkflowInboundCallsInterceptor, 'execute'>) {
      run.traced = TRACE_HEADER in input.headers;
      if (!run.traced) return next(input);
      return (inbound ??= new OpenTelemetryInboundInterceptor()).execute(input, next);
    },
  };
  const gatedOutbound: WorkflowOutboundCallsInterceptor = {
    scheduleActivity: (input: ActivityInput, next) => (traced() ? outbound!.scheduleActivity(input, next) : next(input)),
    scheduleLocalActivity: (input: LocalActivityInput, next) => (traced() ? outbound!.scheduleLocalActivity(input, next) : next(input)),
    startChildWorkflowExecution: (input: StartChildWorkflowExecutionInput, next) => (traced() ? outbound!.startChildWorkflowExecution(input, next) : next(input)),
    continueAsNew: (input: ContinueAsNewInput, next) => (traced() ? outbound!.continueAsNew(input, next) : next(input)),
    signalWorkflow: (input: SignalWorkflowInput, next) => (traced() ? outbound!.signalWorkflow(input, next) : next(input)),
    getLogAttributes: (input, next) => (traced() ? outbound!.getLogAttributes(input, next) : next(input)),
  };
  return { inbound: [gatedInbound], outbound: [gatedOutbound] };
}
