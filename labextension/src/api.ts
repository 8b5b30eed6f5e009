/**
 * All HTTP to the server extension: one typed requestAPI<T>() and an
 * authenticated Server-Sent-Events reader (fetch + stream, so the token header
 * is sent the same way as for every other request; EventSource cannot).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IPresetList, ITriggerList } from './types';

export const API_PATH = 'jmk/api';

/** An HTTP error from the API, with the server's JSON `message` when it sent one. */
export class APIError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly reason: string = ''
  ) {
    super(message);
    this.name = 'APIError';
  }
}

/** Join path segments under /jmk/api, URL-encoding each one. */
export function apiPath(...segments: string[]): string {
  return segments.map(s => encodeURIComponent(s)).join('/');
}

/** A query string from the defined entries of `params` (leading '?' included). */
export function query(
  params: Record<string, string | number | null | undefined>
): string {
  const entries = Object.entries(params).filter(
    ([, v]) => v !== undefined && v !== null && v !== ''
  ) as [string, string | number][];
  if (entries.length === 0) {
    return '';
  }
  return (
    '?' +
    entries
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      .join('&')
  );
}

function makeUrl(endPoint: string, settings: ServerConnection.ISettings): string {
  return URLExt.join(settings.baseUrl, API_PATH, endPoint);
}

async function errorFrom(response: Response): Promise<APIError> {
  let message = response.statusText || `HTTP ${response.status}`;
  let reason = '';
  try {
    const text = await response.text();
    try {
      const data = JSON.parse(text);
      if (data && typeof data.message === 'string' && data.message) {
        message = data.message;
      }
      if (data && typeof data.reason === 'string') {
        reason = data.reason;
      }
    } catch {
      // not JSON (e.g. the server's HTML 404 page): keep the status text
    }
  } catch {
    // body unreadable: keep the status text
  }
  return new APIError(response.status, message, reason);
}

/**
 * Call the API at `endPoint` (relative to /jmk/api) and return its JSON body
 * (undefined for 204). Non-2xx answers reject with an APIError.
 */
export async function requestAPI<T>(
  endPoint: string,
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      makeUrl(endPoint, settings),
      init,
      settings
    );
  } catch (error) {
    throw new APIError(0, `Network error: ${String(error)}`);
  }
  if (!response.ok) {
    throw await errorFrom(response);
  }
  if (response.status === 204) {
    return undefined as unknown as T;
  }
  const text = await response.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

/** GET /jmk/api/presets: the server's configured presets, the backends and the default one. */
export function fetchPresets(): Promise<IPresetList> {
  return requestAPI<IPresetList>('presets');
}

/** GET /jmk/api/triggers: the pipeline triggers with their last check, last fire, next eligible time, recent runs. */
export function fetchTriggers(): Promise<ITriggerList> {
  return requestAPI<ITriggerList>('triggers');
}

/** One Server-Sent Event. */
export interface IServerEvent {
  event: string;
  data: string;
}

/**
 * Read the SSE stream at `endPoint` until it ends or `signal` aborts, calling
 * `onEvent` for each event. Resolves when the server closes the stream.
 */
export async function readEventStream(
  endPoint: string,
  onEvent: (event: IServerEvent) => void,
  signal: AbortSignal
): Promise<void> {
  const settings = ServerConnection.makeSettings();
  const response = await ServerConnection.makeRequest(
    makeUrl(endPoint, settings),
    { headers: { Accept: 'text/event-stream' }, signal, cache: 'no-store' },
    settings
  );
  if (!response.ok) {
    throw await errorFrom(response);
  }
  if (!response.body) {
    throw new APIError(0, 'The browser cannot read streamed responses.');
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        break;
      }
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
      let boundary = buffer.indexOf('\n\n');
      while (boundary >= 0) {
        const block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary + 2);
        const event = parseEvent(block);
        if (event) {
          onEvent(event);
        }
        boundary = buffer.indexOf('\n\n');
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function parseEvent(block: string): IServerEvent | null {
  let event = 'message';
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) {
      continue; // heartbeat comment
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) {
      value = value.slice(1);
    }
    if (field === 'event') {
      event = value;
    } else if (field === 'data') {
      data.push(value);
    }
  }
  if (data.length === 0) {
    return null;
  }
  return { event, data: data.join('\n') };
}

/**
 * Keep an SSE stream open: reconnect after errors or a server close (with a
 * growing delay) until `signal` aborts or `onEvent` returns 'stop'. `endPoint`
 * is re-read on each connection so a log stream can resume from its offset.
 */
export async function followEventStream(
  endPoint: () => string,
  onEvent: (event: IServerEvent) => 'stop' | void,
  signal: AbortSignal,
  onError?: (error: unknown) => void
): Promise<void> {
  let delay = 500;
  let stopped = false;
  while (!signal.aborted && !stopped) {
    try {
      await readEventStream(
        endPoint(),
        event => {
          delay = 500;
          if (onEvent(event) === 'stop') {
            stopped = true;
          }
        },
        signal
      );
    } catch (error) {
      if (signal.aborted) {
        return;
      }
      if (error instanceof APIError && error.status >= 400 && error.status < 500) {
        onError?.(error);
        return; // 404 etc.: reconnecting will not help
      }
      onError?.(error);
    }
    if (stopped || signal.aborted) {
      return;
    }
    await new Promise(resolve => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}
