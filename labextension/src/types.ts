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
  /** A running job's latest mean GPU utilization (percent) from its run's system metrics; null otherwise. */
  gpu_percent?: number | null;
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

/** One GPU's latest use, from system/gpu_{index}_* metrics. */
export interface IGpuUse {
  index: number;
  utilization_percent: number | null;
  memory_mb: number | null;
  memory_percent: number | null;
}

/** GET /jobs/{id}/resources: what a job uses, from its MLflow run's system/* metrics. */
export interface IResources {
  job_id: string;
  run_id: string | null;
  state: JobState;
  cpu_percent: number | null;
  memory_mb: number | null;
  memory_percent: number | null;
  gpus: IGpuUse[];
  /** Epoch seconds of the newest sample. */
  sampled_at: number | null;
  /** [t epoch seconds, value] by time; gpu_percent is the mean over the GPUs. */
  history: {
    cpu_percent: Array<[number, number]>;
    memory_mb: Array<[number, number]>;
    gpu_percent: Array<[number, number]>;
  };
  /** Why there are no numbers (no run yet, no samples yet, the tracking server does not answer). */
  message: string | null;
}

/** The data of the server's job-ended event (schema JOB_ENDED_SCHEMA in notifications.ts). */
export interface IJobEndedEvent {
  job_id: string;
  name: string;
  state: 'succeeded' | 'failed' | 'cancelled';
  backend: string;
  experiment?: string;
  started: number | null;
  finished: number | null;
  duration: number | null;
  run_id: string | null;
  experiment_id: string | null;
  exit_code: number | null;
  message: string;
}

/** One history entry of a trigger (openapi Trigger.recent), newest first. */
export interface ITriggerEvent {
  /** ISO time (UTC). */
  time: string | null;
  /** fired, suggested, duplicate-skipped, run-ended. */
  event: string | null;
  run_id: string | null;
  exit: number | null;
  /** How many new objects the entry carried. */
  objects: number;
  psi: number | null;
}

/** GET /triggers: a pipeline trigger (`jmk trigger add`); times are epoch seconds, null when not yet. */
export interface ITrigger {
  name: string;
  kind: 'new-objects' | 'drift';
  mode: 'run' | 'suggest';
  pipeline: string;
  /** The condition in words, e.g. 'new objects in s3://b/in/ matching *.parquet'. */
  condition: string;
  /** Seconds between two fires. */
  cooldown?: number;
  /** e.g. 'watching', '2 new, waiting', 'running RUN_ID (pid N)', 'error: ...'. */
  state: string;
  last_check: number | null;
  last_fire: number | null;
  /** When the cooldown after the last fire ends. */
  next_eligible: number | null;
  last_run_id?: string | null;
  last_error?: string | null;
  /** New objects seen, or the PSI read at the last check. */
  last_value?: number | null;
  /** New objects not yet handed to a run. */
  pending?: number;
  recent: ITriggerEvent[];
}

export interface ITriggerList {
  triggers: ITrigger[];
}

/** The data of the server's trigger-fired event (labapp/trigger_notifications.py SCHEMA). */
export interface ITriggerFiredEvent {
  trigger: string;
  event: 'fired' | 'suggested';
  mode: 'run' | 'suggest';
  pipeline: string;
  condition: string;
  /** Epoch seconds of the fire. */
  time: number;
  run_id?: string | null;
  objects?: number;
  psi?: number | null;
  /** A suggestion's command, to run it by hand. */
  command?: string | null;
}
