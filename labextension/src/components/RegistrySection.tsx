/** Registry: registered models, their versions and aliases; promote = set an alias on a version. */
import * as React from 'react';

import { apiPath, requestAPI } from '../api';
import { errorMessage, formatTime } from '../format';
import { mlflowModelUrl, SidebarContext } from '../settings';
import { IAliasResult, IModelVersion, IRegisteredModel } from '../types';

function Versions(props: { model: IRegisteredModel; onChanged: () => void }): JSX.Element {
  const name = props.model.name;
  const [versions, setVersions] = React.useState<IModelVersion[] | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [alias, setAlias] = React.useState('champion');
  const [version, setVersion] = React.useState('');
  const [busy, setBusy] = React.useState(false);
  const [result, setResult] = React.useState<{ text: string; error: boolean } | null>(null);

  const load = React.useCallback(async () => {
    try {
      const data = await requestAPI<{ versions: IModelVersion[] }>(apiPath('models', name, 'versions'));
      setVersions(data.versions);
      setError(null);
      setVersion(current => current || (data.versions[0]?.version ?? ''));
    } catch (reason) {
      setError(errorMessage(reason));
    }
  }, [name]);

  React.useEffect(() => {
    void load();
  }, [load]);

  const promote = async () => {
    const target = alias.trim();
    if (!target || !version) {
      setResult({ text: 'Choose an alias and a version.', error: true });
      return;
    }
    setBusy(true);
    try {
      const data = await requestAPI<IAliasResult>(apiPath('models', name, 'aliases', target), {
        method: 'PUT',
        body: JSON.stringify({ version }),
        headers: { 'Content-Type': 'application/json' }
      });
      setResult({ text: `${data.name}@${data.alias} → version ${data.version}`, error: false });
      await load();
      props.onChanged();
    } catch (reason) {
      setResult({ text: `Could not set ${target}: ${errorMessage(reason)}`, error: true });
    } finally {
      setBusy(false);
    }
  };

  const removeAlias = async (aliasName: string) => {
    setBusy(true);
    try {
      await requestAPI<void>(apiPath('models', name, 'aliases', aliasName), { method: 'DELETE' });
      setResult({ text: `Removed ${name}@${aliasName}.`, error: false });
      await load();
      props.onChanged();
    } catch (reason) {
      setResult({ text: `Could not remove ${aliasName}: ${errorMessage(reason)}`, error: true });
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="jmk-Versions" data-testid="jmk-model-versions" data-model={name}>
      {error && (
        <div className="jmk-Error" data-testid="jmk-versions-error">
          {error}
        </div>
      )}
      {versions === null && !error && <div className="jmk-Empty">Loading versions…</div>}
      {versions !== null && versions.length === 0 && <div className="jmk-Empty">No versions.</div>}
      {versions !== null && versions.length > 0 && (
        <table className="jmk-Table">
          <thead>
            <tr>
              <th>Version</th>
              <th>Aliases</th>
              <th>Status</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {versions.map(v => (
              <tr key={v.version} data-testid="jmk-version-row" data-version={v.version}>
                <td>{v.version}</td>
                <td>
                  {v.aliases.map(a => (
                    <span key={a} className="jmk-Alias" data-testid="jmk-alias" data-alias={a}>
                      @{a}
                      <button
                        className="jmk-Alias-remove"
                        data-testid="jmk-alias-remove"
                        title={`Remove alias ${a}`}
                        disabled={busy}
                        onClick={() => void removeAlias(a)}
                      >
                        ×
                      </button>
                    </span>
                  ))}
                </td>
                <td>{v.status}</td>
                <td className="jmk-Sub" title={v.run_id ? `run ${v.run_id}` : ''}>
                  {formatTime(v.creation_timestamp)}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {versions !== null && versions.length > 0 && (
        <form
          className="jmk-Promote"
          onSubmit={event => {
            event.preventDefault();
            void promote();
          }}
        >
          <span>Set alias</span>
          <input
            className="jmk-Input jmk-mod-short"
            data-testid="jmk-promote-alias"
            value={alias}
            onChange={event => setAlias(event.target.value)}
            aria-label="Alias"
          />
          <span>on version</span>
          <select
            className="jmk-Input jmk-mod-short"
            data-testid="jmk-promote-version"
            value={version}
            onChange={event => setVersion(event.target.value)}
            aria-label="Version"
          >
            {versions.map(v => (
              <option key={v.version} value={v.version}>
                {v.version}
              </option>
            ))}
          </select>
          <button type="submit" className="jmk-Button" data-testid="jmk-promote-button" disabled={busy}>
            {busy ? 'Saving…' : 'Promote'}
          </button>
        </form>
      )}
      {result && (
        <div
          className={result.error ? 'jmk-Error' : 'jmk-Notice'}
          data-testid="jmk-promote-result"
          data-ok={result.error ? 'false' : 'true'}
        >
          {result.text}
        </div>
      )}
    </div>
  );
}

export function RegistrySection(): JSX.Element {
  const { mlflowUrl } = React.useContext(SidebarContext);
  const [models, setModels] = React.useState<IRegisteredModel[] | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [open, setOpen] = React.useState<string | null>(null);

  const load = React.useCallback(async () => {
    try {
      const data = await requestAPI<{ models: IRegisteredModel[] }>('models');
      setModels(data.models);
      setError(null);
    } catch (reason) {
      setError(errorMessage(reason));
    }
  }, []);

  React.useEffect(() => {
    void load();
  }, [load]);

  return (
    <div className="jmk-Registry">
      <div className="jmk-Runs-bar">
        <span>{models ? `${models.length} registered model${models.length === 1 ? '' : 's'}` : ''}</span>
        <button className="jmk-Button jmk-mod-small" data-testid="jmk-models-refresh" onClick={() => void load()}>
          Refresh
        </button>
      </div>
      {error && (
        <div className="jmk-Error" data-testid="jmk-models-error">
          {error}
        </div>
      )}
      {models !== null && models.length === 0 && (
        <div className="jmk-Empty" data-testid="jmk-models-empty">
          No registered models. Use %%train --register NAME or mlflow.register_model.
        </div>
      )}
      {models !== null && models.length > 0 && (
        <ul className="jmk-Models" data-testid="jmk-models-list">
          {models.map(model => (
            <li key={model.name} data-testid="jmk-model-row" data-model={model.name}>
              <div
                className={`jmk-Row jmk-Model${open === model.name ? ' jmk-mod-selected' : ''}`}
                onClick={() => setOpen(open === model.name ? null : model.name)}
              >
                <span className="jmk-Model-name" data-testid="jmk-model-name">
                  {model.name}
                </span>
                <span className="jmk-Sub">
                  {Object.entries(model.aliases)
                    .map(([a, v]) => `@${a}→v${v}`)
                    .join(' ')}
                </span>
                {mlflowUrl && (
                  <a
                    className="jmk-Link"
                    data-testid="jmk-model-mlflow-link"
                    href={mlflowModelUrl(mlflowUrl, model.name)}
                    target="_blank"
                    rel="noopener noreferrer"
                    onClick={event => event.stopPropagation()}
                  >
                    MLflow
                  </a>
                )}
              </div>
              {model.description && <div className="jmk-Sub jmk-Wrap">{model.description}</div>}
              {open === model.name && <Versions model={model} onChanged={() => void load()} />}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
