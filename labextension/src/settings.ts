/**
 * The sidebar's settings (schema/plugin.json) and what every section needs to
 * know about its surroundings, passed down through one React context.
 */
import * as React from 'react';

export interface ISidebarSettings {
  /** Seconds between two refreshes of the jobs and endpoints lists. */
  pollInterval: number;
  /** Seconds between two points of the live serving charts. */
  metricsInterval: number;
  /** MLflow UI base URL; empty: the one the server reports. */
  mlflowUiUrl: string;
  /** Runs fetched per request. */
  runsPageSize: number;
}

export const DEFAULT_SETTINGS: ISidebarSettings = {
  pollInterval: 2,
  metricsInterval: 1,
  mlflowUiUrl: '',
  runsPageSize: 500
};

/** Read the composite settings, falling back to defaults field by field. */
export function readSettings(composite: Record<string, unknown>): ISidebarSettings {
  const num = (key: keyof ISidebarSettings, fallback: number): number => {
    const v = composite[key];
    return typeof v === 'number' && isFinite(v) && v > 0 ? v : fallback;
  };
  const url = composite.mlflowUiUrl;
  return {
    pollInterval: num('pollInterval', DEFAULT_SETTINGS.pollInterval),
    metricsInterval: num('metricsInterval', DEFAULT_SETTINGS.metricsInterval),
    mlflowUiUrl: typeof url === 'string' ? url.trim() : '',
    runsPageSize: Math.round(num('runsPageSize', DEFAULT_SETTINGS.runsPageSize))
  };
}

export interface ISidebarContext {
  settings: ISidebarSettings;
  /** MLflow UI base URL (settings override, else the server's), without a trailing slash. */
  mlflowUrl: string | null;
  /** Whether the sidebar is on screen; polls stand by while it is not. */
  isVisible: () => boolean;
}

export const SidebarContext = React.createContext<ISidebarContext>({
  settings: DEFAULT_SETTINGS,
  mlflowUrl: null,
  isVisible: () => true
});

/** Only http(s) URLs become links; anything else (javascript:, data:) is dropped. */
export function safeBaseUrl(url: string | null | undefined): string | null {
  if (!url) {
    return null;
  }
  try {
    const parsed = new URL(url, window.location.href);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      return null;
    }
    return parsed.href.replace(/\/+$/, '');
  } catch {
    return null;
  }
}

/** Link to a run in the MLflow UI. */
export function mlflowRunUrl(base: string, experimentId: string, runId: string): string {
  return `${base}/#/experiments/${encodeURIComponent(experimentId)}/runs/${encodeURIComponent(runId)}`;
}

/** Link to an experiment in the MLflow UI. */
export function mlflowExperimentUrl(base: string, experimentId: string): string {
  return `${base}/#/experiments/${encodeURIComponent(experimentId)}`;
}

/** Link to a registered model in the MLflow UI. */
export function mlflowModelUrl(base: string, name: string): string {
  return `${base}/#/models/${encodeURIComponent(name)}`;
}
