/**
 * Serving: endpoints (polled) and live charts of the selected one from the SSE
 * stream /endpoints/{name}/metrics/stream: requests/s, p50/p99 latency,
 * error rate and the largest drift PSI.
 */
import * as React from 'react';

import { apiPath, query, requestAPI } from '../api';
import { errorMessage, formatNumber } from '../format';
import { useEventStream, usePoll } from '../hooks';
import { SidebarContext } from '../settings';
import { IEndpoint, IMetricsSnapshot, IUnreachable } from '../types';
import { LineChart } from './LineChart';
import { messageOf } from './LogViewer';

/** Points kept per chart (two minutes at one per second). */
const WINDOW = 120;

interface IPoint {
  time: number;
  rps: number | null;
  p50: number | null;
  p99: number | null;
  /** Failed share of the requests since the previous snapshot, in percent. */
  errorRate: number | null;
  drift: number | null;
  driftFeature: string | null;
}

export function toPoint(snapshot: IMetricsSnapshot, previous: IMetricsSnapshot | null): IPoint {
  let errorRate: number | null = null;
  if (previous) {
    const requests = (snapshot.requests_total ?? 0) - (previous.requests_total ?? 0);
    const errors = (snapshot.errors_total ?? 0) - (previous.errors_total ?? 0);
    errorRate = requests > 0 ? Math.max(0, (100 * errors) / requests) : 0;
  }
  let drift: number | null = null;
  let driftFeature: string | null = null;
  for (const [feature, psi] of Object.entries(snapshot.drift ?? {})) {
    if (typeof psi === 'number' && isFinite(psi) && (drift === null || psi > drift)) {
      drift = psi;
      driftFeature = feature;
    }
  }
  return {
    time: snapshot.time,
    rps: snapshot.requests_per_second ?? null,
    p50: snapshot.p50_ms,
    p99: snapshot.p99_ms,
    errorRate,
    drift,
    driftFeature
  };
}

function EndpointCharts(props: { endpoint: IEndpoint }): JSX.Element {
  const { settings } = React.useContext(SidebarContext);
  const name = props.endpoint.name;
  const [points, setPoints] = React.useState<IPoint[]>([]);
  const [latest, setLatest] = React.useState<IMetricsSnapshot | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const previous = React.useRef<IMetricsSnapshot | null>(null);

  React.useEffect(() => {
    setPoints([]);
    setLatest(null);
    setError(null);
    previous.current = null;
  }, [name, settings.metricsInterval]);

  useEventStream(
    `${name}|${settings.metricsInterval}`,
    () => apiPath('endpoints', name, 'metrics', 'stream') + query({ interval: settings.metricsInterval }),
    event => {
      if (event.event === 'error') {
        setError(`Scraping ${name} failed: ${messageOf(event.data)}`); // transient: the stream goes on
        return undefined;
      }
      if (event.event === 'end') {
        setError(`Stopped: ${messageOf(event.data)}`);
        return 'stop';
      }
      if (event.event !== 'metrics') {
        return undefined;
      }
      const snapshot = JSON.parse(event.data) as IMetricsSnapshot;
      const point = toPoint(snapshot, previous.current);
      previous.current = snapshot;
      setLatest(snapshot);
      setError(null);
      setPoints(current => {
        const next = current.concat([point]);
        return next.length > WINDOW ? next.slice(next.length - WINDOW) : next;
      });
      return undefined;
    },
    reason => setError(errorMessage(reason))
  );

  const t0 = points.length ? points[0].time : 0;
  const xs = (f: (p: IPoint) => number | null) => points.map(p => [p.time - t0, f(p)] as [number, number | null]);
  const last = points.length ? points[points.length - 1] : null;
  const versions = latest ? Object.entries(latest.versions ?? {}) : [];

  return (
    <div className="jmk-EndpointCharts" data-testid="jmk-endpoint-charts" data-endpoint={name} data-points={points.length}>
      {error && (
        <div className="jmk-Error" data-testid="jmk-serving-error">
          {error}
        </div>
      )}
      <div className="jmk-Sub" data-testid="jmk-serving-summary">
        {latest
          ? `${latest.requests_total} requests, ${latest.errors_total} errors` +
            (latest.in_flight !== undefined ? `, ${latest.in_flight} in flight` : '') +
            (last?.driftFeature ? ` · most drift: ${last.driftFeature}` : '')
          : 'waiting for metrics…'}
      </div>
      <LineChart title="Requests/s" testId="jmk-chart-rps" yMin={0} series={[{ label: 'req/s', points: xs(p => p.rps) }]} />
      <LineChart
        title="Latency"
        testId="jmk-chart-latency"
        unit="ms"
        yMin={0}
        series={[
          { label: 'p50', points: xs(p => p.p50) },
          { label: 'p99', points: xs(p => p.p99) }
        ]}
      />
      <LineChart
        title="Error rate"
        testId="jmk-chart-error-rate"
        unit="%"
        yMin={0}
        series={[{ label: 'errors', points: xs(p => p.errorRate) }]}
      />
      <LineChart
        title="Max drift (PSI)"
        testId="jmk-chart-drift"
        yMin={0}
        series={[{ label: 'PSI', points: xs(p => p.drift) }]}
      />
      {versions.length > 1 && (
        <table className="jmk-Table" data-testid="jmk-serving-versions">
          <thead>
            <tr>
              <th>Version</th>
              <th>req/s</th>
              <th>p50 ms</th>
              <th>p99 ms</th>
              <th>errors</th>
            </tr>
          </thead>
          <tbody>
            {versions.map(([version, v]) => (
              <tr key={version} data-testid="jmk-serving-version" data-version={version}>
                <td>{version}</td>
                <td>{formatNumber(v.requests_per_second)}</td>
                <td>{formatNumber(v.p50_ms)}</td>
                <td>{formatNumber(v.p99_ms)}</td>
                <td>{v.errors_total}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

export function ServingSection(): JSX.Element {
  const { settings } = React.useContext(SidebarContext);
  const [endpoints, setEndpoints] = React.useState<IEndpoint[] | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [unreachable, setUnreachable] = React.useState<IUnreachable[]>([]);
  const [selected, setSelected] = React.useState<string | null>(null);

  usePoll(
    'endpoints',
    async () => {
      try {
        const data = await requestAPI<{ endpoints: IEndpoint[]; unreachable?: IUnreachable[] }>('endpoints');
        setEndpoints(data.endpoints);
        setUnreachable(data.unreachable ?? []);
        setError(null);
        // Show the first endpoint's charts without a click when nothing is chosen.
        setSelected(current =>
          current !== null && data.endpoints.some(e => e.name === current) ? current : (data.endpoints[0]?.name ?? null)
        );
      } catch (reason) {
        setError(errorMessage(reason));
        throw reason;
      }
    },
    // The list changes rarely; the charts are the live part.
    Math.max(settings.pollInterval, 5)
  );

  const endpoint = endpoints?.find(e => e.name === selected) ?? null;
  return (
    <div className="jmk-Serving">
      {error && (
        <div className="jmk-Error" data-testid="jmk-endpoints-error">
          {error}
        </div>
      )}
      {unreachable.map(u => (
        <div className="jmk-Error" data-testid="jmk-endpoints-unreachable" data-backend={u.backend} key={u.backend}>
          {`${u.backend} endpoints not listed: ${u.message}`}
        </div>
      ))}
      {endpoints === null && !error && <div className="jmk-Empty">Loading endpoints…</div>}
      {endpoints !== null && endpoints.length === 0 && (
        <div className="jmk-Empty" data-testid="jmk-endpoints-empty">
          No serving endpoints. Start one with %serve models:/NAME@ALIAS.
        </div>
      )}
      {endpoints !== null && endpoints.length > 0 && (
        <table className="jmk-Table" data-testid="jmk-endpoints-table">
          <tbody>
            {endpoints.map(e => (
              <tr
                key={e.name}
                className={`jmk-Row${selected === e.name ? ' jmk-mod-selected' : ''}`}
                data-testid="jmk-endpoint-row"
                data-endpoint={e.name}
                data-status={e.status}
                onClick={() => setSelected(e.name)}
              >
                <td className="jmk-Cell-name">
                  <div className="jmk-Ellipsis">{e.name}</div>
                  <div className="jmk-Sub jmk-Ellipsis" title={`${e.model_uri} at ${e.url}`}>
                    {e.model_uri} · {e.backend}
                  </div>
                </td>
                <td>
                  <span className={`jmk-State jmk-mod-${e.status}`}>{e.status}</span>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {endpoint && <EndpointCharts key={endpoint.name} endpoint={endpoint} />}
    </div>
  );
}
