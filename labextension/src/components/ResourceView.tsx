/**
 * What a job uses (CPU, memory, each GPU), from /jobs/{id}/resources (its MLflow
 * run's system/* metrics): numbers and small charts, polled while the job runs
 * and the sidebar is visible.
 */
import * as React from 'react';

import { apiPath, requestAPI } from '../api';
import { errorMessage, formatNumber, formatTime } from '../format';
import { usePoll } from '../hooks';
import { SidebarContext } from '../settings';
import { IResources } from '../types';
import { LineChart } from './LineChart';

const ACTIVE = new Set(['queued', 'running']);

function percent(value: number | null): string {
  return value === null ? '–' : `${formatNumber(Math.round(value * 10) / 10)}%`;
}

function megabytes(value: number | null): string {
  if (value === null) {
    return '–';
  }
  return value >= 1024 ? `${formatNumber(Math.round((value / 1024) * 100) / 100)} GB` : `${Math.round(value)} MB`;
}

export interface IResourceViewProps {
  jobId: string;
  /** The job's state as listed: the view polls while it is queued or running. */
  state: string;
}

export function ResourceView(props: IResourceViewProps): JSX.Element {
  const { settings } = React.useContext(SidebarContext);
  const [data, setData] = React.useState<IResources | null>(null);
  const [error, setError] = React.useState<string | null>(null);

  const load = React.useCallback(async () => {
    try {
      setData(await requestAPI<IResources>(apiPath('jobs', props.jobId, 'resources')));
      setError(null);
    } catch (reason) {
      setError(errorMessage(reason));
      throw reason; // let the poll back off
    }
  }, [props.jobId]);

  // Once for an ended job (its last numbers); every pollInterval while it runs.
  React.useEffect(() => {
    load().catch(() => undefined);
  }, [load, props.state]);
  usePoll(`resources:${props.jobId}`, load, settings.pollInterval, ACTIVE.has(props.state));

  if (error) {
    return (
      <div className="jmk-Error" data-testid="jmk-resources-error">
        Resource use: {error}
      </div>
    );
  }
  if (data === null) {
    return <div className="jmk-Empty">Loading resource use…</div>;
  }
  const points = (series: Array<[number, number]>): Array<[number, number | null]> => series.map(([t, v]) => [t, v]);
  return (
    <div className="jmk-Resources" data-testid="jmk-resources" data-job-id={props.jobId}>
      {data.message && (
        <div className="jmk-Sub" data-testid="jmk-resources-message">
          {data.message}
        </div>
      )}
      {!data.message && (
        <>
          <div className="jmk-Resources-numbers">
            <span data-testid="jmk-resources-cpu" data-value={data.cpu_percent ?? ''}>
              CPU {percent(data.cpu_percent)}
            </span>
            <span data-testid="jmk-resources-memory" data-value={data.memory_mb ?? ''}>
              Memory {megabytes(data.memory_mb)}
              {data.memory_percent !== null ? ` (${percent(data.memory_percent)})` : ''}
            </span>
            {data.gpus.map(gpu => (
              <span
                key={gpu.index}
                data-testid="jmk-resources-gpu"
                data-gpu={gpu.index}
                data-value={gpu.utilization_percent ?? ''}
              >
                GPU {gpu.index} {percent(gpu.utilization_percent)}
                {gpu.memory_mb !== null ? ` · ${megabytes(gpu.memory_mb)}` : ''}
              </span>
            ))}
          </div>
          <div className="jmk-Sub" title="the newest sample of the job's system metrics">
            sampled {formatTime(data.sampled_at)}
          </div>
          <div className="jmk-Charts">
            <LineChart
              title="CPU"
              unit="%"
              yMin={0}
              testId="jmk-resources-chart-cpu"
              series={[{ label: 'cpu', points: points(data.history.cpu_percent) }]}
            />
            <LineChart
              title="Memory"
              unit="MB"
              yMin={0}
              testId="jmk-resources-chart-memory"
              series={[{ label: 'memory', points: points(data.history.memory_mb) }]}
            />
            {data.gpus.length > 0 && (
              <LineChart
                title={data.gpus.length > 1 ? `GPU (mean of ${data.gpus.length})` : 'GPU'}
                unit="%"
                yMin={0}
                testId="jmk-resources-chart-gpu"
                series={[{ label: 'gpu', points: points(data.history.gpu_percent) }]}
              />
            )}
          </div>
        </>
      )}
    </div>
  );
}
