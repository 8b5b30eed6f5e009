/** One run: attributes, params, tags, metric charts (history per key), artifacts, MLflow UI link. */
import * as React from 'react';

import { apiPath, query, requestAPI } from '../api';
import { errorMessage, formatBytes, formatNumber, formatTime } from '../format';
import { mlflowRunUrl, SidebarContext } from '../settings';
import { IArtifact, IMetricHistory, IRunDetail, IRunRow } from '../types';
import { LineChart } from './LineChart';

/** Charts drawn at most; the rest of the keys are listed with their latest value. */
const MAX_CHARTS = 12;

function MetricChart(props: { runId: string; metric: string }): JSX.Element {
  const [history, setHistory] = React.useState<IMetricHistory | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  React.useEffect(() => {
    let cancelled = false;
    requestAPI<IMetricHistory>(apiPath('runs', props.runId, 'metrics', props.metric))
      .then(data => !cancelled && setHistory(data))
      .catch(reason => !cancelled && setError(errorMessage(reason)));
    return () => {
      cancelled = true;
    };
  }, [props.runId, props.metric]);
  if (error) {
    return (
      <div className="jmk-Error" data-testid="jmk-run-metric-error">
        {props.metric}: {error}
      </div>
    );
  }
  const points: Array<[number, number | null]> = (history?.history ?? []).map(p => [p.step, p.value]);
  return (
    <div data-testid="jmk-run-metric-chart" data-metric={props.metric}>
      <LineChart
        title={props.metric}
        testId={`jmk-run-chart-${props.metric}`}
        series={[{ label: props.metric, points }]}
      />
    </div>
  );
}

function KeyValueTable(props: { entries: Record<string, string>; testId: string; rowTestId: string }): JSX.Element {
  const keys = Object.keys(props.entries).sort();
  if (keys.length === 0) {
    return <div className="jmk-Empty">none</div>;
  }
  return (
    <table className="jmk-Table jmk-mod-kv" data-testid={props.testId}>
      <tbody>
        {keys.map(key => (
          <tr key={key} data-testid={props.rowTestId} data-key={key}>
            <th className="jmk-Ellipsis" title={key}>
              {key}
            </th>
            <td className="jmk-Wrap">{props.entries[key]}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export interface IRunViewProps {
  run: IRunRow;
  onBack: () => void;
}

export function RunView(props: IRunViewProps): JSX.Element {
  const { mlflowUrl } = React.useContext(SidebarContext);
  const [detail, setDetail] = React.useState<IRunDetail | null>(null);
  const [artifacts, setArtifacts] = React.useState<IArtifact[] | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const runId = props.run.run_id;

  React.useEffect(() => {
    let cancelled = false;
    setDetail(null);
    setError(null);
    requestAPI<IRunDetail>(apiPath('runs', runId))
      .then(data => !cancelled && setDetail(data))
      .catch(reason => !cancelled && setError(errorMessage(reason)));
    requestAPI<{ files: IArtifact[] }>(apiPath('runs', runId, 'artifacts') + query({ path: '' }))
      .then(data => !cancelled && setArtifacts(data.files))
      .catch(() => !cancelled && setArtifacts(null));
    return () => {
      cancelled = true;
    };
  }, [runId]);

  const run: IRunRow = detail ?? props.run;
  const name = run.run_name || run.tags['mlflow.runName'] || run.run_id;
  const metricKeys = (detail?.metric_keys ?? Object.keys(run.metrics)).slice().sort();

  return (
    <div className="jmk-RunView" data-testid="jmk-run-view" data-run-id={runId}>
      <div className="jmk-RunView-bar">
        <button className="jmk-Button jmk-mod-small" data-testid="jmk-run-back" onClick={props.onBack}>
          ← Runs
        </button>
        {mlflowUrl && (
          <a
            className="jmk-Link"
            data-testid="jmk-run-mlflow-link"
            href={mlflowRunUrl(mlflowUrl, run.experiment_id, run.run_id)}
            target="_blank"
            rel="noopener noreferrer"
          >
            Open in MLflow
          </a>
        )}
      </div>
      <h3 className="jmk-RunView-name" data-testid="jmk-run-view-name" title={name}>
        {name}
      </h3>
      <div className="jmk-Sub">
        {run.run_id} · {run.experiment_name ?? run.experiment_id} · {run.status}
        {run.user ? ` · ${run.user}` : ''}
      </div>
      <div className="jmk-Sub">
        {formatTime(run.start_time)}
        {run.end_time ? ` → ${formatTime(run.end_time)}` : ''}
      </div>
      {error && (
        <div className="jmk-Error" data-testid="jmk-run-error">
          {error}
        </div>
      )}
      <h4 className="jmk-Heading">Metrics</h4>
      {metricKeys.length === 0 && <div className="jmk-Empty">No metrics logged.</div>}
      <div className="jmk-Charts" data-testid="jmk-run-metrics">
        {metricKeys.slice(0, MAX_CHARTS).map(key => (
          <MetricChart key={key} runId={runId} metric={key} />
        ))}
      </div>
      {metricKeys.length > MAX_CHARTS && (
        <KeyValueTable
          entries={Object.fromEntries(
            metricKeys.slice(MAX_CHARTS).map(k => [k, formatNumber(run.metrics[k])])
          )}
          testId="jmk-run-more-metrics"
          rowTestId="jmk-run-metric"
        />
      )}
      <h4 className="jmk-Heading">Parameters</h4>
      <KeyValueTable entries={run.params} testId="jmk-run-params" rowTestId="jmk-run-param" />
      <h4 className="jmk-Heading">Tags</h4>
      <KeyValueTable entries={run.tags} testId="jmk-run-tags" rowTestId="jmk-run-tag" />
      {artifacts && (
        <>
          <h4 className="jmk-Heading">Artifacts</h4>
          {artifacts.length === 0 && <div className="jmk-Empty">none</div>}
          <ul className="jmk-Artifacts" data-testid="jmk-run-artifacts">
            {artifacts.map(a => (
              <li key={a.path} data-testid="jmk-run-artifact">
                {a.path}
                {a.is_dir ? '/' : ` (${formatBytes(a.file_size)})`}
              </li>
            ))}
          </ul>
        </>
      )}
    </div>
  );
}
