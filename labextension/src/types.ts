/**
 * Wire shapes of the server extension's REST API (/jmk/api), mirroring
 * jupyter_mlflow_k8s/labapp/openapi.yaml. Times are epoch seconds.
 */

export type JobState =
  | 'queued'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'cancelled'
  | string;

export interface IJob {
  id: string;
  state: JobState;
  backend: string;
  name: string;
  experiment: string | null;
  created: number | null;
  started: number | null;
  finished: number | null;
  run_id: string | null;
  experiment_id: string | null;
  gpus: number | null;
  message: string | null;
  /** What could not be reached for this job (its tracking server, its cluster), said to the user. */
  notes?: string[];
  exit_code: number | null;
}

export interface IJobList {
  jobs: IJob[];
}

export interface ILogChunk {
  text: string;
  offset: number;
  truncated?: boolean;
}

export interface IStatus {
  version: string;
  tracking_uri: string;
  mlflow_ui_url: string | null;
  state_dir: string;
}

/** A configured pod preset, as GET /jmk/api/presets lists it. */
export interface IPreset {
  name: string;
  /** Its plain values in one line, e.g. 'gpus=1, memory=80Gi'. */
  summary: string;
  gpus: number | null;
  /** Why using it would fail (an unknown key, a bad value), else null. */
  problem: string | null;
}

/** GET /jmk/api/presets: what the launch form offers. */
export interface IPresetList {
  presets: IPreset[];
  backends: string[];
  default_backend: string;
}

export interface IRunRow {
  run_id: string;
  run_name: string | null;
  experiment_id: string;
  experiment_name: string | null;
  status: string;
  start_time: number | null;
  end_time: number | null;
  user: string | null;
  /** Latest values; null where MLflow holds NaN or infinity. */
  metrics: Record<string, number | null>;
  params: Record<string, string>;
  tags: Record<string, string>;
}

export interface IRunPage {
  runs: IRunRow[];
  next_page_token: string | null;
  total: number | null;
}

export interface IRunDetail extends IRunRow {
  metric_keys: string[];
}

export interface IMetricPoint {
  step: number;
  value: number | null;
  timestamp: number;
}

export interface IMetricHistory {
  key: string;
  history: IMetricPoint[];
}

export interface IArtifact {
  path: string;
  is_dir: boolean;
  file_size: number | null;
}

export interface IModelVersion {
  version: string;
  run_id: string | null;
  status: string;
  creation_timestamp: number | null;
  aliases: string[];
  tags: Record<string, string>;
  source: string | null;
}

export interface IRegisteredModel {
  name: string;
  description: string | null;
  latest_versions: IModelVersion[];
  aliases: Record<string, string>;
  tags: Record<string, string>;
}

export interface IAliasResult {
  name: string;
  alias: string;
  version: string;
}

export interface IEndpoint {
  name: string;
  model_uri: string;
  url: string;
  status: string;
  pid: number | null;
  started: number | null;
  backend: string;
}

/** A target (e.g. Kubernetes) whose endpoints could not be listed, and why. */
export interface IUnreachable {
  backend: string;
  message: string;
}

export interface IMetricsFigures {
  requests_total: number;
  errors_total: number;
  requests_per_second: number | null;
  p50_ms: number | null;
  p99_ms: number | null;
  in_flight?: number;
}

export interface IMetricsSnapshot extends IMetricsFigures {
  time: number;
  drift: Record<string, number>;
  versions: Record<string, IMetricsFigures>;
}
