/**
 * The "Run cell as job" form: the fields of `%%train`, pre-filled from the
 * cell's own line, the presets of the server, and the ship list the kernel
 * computes. It never builds the line itself: Submit asks the kernel (op line),
 * which validates as `%%train` does and answers the new cell text or the
 * problems by field.
 */
import { Dialog, ReactWidget } from '@jupyterlab/apputils';
import { Kernel } from '@jupyterlab/services';
import * as React from 'react';

import { fetchPresets } from '../api';
import { errorMessage } from '../format';
import { IPreset, IPresetList } from '../types';
import {
  IDescribeReply,
  ILaunchValues,
  ILineReply,
  IRefusal,
  kernelRequest,
  LaunchTextField
} from './bridge';

/** What the form needs from the command: the kernel and the cell's text now. */
export interface ILaunchFormOptions {
  kernel: () => Kernel.IKernelConnection | null | undefined;
  cellText: () => string;
}

type Loaded<T> =
  | { kind: 'loading' }
  | { kind: 'ok'; value: T }
  | { kind: 'error'; message: string };

type FormState = Record<LaunchTextField, string> & { async: boolean };

const EMPTY: FormState = {
  backend: '',
  preset: '',
  gpus: '',
  cpu: '',
  memory: '',
  image: '',
  experiment: '',
  register: '',
  async: false
};

const TEXT_FIELDS: {
  key: Exclude<LaunchTextField, 'backend' | 'preset'>;
  label: string;
  placeholder: string;
}[] = [
  { key: 'gpus', label: 'GPUs', placeholder: 'e.g. 1 (from the preset or 0)' },
  { key: 'cpu', label: 'CPU', placeholder: 'e.g. 4 or 500m' },
  { key: 'memory', label: 'Memory', placeholder: 'e.g. 16Gi or 512Mi' },
  { key: 'image', label: 'Image', placeholder: "the notebook's image by default" },
  { key: 'experiment', label: 'Experiment', placeholder: "the notebook's name by default" },
  { key: 'register', label: 'Register as', placeholder: 'a model name, e.g. mnist-clf' }
];

/** Keys of a refusal that belong to a field of the form; the rest are shown above the buttons. */
const FIELD_KEYS = new Set<string>([...Object.keys(EMPTY), 'extra']);

function fromValues(values: ILaunchValues): FormState {
  const state: FormState = { ...EMPTY, async: Boolean(values.async) };
  for (const key of Object.keys(EMPTY) as (keyof FormState)[]) {
    if (key !== 'async') {
      const value = values[key];
      state[key] = value === null || value === undefined ? '' : String(value);
    }
  }
  return state;
}

function toValues(state: FormState): ILaunchValues {
  const text = (value: string): string | null => (value.trim() ? value.trim() : null);
  return {
    backend: text(state.backend),
    preset: text(state.preset),
    gpus: text(state.gpus),
    cpu: text(state.cpu),
    memory: text(state.memory),
    image: text(state.image),
    experiment: text(state.experiment),
    register: text(state.register),
    async: state.async
  };
}

function FieldError(props: { field: string; message?: string }): JSX.Element | null {
  if (!props.message) {
    return null;
  }
  return (
    <div className="jmk-LaunchForm-error" data-testid="jmk-launch-error" data-field={props.field}>
      {props.message}
    </div>
  );
}

function ShipList(props: { describe: IDescribeReply }): JSX.Element {
  const { ship, ship_total_text, returns } = props.describe;
  const refused = ship.filter(item => !item.picklable);
  return (
    <div className="jmk-LaunchForm-ship" data-testid="jmk-launch-ship">
      <div className="jmk-LaunchForm-heading">
        Ships to the job{ship.length ? ` (${ship.length}, ${ship_total_text})` : ''}
      </div>
      {refused.length > 0 && (
        <div className="jmk-LaunchForm-alert" data-testid="jmk-launch-ship-alert" role="alert">
          ⚠ {refused.map(item => item.name).join(', ')} cannot be pickled: the job would refuse{' '}
          {refused.length === 1 ? 'it' : 'them'}. Create {refused.length === 1 ? 'it' : 'them'} inside the
          cell instead.
        </div>
      )}
      {ship.length === 0 ? (
        <div className="jmk-Sub" data-testid="jmk-launch-ship-empty">
          Nothing: the cell uses no variable of the notebook.
        </div>
      ) : (
        <table className="jmk-Table jmk-LaunchForm-shipTable">
          <thead>
            <tr>
              <th>name</th>
              <th>type</th>
              <th>size</th>
            </tr>
          </thead>
          <tbody>
            {ship.map(item => (
              <React.Fragment key={item.name}>
                <tr
                  className={item.picklable ? '' : 'jmk-mod-unpicklable'}
                  data-testid="jmk-launch-ship-row"
                  data-variable={item.name}
                  data-picklable={String(item.picklable)}
                >
                  <td className="jmk-LaunchForm-mono">{item.name}</td>
                  <td className="jmk-LaunchForm-mono">{item.type}</td>
                  <td>{item.size_text}</td>
                </tr>
                {(item.warning || !item.picklable) && (
                  <tr className="jmk-LaunchForm-shipWarning">
                    <td colSpan={3} data-testid="jmk-launch-ship-warning" data-variable={item.name}>
                      ⚠ {item.warning ?? `${item.name} cannot be pickled`}
                    </td>
                  </tr>
                )}
              </React.Fragment>
            ))}
          </tbody>
        </table>
      )}
      <div className="jmk-Sub" data-testid="jmk-launch-returns">
        {returns.length
          ? `Comes back into the notebook: ${returns.join(', ')}`
          : 'Assigns no name: nothing comes back into the notebook.'}
      </div>
    </div>
  );
}

function presetLabel(preset: IPreset): string {
  if (preset.problem) {
    return `${preset.name} (misconfigured)`;
  }
  return preset.summary ? `${preset.name} — ${preset.summary}` : preset.name;
}

/** The form itself; `onReady` receives the submit function the dialog calls. */
export function LaunchForm(
  props: ILaunchFormOptions & {
    onReady: (submit: () => Promise<ILineReply | null>) => void;
  }
): JSX.Element {
  const [state, setState] = React.useState<FormState>(EMPTY);
  const [extra, setExtra] = React.useState('');
  const [errors, setErrors] = React.useState<Record<string, string>>({});
  const [describe, setDescribe] = React.useState<Loaded<IDescribeReply>>({ kind: 'loading' });
  const [server, setServer] = React.useState<Loaded<IPresetList>>({ kind: 'loading' });
  const [submitting, setSubmitting] = React.useState(false);

  React.useEffect(() => {
    let cancelled = false;
    fetchPresets()
      .then(value => !cancelled && setServer({ kind: 'ok', value }))
      .catch(reason => !cancelled && setServer({ kind: 'error', message: errorMessage(reason) }));
    kernelRequest<IDescribeReply | IRefusal>(props.kernel(), { op: 'describe', cell: props.cellText() })
      .then(reply => {
        if (cancelled) {
          return;
        }
        if (!reply.ok) {
          setDescribe({ kind: 'error', message: Object.values(reply.errors).join(' ') });
          return;
        }
        setDescribe({ kind: 'ok', value: reply });
        setState(fromValues(reply.values));
        setExtra(reply.extra ?? '');
      })
      .catch(reason => !cancelled && setDescribe({ kind: 'error', message: errorMessage(reason) }));
    return () => {
      cancelled = true;
    };
  }, []);

  // The dialog's Submit (button or Enter) calls the latest closure.
  const latest = React.useRef({ state, extra });
  latest.current = { state, extra };
  React.useEffect(() => {
    props.onReady(async () => {
      setSubmitting(true);
      try {
        const reply = await kernelRequest<ILineReply | IRefusal>(props.kernel(), {
          op: 'line',
          cell: props.cellText(),
          values: toValues(latest.current.state),
          extra: latest.current.extra
        }, true);
        if (!reply.ok) {
          setErrors(reply.errors);
          return null;
        }
        setErrors({});
        return reply;
      } catch (reason) {
        setErrors({ kernel: errorMessage(reason) });
        return null;
      } finally {
        setSubmitting(false);
      }
    });
  }, []);

  // A field's error goes once it is edited; Submit asks the kernel again.
  const clearError = (key: string) =>
    setErrors(previous => {
      const { [key]: _dropped, ...rest } = previous;
      return rest;
    });
  const update = (key: keyof FormState, value: string | boolean) => {
    setState(previous => ({ ...previous, [key]: value }));
    clearError(key);
  };

  const fromServer = server.kind === 'ok' ? server.value : null;
  const fromKernel = describe.kind === 'ok' ? describe.value : null;
  const presets: IPreset[] = fromServer?.presets ?? fromKernel?.presets ?? [];
  const backends: string[] = fromServer?.backends ?? fromKernel?.backends ?? ['local', 'kubernetes'];
  const defaultBackend = fromServer?.default_backend ?? fromKernel?.default_backend ?? 'local';
  const selectedPreset = presets.find(p => p.name === state.preset);
  const unknownPreset = state.preset && !selectedPreset ? state.preset : null;
  const disabled = describe.kind !== 'ok' || submitting;
  const general = Object.entries(errors).filter(([key]) => !FIELD_KEYS.has(key));

  return (
    <div className="jmk-LaunchForm-body" data-testid="jmk-launch-form">
      {describe.kind === 'loading' && (
        <div className="jmk-Sub" data-testid="jmk-launch-loading">
          {props.kernel()?.status === 'busy'
            ? 'The kernel is running another cell: the form fills in when it is done…'
            : 'Asking the kernel what the cell would ship…'}
        </div>
      )}
      {describe.kind === 'error' && (
        <div className="jmk-LaunchForm-alert" data-testid="jmk-launch-kernel-error" role="alert">
          {describe.message}
        </div>
      )}
      {fromKernel &&
        Object.entries(fromKernel.errors ?? {}).map(([key, message]) => (
          <div
            key={key}
            className="jmk-LaunchForm-alert"
            data-testid="jmk-launch-cell-problem"
            data-field={key}
          >
            {key === 'line' ? "The cell's %%train line: " : ''}
            {message}
          </div>
        ))}
      <div className="jmk-LaunchForm-columns">
        <div className="jmk-LaunchForm-grid">
          <label htmlFor="jmk-launch-backend">Backend</label>
          <div>
            <select
              id="jmk-launch-backend"
              data-testid="jmk-launch-backend"
              value={state.backend}
              disabled={disabled}
              onChange={event => update('backend', event.target.value)}
            >
              <option value="">default ({defaultBackend})</option>
              {backends.map(name => (
                <option key={name} value={name}>
                  {name}
                </option>
              ))}
            </select>
            <FieldError field="backend" message={errors.backend} />
          </div>

          <label htmlFor="jmk-launch-preset">Preset</label>
          <div>
            <select
              id="jmk-launch-preset"
              data-testid="jmk-launch-preset"
              value={state.preset}
              disabled={disabled}
              onChange={event => update('preset', event.target.value)}
            >
              <option value="">none</option>
              {presets.map(preset => (
                <option key={preset.name} value={preset.name} data-problem={preset.problem ? 'true' : 'false'}>
                  {presetLabel(preset)}
                </option>
              ))}
              {unknownPreset && <option value={unknownPreset}>{unknownPreset} (not configured)</option>}
            </select>
            {server.kind === 'error' && (
              <div className="jmk-Sub" data-testid="jmk-launch-presets-unavailable">
                The server did not list its presets ({server.message}); these are the kernel's.
              </div>
            )}
            {server.kind === 'ok' && presets.length === 0 && (
              <div className="jmk-Sub" data-testid="jmk-launch-no-presets">
                No presets configured (c.KubernetesBackend.presets).
              </div>
            )}
            {selectedPreset?.summary && !selectedPreset.problem && (
              <div className="jmk-Sub" data-testid="jmk-launch-preset-summary">
                {selectedPreset.summary}
              </div>
            )}
            {selectedPreset?.problem && (
              <div className="jmk-LaunchForm-error" data-testid="jmk-launch-preset-problem">
                {selectedPreset.problem}
              </div>
            )}
            <FieldError field="preset" message={errors.preset} />
          </div>

          {TEXT_FIELDS.map(field => (
            <React.Fragment key={field.key}>
              <label htmlFor={`jmk-launch-${field.key}`}>{field.label}</label>
              <div>
                <input
                  id={`jmk-launch-${field.key}`}
                  data-testid={`jmk-launch-${field.key}`}
                  type="text"
                  className="jp-mod-styled"
                  value={state[field.key]}
                  placeholder={field.placeholder}
                  disabled={disabled}
                  aria-invalid={errors[field.key] ? true : undefined}
                  onChange={event => update(field.key, event.target.value)}
                />
                <FieldError field={field.key} message={errors[field.key]} />
              </div>
            </React.Fragment>
          ))}

          <label htmlFor="jmk-launch-extra">Other flags</label>
          <div>
            <input
              id="jmk-launch-extra"
              data-testid="jmk-launch-extra"
              type="text"
              className="jp-mod-styled jmk-LaunchForm-mono"
              value={extra}
              placeholder="e.g. --param lr=0.1 --timeout 2h"
              disabled={disabled}
              onChange={event => {
                setExtra(event.target.value);
                clearError('extra');
              }}
            />
            <FieldError field="extra" message={errors.extra} />
          </div>

          <span />
          <label className="jmk-LaunchForm-check">
            <input
              type="checkbox"
              data-testid="jmk-launch-async"
              checked={state.async}
              disabled={disabled}
              onChange={event => update('async', event.target.checked)}
            />{' '}
            Async: give the notebook back at once (follow the job with %job attach or the sidebar)
          </label>
        </div>
        {fromKernel ? <ShipList describe={fromKernel} /> : <div className="jmk-LaunchForm-ship" />}
      </div>
      {general.map(([key, message]) => (
        <div key={key} className="jmk-LaunchForm-error" data-testid="jmk-launch-error" data-field={key}>
          {message}
        </div>
      ))}
      {submitting && (
        <div className="jmk-Sub" data-testid="jmk-launch-submitting">
          Checking the values in the kernel…
        </div>
      )}
    </div>
  );
}

/** The form as the dialog's body; `getValue()` is the accepted line reply. */
export class LaunchFormBody extends ReactWidget {
  private _submit: (() => Promise<ILineReply | null>) | null = null;
  private _accepted: ILineReply | null = null;

  constructor(private readonly _options: ILaunchFormOptions) {
    super();
    this.addClass('jmk-LaunchForm');
  }

  /** Ask the kernel for the line; true when it accepted the values. */
  async submit(): Promise<boolean> {
    if (!this._submit) {
      return false;
    }
    this._accepted = await this._submit();
    return this._accepted !== null;
  }

  getValue(): ILineReply | null {
    return this._accepted;
  }

  protected render(): JSX.Element {
    return (
      <LaunchForm
        {...this._options}
        onReady={submit => {
          this._submit = submit;
        }}
      />
    );
  }
}

const SUBMIT = 1;

/**
 * A Dialog whose Submit (button or Enter) first asks the kernel: it closes
 * only when the kernel accepted the values, else the errors stay inline.
 */
export class LaunchDialog extends Dialog<ILineReply | null> {
  private _checking = false;

  constructor(private readonly _form: LaunchFormBody) {
    super({
      title: 'Run cell as job',
      body: _form,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Submit' })],
      defaultButton: SUBMIT,
      hasClose: true,
      focusNodeSelector: 'select'
    });
    this.addClass('jmk-LaunchDialog');
    this.node
      .querySelectorAll('.jp-Dialog-footer button')
      .forEach((button, index) =>
        button.setAttribute('data-testid', index === SUBMIT ? 'jmk-launch-submit' : 'jmk-launch-cancel')
      );
  }

  resolve(index?: number): void {
    if ((index ?? SUBMIT) !== SUBMIT) {
      super.resolve(index);
      return;
    }
    if (this._checking) {
      return;
    }
    this._checking = true;
    void this._form.submit().then(
      accepted => {
        this._checking = false;
        if (accepted) {
          super.resolve(SUBMIT);
        }
      },
      () => {
        this._checking = false;
      }
    );
  }
}
