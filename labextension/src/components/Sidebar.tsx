/**
 * The sidebar widget: probes /jmk/api/status, then shows the five sections.
 * When the server extension is missing (404) it says how to enable it.
 */
import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { APIError, requestAPI } from '../api';
import { errorMessage } from '../format';
import { DEFAULT_SETTINGS, ISidebarSettings, safeBaseUrl, SidebarContext } from '../settings';
import { IStatus } from '../types';
import { IJobFocus, JobsSection } from './JobsSection';
import { RegistrySection } from './RegistrySection';
import { RunsSection } from './RunsSection';
import { Section } from './Section';
import { ServingSection } from './ServingSection';
import { ITriggerFocus, TriggersSection } from './TriggersSection';

type Probe =
  | { kind: 'loading' }
  | { kind: 'ok'; status: IStatus }
  | { kind: 'missing' }
  | { kind: 'error'; message: string };

function MissingServerExtension(): JSX.Element {
  return (
    <div className="jmk-Missing" data-testid="jmk-missing-server">
      <p>
        <strong>The jupyter_mlflow_k8s server extension is not running.</strong>
      </p>
      <p>The sidebar reads jobs, runs, models and endpoints from it. Install and enable it, then restart JupyterLab:</p>
      <pre className="jmk-Code">
        pip install jupyter_mlflow_k8s{'\n'}jupyter server extension enable jupyter_mlflow_k8s.labapp
      </pre>
      <p className="jmk-Sub">
        Check with <code>jupyter server extension list</code>.
      </p>
    </div>
  );
}

function SidebarBody(props: {
  settings: ISidebarSettings;
  isVisible: () => boolean;
  focus: IJobFocus | null;
  triggerFocus: ITriggerFocus | null;
}): JSX.Element {
  const [probe, setProbe] = React.useState<Probe>({ kind: 'loading' });
  const [attempt, setAttempt] = React.useState(0);

  React.useEffect(() => {
    let cancelled = false;
    requestAPI<IStatus>('status')
      .then(status => !cancelled && setProbe({ kind: 'ok', status }))
      .catch(reason => {
        if (cancelled) {
          return;
        }
        if (reason instanceof APIError && reason.status === 404) {
          setProbe({ kind: 'missing' });
        } else {
          setProbe({ kind: 'error', message: errorMessage(reason) });
        }
      });
    return () => {
      cancelled = true;
    };
  }, [attempt]);

  const context = React.useMemo(
    () => ({
      settings: props.settings,
      mlflowUrl: safeBaseUrl(
        props.settings.mlflowUiUrl || (probe.kind === 'ok' ? probe.status.mlflow_ui_url : null)
      ),
      isVisible: props.isVisible
    }),
    [props.settings, props.isVisible, probe]
  );

  if (probe.kind === 'loading') {
    return <div className="jmk-Empty">Connecting to the server extension…</div>;
  }
  if (probe.kind === 'missing') {
    return <MissingServerExtension />;
  }
  if (probe.kind === 'error') {
    return (
      <div className="jmk-Error" data-testid="jmk-status-error">
        Could not reach the jupyter_mlflow_k8s server extension: {probe.message}{' '}
        <button className="jmk-Button jmk-mod-small" data-testid="jmk-status-retry" onClick={() => setAttempt(attempt + 1)}>
          Retry
        </button>
      </div>
    );
  }
  return (
    <SidebarContext.Provider value={context}>
      <div className="jmk-Status jmk-Sub" data-testid="jmk-status" title={`state: ${probe.status.state_dir}`}>
        MLflow: {probe.status.tracking_uri} · v{probe.status.version}
      </div>
      <Section id="jobs" title="Jobs" openSignal={props.focus}>
        <JobsSection focus={props.focus} />
      </Section>
      <Section id="runs" title="Runs">
        <RunsSection />
      </Section>
      <Section id="registry" title="Registry" initiallyOpen={false}>
        <RegistrySection />
      </Section>
      <Section id="serving" title="Serving" initiallyOpen={false}>
        <ServingSection />
      </Section>
      <Section id="triggers" title="Triggers" initiallyOpen={false} openSignal={props.triggerFocus}>
        <TriggersSection focus={props.triggerFocus} />
      </Section>
    </SidebarContext.Provider>
  );
}

/** The left-sidebar panel. Settings changes re-render it in place. */
export class SidebarWidget extends ReactWidget {
  private _settings: ISidebarSettings = DEFAULT_SETTINGS;
  private _focus: IJobFocus | null = null;
  private _triggerFocus: ITriggerFocus | null = null;

  constructor() {
    super();
    this.addClass('jmk-Sidebar');
    this.node.dataset.testid = 'jmk-panel';
  }

  get settings(): ISidebarSettings {
    return this._settings;
  }

  set settings(value: ISidebarSettings) {
    this._settings = value;
    this.update();
  }

  /** Open a job in the Jobs section: its row selected, its resource use and log shown. */
  showJob(jobId: string): void {
    this._focus = { jobId, seq: (this._focus?.seq ?? 0) + 1 };
    this.update();
  }

  /** Open a trigger in the Triggers section: the section opened, its details and recent runs shown. */
  showTrigger(name: string): void {
    this._triggerFocus = { name, seq: (this._triggerFocus?.seq ?? 0) + 1 };
    this.update();
  }

  /** Stable across renders, so polls are not recreated on every render. */
  private readonly _isVisible = (): boolean => this.isVisible;

  protected render(): JSX.Element {
    return <SidebarBody
        settings={this._settings}
        isVisible={this._isVisible}
        focus={this._focus}
        triggerFocus={this._triggerFocus}
      />;
  }
}
