/**
 * Runs across experiments: an MLflow filter box, sortable columns (order_by),
 * pages fetched as the virtualized table scrolls, and a run view on click.
 */
import * as React from 'react';

import { APIError, query, requestAPI } from '../api';
import { errorMessage, formatNumber, formatTime } from '../format';
import { mlflowExperimentUrl, SidebarContext } from '../settings';
import { IRunPage, IRunRow } from '../types';
import { RunView } from './RunView';
import { IColumn, ISort, VirtualTable } from './VirtualTable';

const MAX_METRIC_COLUMNS = 3;

/** The MLflow order_by clause for a column key. */
export function orderByClause(sort: ISort): string {
  const dir = sort.ascending ? 'ASC' : 'DESC';
  if (sort.key.startsWith('metric:')) {
    const name = sort.key.slice('metric:'.length);
    const quoted = /^[A-Za-z0-9_]+$/.test(name) ? name : '`' + name.replace(/`/g, '') + '`';
    return `metrics.${quoted} ${dir}`;
  }
  return `attributes.${sort.key} ${dir}`;
}

function runLabel(run: IRunRow): string {
  return run.run_name || run.tags['mlflow.runName'] || run.run_id;
}

interface IQuery {
  filter: string;
  sort: ISort;
  /** Bumped by the refresh button to re-run the same query. */
  nonce: number;
}

export function RunsSection(): JSX.Element {
  const { settings, mlflowUrl } = React.useContext(SidebarContext);
  const [draft, setDraft] = React.useState('');
  const [q, setQ] = React.useState<IQuery>({
    filter: '',
    sort: { key: 'start_time', ascending: false },
    nonce: 0
  });
  const [rows, setRows] = React.useState<IRunRow[]>([]);
  const [total, setTotal] = React.useState<number | null>(null);
  const [nextToken, setNextToken] = React.useState<string | null>(null);
  const [loading, setLoading] = React.useState(false);
  const [loaded, setLoaded] = React.useState(false);
  const [filterError, setFilterError] = React.useState<string | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [metricKeys, setMetricKeys] = React.useState<string[]>([]);
  const [selected, setSelected] = React.useState<IRunRow | null>(null);
  const generation = React.useRef(0);
  const busy = React.useRef(false);

  const fetchPage = React.useCallback(
    async (token: string | null, gen: number) => {
      busy.current = true;
      setLoading(true);
      try {
        const page = await requestAPI<IRunPage>(
          'runs' +
            query({
              filter: q.filter,
              order_by: orderByClause(q.sort),
              max_results: settings.runsPageSize,
              page_token: token
            })
        );
        if (gen !== generation.current) {
          return; // a newer query replaced this one
        }
        setRows(current => (token === null ? page.runs : current.concat(page.runs)));
        setNextToken(page.next_page_token || null);
        setTotal(typeof page.total === 'number' ? page.total : null);
        setFilterError(null);
        setError(null);
        if (token === null) {
          const keys: string[] = [];
          for (const run of page.runs) {
            for (const key of Object.keys(run.metrics)) {
              if (!keys.includes(key)) {
                keys.push(key);
              }
            }
            if (keys.length >= MAX_METRIC_COLUMNS * 4) {
              break;
            }
          }
          keys.sort();
          setMetricKeys(current => {
            // Keep the sorted-by metric visible even when the new page lacks it.
            const sortMetric = q.sort.key.startsWith('metric:') ? q.sort.key.slice(7) : null;
            const chosen = keys.slice(0, MAX_METRIC_COLUMNS);
            if (sortMetric && !chosen.includes(sortMetric)) {
              chosen[Math.min(chosen.length, MAX_METRIC_COLUMNS - 1)] = sortMetric;
            }
            return chosen.length ? chosen : current.filter(k => k === sortMetric);
          });
        }
      } catch (reason) {
        if (gen !== generation.current) {
          return;
        }
        if (reason instanceof APIError && reason.status === 400) {
          setFilterError(reason.message);
          if (token === null) {
            setRows([]);
            setTotal(null);
            setNextToken(null);
          }
        } else {
          setError(errorMessage(reason));
        }
      } finally {
        if (gen === generation.current) {
          busy.current = false;
          setLoading(false);
          setLoaded(true);
        }
      }
    },
    [q, settings.runsPageSize]
  );

  React.useEffect(() => {
    generation.current += 1;
    busy.current = false;
    setNextToken(null);
    void fetchPage(null, generation.current);
  }, [fetchPage]);

  const onNeedRows = React.useCallback(() => {
    if (nextToken && !busy.current) {
      void fetchPage(nextToken, generation.current);
    }
  }, [nextToken, fetchPage]);

  const onSort = React.useCallback((key: string) => {
    setQ(current => ({
      ...current,
      sort: {
        key,
        // A new column starts descending for time/metrics, ascending for names.
        ascending: current.sort.key === key ? !current.sort.ascending : key === 'run_name' || key === 'status'
      }
    }));
  }, []);

  const apply = () => setQ(current => ({ ...current, filter: draft.trim(), nonce: current.nonce + 1 }));

  const columns = React.useMemo<IColumn<IRunRow>[]>(() => {
    const base: IColumn<IRunRow>[] = [
      {
        key: 'run_name',
        title: 'Run',
        width: 'minmax(0, 2fr)',
        sortable: true,
        render: run => <span data-testid="jmk-run-name">{runLabel(run)}</span>,
        tooltip: run => `${runLabel(run)} (${run.run_id})`
      },
      {
        key: 'experiment',
        title: 'Experiment',
        width: 'minmax(0, 1fr)',
        render: run => run.experiment_name ?? run.experiment_id,
        tooltip: run => run.experiment_name ?? run.experiment_id
      },
      {
        key: 'status',
        title: 'Status',
        width: 'minmax(0, 72px)',
        sortable: true,
        render: run => <span className={`jmk-State jmk-mod-${run.status.toLowerCase()}`}>{run.status}</span>
      },
      {
        key: 'start_time',
        title: 'Started',
        width: 'minmax(0, 1.3fr)',
        sortable: true,
        render: run => formatTime(run.start_time).slice(5, 16),
        tooltip: run => formatTime(run.start_time)
      }
    ];
    const metrics = metricKeys.map<IColumn<IRunRow>>(key => ({
      key: `metric:${key}`,
      title: key,
      width: 'minmax(0, 1fr)',
      sortable: true,
      render: run => formatNumber(run.metrics[key]),
      tooltip: run => (key in run.metrics ? `${key} = ${run.metrics[key]}` : '')
    }));
    return base.concat(metrics);
  }, [metricKeys]);

  const shownTotal = total ?? (nextToken ? rows.length + 1 : rows.length);
  return (
    <div className="jmk-Runs">
      {selected && <RunView run={selected} onBack={() => setSelected(null)} />}
      {/* Hidden, not unmounted, while a run is open: the table keeps its rows and scroll position. */}
      <div className={`jmk-Runs-list${selected ? ' jmk-mod-hidden' : ''}`}>
      <form
        className="jmk-Filter"
        onSubmit={event => {
          event.preventDefault();
          apply();
        }}
      >
        <input
          className="jmk-Input"
          data-testid="jmk-runs-filter"
          placeholder="MLflow filter, e.g. metrics.loss < 0.1 and params.lr = '0.01'"
          value={draft}
          spellCheck={false}
          onChange={event => setDraft(event.target.value)}
        />
        <button type="submit" className="jmk-Button" data-testid="jmk-runs-filter-apply">
          Filter
        </button>
      </form>
      {filterError && (
        <div className="jmk-Error" data-testid="jmk-runs-filter-error">
          {filterError}
        </div>
      )}
      {error && (
        <div className="jmk-Error" data-testid="jmk-runs-error">
          {error}
        </div>
      )}
      <div className="jmk-Runs-bar">
        <span data-testid="jmk-runs-count" data-loaded={rows.length} data-total={total ?? ''}>
          {loaded ? `${rows.length}${total !== null ? ` of ${total}` : nextToken ? '+' : ''} runs` : ''}
          {loading ? ' · loading…' : ''}
        </span>
        <button
          className="jmk-Button jmk-mod-small"
          data-testid="jmk-runs-refresh"
          onClick={() => setQ(current => ({ ...current, nonce: current.nonce + 1 }))}
        >
          Refresh
        </button>
      </div>
      {loaded && rows.length === 0 && !filterError && !error ? (
        <div className="jmk-Empty" data-testid="jmk-runs-empty">
          No runs{q.filter ? ' match this filter' : ' yet'}.
        </div>
      ) : (
        <VirtualTable<IRunRow>
          columns={columns}
          rows={rows}
          total={shownTotal}
          rowKey={run => run.run_id}
          sort={q.sort}
          onSort={onSort}
          onRowClick={setSelected}
          onNeedRows={onNeedRows}
          testId="jmk-runs-table"
          rowTestId="jmk-run-row"
        />
      )}
      {mlflowUrl && rows.length > 0 && (
        <div className="jmk-Sub">
          Open a run to see its metrics, or{' '}
          <a
            className="jmk-Link"
            href={mlflowExperimentUrl(mlflowUrl, rows[0].experiment_id)}
            target="_blank"
            rel="noopener noreferrer"
            data-testid="jmk-runs-mlflow-link"
          >
            open the MLflow UI
          </a>
          .
        </div>
      )}
      </div>
    </div>
  );
}
