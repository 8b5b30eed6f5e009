/**
 * A job's log: the tail from /jobs/{id}/log, then live text from the SSE
 * stream /jobs/{id}/log/stream resumed at the last offset. Text only (a <pre>
 * child), auto-scrolled while the reader stays at the bottom.
 */
import * as React from 'react';

import { apiPath, query, requestAPI } from '../api';
import { errorMessage } from '../format';
import { useEventStream } from '../hooks';
import { IJob, ILogChunk } from '../types';

/** Keep at most this many characters in the browser (the head is dropped). */
const MAX_CHARS = 2_000_000;
const TAIL_BYTES = 65536;

/** The `message` of an SSE `error`/`end` event's JSON data, else the raw data. */
export function messageOf(data: string): string {
  try {
    const parsed = JSON.parse(data);
    if (parsed && typeof parsed.message === 'string') {
      return parsed.message;
    }
  } catch {
    // not JSON
  }
  return data;
}

export interface ILogViewerProps {
  jobId: string;
  onState?: (job: IJob) => void;
}

export function LogViewer(props: ILogViewerProps): JSX.Element {
  const { jobId } = props;
  const [text, setText] = React.useState('');
  const [status, setStatus] = React.useState<'loading' | 'live' | 'ended' | 'error'>('loading');
  const [error, setError] = React.useState<string | null>(null);
  const [truncated, setTruncated] = React.useState(false);
  const [ready, setReady] = React.useState(false);
  const offsetRef = React.useRef(0);
  const preRef = React.useRef<HTMLPreElement>(null);
  const pinnedRef = React.useRef(true);
  const pendingRef = React.useRef('');
  const frameRef = React.useRef<number | null>(null);

  const append = React.useCallback((chunk: string) => {
    // Coalesce bursts of log events into one render per animation frame.
    pendingRef.current += chunk;
    if (frameRef.current === null) {
      frameRef.current = requestAnimationFrame(() => {
        frameRef.current = null;
        const add = pendingRef.current;
        pendingRef.current = '';
        setText(previous => {
          const next = previous + add;
          if (next.length > MAX_CHARS) {
            setTruncated(true);
            return next.slice(next.length - MAX_CHARS);
          }
          return next;
        });
      });
    }
  }, []);

  React.useEffect(() => {
    let cancelled = false;
    setText('');
    setError(null);
    setStatus('loading');
    setTruncated(false);
    setReady(false);
    pinnedRef.current = true;
    pendingRef.current = '';
    requestAPI<ILogChunk>(apiPath('jobs', jobId, 'log') + query({ tail: TAIL_BYTES }))
      .then(chunk => {
        if (cancelled) {
          return;
        }
        setText(chunk.text);
        setTruncated(Boolean(chunk.truncated));
        offsetRef.current = chunk.offset;
        setStatus('live');
        setReady(true);
      })
      .catch(reason => {
        if (!cancelled) {
          setError(errorMessage(reason));
          setStatus('error');
        }
      });
    return () => {
      cancelled = true;
      if (frameRef.current !== null) {
        cancelAnimationFrame(frameRef.current);
        frameRef.current = null;
      }
    };
  }, [jobId]);

  useEventStream(
    ready ? jobId : null,
    () => apiPath('jobs', jobId, 'log', 'stream') + query({ offset: offsetRef.current }),
    event => {
      // An event after a lost connection (a restarted server): the stream is back, so is the log.
      setError(null);
      if (event.event === 'log') {
        const chunk = JSON.parse(event.data) as ILogChunk;
        if (typeof chunk.offset === 'number') {
          offsetRef.current = chunk.offset;
        }
        if (chunk.text) {
          append(chunk.text);
        }
      } else if (event.event === 'state') {
        props.onState?.(JSON.parse(event.data) as IJob);
      } else if (event.event === 'end') {
        setStatus('ended');
        return 'stop';
      } else if (event.event === 'error') {
        setError(messageOf(event.data));
        setStatus('error');
        return 'stop';
      }
      return undefined;
    },
    reason => {
      setError(errorMessage(reason));
    }
  );

  React.useLayoutEffect(() => {
    const pre = preRef.current;
    if (pre && pinnedRef.current) {
      pre.scrollTop = pre.scrollHeight;
    }
  }, [text]);

  const onScroll = () => {
    const pre = preRef.current;
    if (pre) {
      pinnedRef.current = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    }
  };

  const statusText =
    status === 'loading'
      ? 'loading…'
      : status === 'live'
        ? 'live'
        : status === 'ended'
          ? 'finished'
          : 'error';

  return (
    <div className="jmk-Log">
      <div className="jmk-Log-bar">
        <span className="jmk-Log-title">Log of {jobId}</span>
        <span className={`jmk-Log-status jmk-mod-${status}`} data-testid="jmk-log-status" data-status={status}>
          {statusText}
        </span>
      </div>
      {truncated && <div className="jmk-Log-note">Earlier output omitted.</div>}
      {error && (
        <div className="jmk-Error" data-testid="jmk-log-error">
          {error}
        </div>
      )}
      <pre className="jmk-Log-text" data-testid="jmk-log-viewer" ref={preRef} onScroll={onScroll}>
        {text}
      </pre>
    </div>
  );
}
