/**
 * React hooks for live data: a @lumino/polling Poll (backoff on errors, stands
 * by while the sidebar or the browser tab is hidden) and an SSE subscription.
 */
import { Poll } from '@lumino/polling';
import * as React from 'react';

import { followEventStream, IServerEvent } from './api';
import { SidebarContext } from './settings';

/**
 * Call `task` every `intervalSeconds` while `enabled`; returns a function that
 * refreshes now. Errors back off (up to 30 s) instead of hammering the server.
 */
export function usePoll(
  name: string,
  task: () => Promise<void>,
  intervalSeconds: number,
  enabled = true
): () => void {
  const { isVisible } = React.useContext(SidebarContext);
  const taskRef = React.useRef(task);
  taskRef.current = task;
  const pollRef = React.useRef<Poll | null>(null);

  React.useEffect(() => {
    if (!enabled) {
      return;
    }
    const interval = Math.max(250, intervalSeconds * 1000);
    const poll = new Poll({
      name: `jmk:${name}`,
      factory: () => taskRef.current(),
      frequency: { interval, backoff: true, max: Math.max(interval, 30000) },
      standby: () => (isVisible() ? 'when-hidden' : true)
    });
    pollRef.current = poll;
    void poll.start();
    return () => {
      pollRef.current = null;
      poll.dispose();
    };
  }, [name, intervalSeconds, enabled, isVisible]);

  return React.useCallback(() => {
    void pollRef.current?.refresh();
  }, []);
}

/**
 * Follow the SSE stream at `endPoint()` while `key` is not null; events go to
 * `onEvent` (return 'stop' to end), errors to `onError`. Changing `key`
 * closes the old stream and opens a new one.
 */
export function useEventStream(
  key: string | null,
  endPoint: () => string,
  onEvent: (event: IServerEvent) => 'stop' | void,
  onError?: (error: unknown) => void
): void {
  const handlers = React.useRef({ endPoint, onEvent, onError });
  handlers.current = { endPoint, onEvent, onError };

  React.useEffect(() => {
    if (key === null) {
      return;
    }
    const controller = new AbortController();
    void followEventStream(
      () => handlers.current.endPoint(),
      event => handlers.current.onEvent(event),
      controller.signal,
      error => handlers.current.onError?.(error)
    );
    return () => controller.abort();
  }, [key]);
}
