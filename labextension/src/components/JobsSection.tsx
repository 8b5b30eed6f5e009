/** Jobs: live states (polled), a log viewer for the selected job, cancel. */
import * as React from 'react';

import { APIError, apiPath, query, requestAPI } from '../api';
import { errorMessage, formatDuration, formatTime } from '../format';
import { usePoll } from '../hooks';
import { mlflowRunUrl, SidebarContext } from '../settings';
import { IJob, IJobList } from '../types';
import { LogViewer } from './LogViewer';
import { ResourceView } from './ResourceView';

const ACTIVE = new Set(['queued', 'running', 'pending', 'cancelling']);

function duration(job: IJob): string {
  if (!job.started) {
    return '';
  }
  const end = job.finished ?? Date.now() / 1000;
  return formatDuration(end - job.started);
}

/** A request to open one job (from the show-job command); `seq` makes a repeated request for the same job count. */
export interface IJobFocus {
  jobId: string;
  seq: number;
}

export function JobsSection(props: { focus?: IJobFocus | null } = {}): JSX.Element {
  const { settings, mlflowUrl } = React.useContext(SidebarContext);
  const [jobs, setJobs] = React.useState<IJob[] | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [selected, setSelected] = React.useState<string | null>(null);
  const [notice, setNotice] = React.useState<{ jobId: string; text: string; error: boolean } | null>(null);
  const [cancelling, setCancelling] = React.useState<Set<string>>(new Set());
  const tableRef = React.useRef<HTMLDivElement>(null);

  // The show-job command: select the job (its resource use and log open under the list) and scroll to its row.
  const focus = props.focus ?? null;
  React.useEffect(() => {
    if (focus) {
      setSelected(focus.jobId);
    }
  }, [focus]);
  React.useEffect(() => {
    if (focus && jobs) {
      const row = tableRef.current?.querySelector(`tr[data-job-id="${CSS.escape(focus.jobId)}"]`);
      row?.scrollIntoView({ block: 'nearest' });
    }
  }, [focus, jobs !== null]);

  const refresh = usePoll(
    'jobs',
    async () => {
      try {
        const data = await requestAPI<IJobList>('jobs' + query({ limit: 100 }));
        setJobs(data.jobs);
        setError(null);
      } catch (reason) {
        setError(errorMessage(reason));
        throw reason; // let the poll back off
      }
    },
    settings.pollInterval
  );

  const updateJob = React.useCallback((job: IJob) => {
    setJobs(current => (current ? current.map(j => (j.id === job.id ? { ...j, ...job } : j)) : current));
  }, []);

  const cancel = async (job: IJob) => {
    setCancelling(current => new Set(current).add(job.id));
    try {
      const updated = await requestAPI<IJob>(apiPath('jobs', job.id, 'cancel'), { method: 'POST' });
      updateJob(updated);
      setNotice({ jobId: job.id, text: `Cancel requested for ${job.id}.`, error: false });
    } catch (reason) {
      const text =
        reason instanceof APIError && reason.status === 409
          ? `Job ${job.id} has already finished.`
          : `Cancel failed: ${errorMessage(reason)}`;
      setNotice({ jobId: job.id, text, error: true });
    } finally {
      setCancelling(current => {
        const next = new Set(current);
        next.delete(job.id);
        return next;
      });
      refresh();
    }
  };

  return (
    <div className="jmk-Jobs">
      {error && (
        <div className="jmk-Error" data-testid="jmk-jobs-error">
          {error}
        </div>
      )}
      {notice && (
        <div className={notice.error ? 'jmk-Error' : 'jmk-Notice'} data-testid="jmk-job-notice">
          {notice.text}
        </div>
      )}
      {jobs === null && !error && <div className="jmk-Empty">Loading jobs…</div>}
      {jobs !== null && jobs.length === 0 && (
        <div className="jmk-Empty" data-testid="jmk-jobs-empty">
          No jobs yet. Run a cell with %%train to start one.
        </div>
      )}
      {jobs !== null && jobs.length > 0 && (
        <div className="jmk-ScrollBox jmk-Jobs-list" ref={tableRef}>
          <table className="jmk-Table" data-testid="jmk-jobs-table">
            <thead>
              <tr>
                <th>Job</th>
                <th>State</th>
                <th>Time</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {jobs.map(job => (
                <tr
                  key={job.id}
                  className={`jmk-Row${selected === job.id ? ' jmk-mod-selected' : ''}`}
                  data-testid="jmk-job-row"
                  data-job-id={job.id}
                  data-state={job.state}
                  onClick={() => setSelected(selected === job.id ? null : job.id)}
                  title={job.message ?? ''}
                >
                  <td className="jmk-Cell-name">
                    <div className="jmk-Ellipsis" data-testid="jmk-job-name">
                      {job.name || job.id}
                    </div>
                    <div className="jmk-Sub jmk-Ellipsis">
                      {job.id} · {job.backend}
                      {job.experiment ? ` · ${job.experiment}` : ''}
                      {job.gpus ? ` · ${job.gpus} GPU` : ''}
                    </div>
                    {job.notes && job.notes.length > 0 && (
                      <div className="jmk-Sub jmk-Job-notes" data-testid="jmk-job-notes">
                        {job.notes.join('; ')}
                      </div>
                    )}
                  </td>
                  <td>
                    <span className={`jmk-State jmk-mod-${job.state}`} data-testid="jmk-job-state">
                      {job.state}
                    </span>
                    {job.gpu_percent !== null && job.gpu_percent !== undefined && (
                      <span
                        className="jmk-Badge jmk-GpuBadge"
                        data-testid="jmk-job-gpu"
                        data-value={job.gpu_percent}
                        title="mean GPU utilization, from the job's MLflow system metrics"
                      >
                        GPU {Math.round(job.gpu_percent)}%
                      </span>
                    )}
                  </td>
                  <td className="jmk-Sub" title={formatTime(job.created)}>
                    {duration(job)}
                  </td>
                  <td className="jmk-Cell-actions">
                    {ACTIVE.has(job.state) && (
                      <button
                        className="jmk-Button jmk-mod-danger"
                        data-testid="jmk-job-cancel"
                        disabled={cancelling.has(job.id)}
                        onClick={event => {
                          event.stopPropagation();
                          void cancel(job);
                        }}
                      >
                        {cancelling.has(job.id) ? 'Cancelling…' : 'Cancel'}
                      </button>
                    )}
                    {mlflowUrl && job.run_id && job.experiment_id && (
                      <a
                        className="jmk-Link"
                        data-testid="jmk-job-mlflow-link"
                        href={mlflowRunUrl(mlflowUrl, job.experiment_id, job.run_id)}
                        target="_blank"
                        rel="noopener noreferrer"
                        onClick={event => event.stopPropagation()}
                      >
                        run
                      </a>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {selected !== null && (
        <ResourceView
          key={`resources-${selected}`}
          jobId={selected}
          state={jobs?.find(j => j.id === selected)?.state ?? 'running'}
        />
      )}
      {selected !== null && <LogViewer key={selected} jobId={selected} onState={updateJob} />}
    </div>
  );
}
