/**
 * Triggers (`jmk trigger add`): each one's kind, mode and state, its last
 * check, last fire and next eligible time (polled), and its recent runs and
 * suggestions, expanded per trigger.
 */
import * as React from 'react';

import { fetchTriggers } from '../api';
import { errorMessage, formatDuration, formatNumber, formatTime } from '../format';
import { usePoll } from '../hooks';
import { SidebarContext } from '../settings';
import { ITrigger, ITriggerEvent } from '../types';

/** The badge class of a state in words ('running …', 'error: …', '… succeeded', '… failed (exit 1)'). */
export function stateClass(state: string): string {
  if (state.startsWith('running')) {
    return 'running';
  }
  if (state.startsWith('error') || state.includes(' failed')) {
    return 'failed';
  }
  if (state.endsWith(' succeeded')) {
    return 'succeeded';
  }
  return 'idle';
}

/** When the trigger may fire again: 'now' once the cooldown is over (or it never fired). */
export function nextEligible(trigger: ITrigger, nowSeconds: number): string {
  if (trigger.next_eligible === null || trigger.next_eligible <= nowSeconds) {
    return 'now';
  }
  return `${formatTime(trigger.next_eligible)} (in ${formatDuration(trigger.next_eligible - nowSeconds)})`;
}

function entryTime(entry: ITriggerEvent): string {
  const parsed = entry.time ? Date.parse(entry.time) : NaN;
  return isNaN(parsed) ? (entry.time ?? '') : formatTime(parsed / 1000);
}

/** What an entry carried: its objects, its PSI, or how its run ended. */
function entryDetail(entry: ITriggerEvent): string {
  const parts: string[] = [];
  if (entry.objects) {
    parts.push(`${entry.objects} object${entry.objects === 1 ? '' : 's'}`);
  }
  if (entry.psi !== null && entry.psi !== undefined) {
    parts.push(`PSI ${formatNumber(entry.psi)}`);
  }
  if (entry.exit !== null && entry.exit !== undefined) {
    parts.push(entry.exit === 0 ? 'succeeded' : `exit ${entry.exit}`);
  }
  return parts.join(' · ');
}

function TriggerDetail(props: { trigger: ITrigger }): JSX.Element {
  const t = props.trigger;
  const now = Date.now() / 1000;
  const fields: Array<[string, string]> = [
    ['Condition', t.condition],
    ['Pipeline', t.pipeline],
    ['Last check', formatTime(t.last_check) || 'not yet'],
    ['Last fire', formatTime(t.last_fire) || 'never'],
    ['Next eligible', nextEligible(t, now)]
  ];
  if (t.cooldown) {
    fields.push(['Cooldown', formatDuration(t.cooldown)]);
  }
  if (t.last_error) {
    fields.push(['Last error', t.last_error]);
  }
  return (
    <div className="jmk-TriggerDetail" data-testid="jmk-trigger-detail" data-trigger={t.name}>
      <table className="jmk-Table jmk-mod-kv">
        <tbody>
          {fields.map(([key, value]) => (
            <tr key={key} data-testid="jmk-trigger-field" data-key={key}>
              <th>{key}</th>
              <td className="jmk-Wrap">{value}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {t.recent.length === 0 ? (
        <div className="jmk-Empty" data-testid="jmk-trigger-recent-empty">
          No runs or suggestions yet.
        </div>
      ) : (
        <table className="jmk-Table" data-testid="jmk-trigger-recent">
          <thead>
            <tr>
              <th>Time</th>
              <th>Event</th>
              <th>Run</th>
              <th>Detail</th>
            </tr>
          </thead>
          <tbody>
            {t.recent.map((entry, index) => (
              <tr
                key={`${entry.time}-${index}`}
                data-testid="jmk-trigger-event"
                data-event={entry.event ?? ''}
                data-run-id={entry.run_id ?? ''}
              >
                <td>{entryTime(entry)}</td>
                <td>{entry.event}</td>
                <td className="jmk-Ellipsis" title={entry.run_id ?? ''}>
                  {entry.run_id ?? ''}
                </td>
                <td>{entryDetail(entry)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

/** A request to open one trigger (from the show-trigger command); `seq` makes a repeated request count. */
export interface ITriggerFocus {
  name: string;
  seq: number;
}

export function TriggersSection(props: { focus?: ITriggerFocus | null } = {}): JSX.Element {
  const { settings } = React.useContext(SidebarContext);
  const [triggers, setTriggers] = React.useState<ITrigger[] | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [expanded, setExpanded] = React.useState<Set<string>>(() => new Set(props.focus ? [props.focus.name] : []));

  // The show-trigger command (a notification's button): its details open.
  const focus = props.focus ?? null;
  React.useEffect(() => {
    if (focus) {
      setExpanded(current => new Set(current).add(focus.name));
    }
  }, [focus]);

  usePoll(
    'triggers',
    async () => {
      try {
        const data = await fetchTriggers();
        setTriggers(data.triggers);
        setError(null);
      } catch (reason) {
        setError(errorMessage(reason));
        throw reason; // let the poll back off
      }
    },
    // Triggers are checked every few seconds at most; the list need not be faster than the jobs.
    Math.max(settings.pollInterval, 5)
  );

  const toggle = (name: string) =>
    setExpanded(current => {
      const next = new Set(current);
      if (!next.delete(name)) {
        next.add(name);
      }
      return next;
    });

  return (
    <div className="jmk-Triggers">
      {error && (
        <div className="jmk-Error" data-testid="jmk-triggers-error">
          {error}
        </div>
      )}
      {triggers === null && !error && <div className="jmk-Empty">Loading triggers…</div>}
      {triggers !== null && triggers.length === 0 && (
        <div className="jmk-Empty" data-testid="jmk-triggers-empty">
          No triggers. Add one with jmk trigger add NAME --pipeline pipeline.yaml --on-new-objects s3://bucket/prefix/.
        </div>
      )}
      {triggers !== null && triggers.length > 0 && (
        <table className="jmk-Table" data-testid="jmk-triggers-table">
          <thead>
            <tr>
              <th className="jmk-Cell-name">Trigger</th>
              <th>Mode</th>
              <th>State</th>
            </tr>
          </thead>
          {triggers.map(t => {
            const open = expanded.has(t.name);
            return (
              <tbody key={t.name}>
                <tr
                  className={`jmk-Row${open ? ' jmk-mod-selected' : ''}`}
                  data-testid="jmk-trigger-row"
                  data-trigger={t.name}
                  data-kind={t.kind}
                  data-mode={t.mode}
                  data-expanded={open ? 'true' : 'false'}
                  aria-expanded={open}
                  onClick={() => toggle(t.name)}
                >
                  <td className="jmk-Cell-name">
                    <div className="jmk-Ellipsis" title={t.name}>
                      {t.name}
                    </div>
                    <div className="jmk-Sub jmk-Ellipsis" data-testid="jmk-trigger-kind" title={t.condition}>
                      {t.kind === 'drift' ? 'drift' : 'new objects'} · last check{' '}
                      {formatTime(t.last_check) || 'not yet'}
                    </div>
                  </td>
                  <td data-testid="jmk-trigger-mode">{t.mode}</td>
                  <td>
                    <span
                      className={`jmk-State jmk-mod-${stateClass(t.state)}`}
                      data-testid="jmk-trigger-state"
                      title={t.state}
                    >
                      {t.state}
                    </span>
                    <div className="jmk-Sub" data-testid="jmk-trigger-last-fire">
                      {t.last_fire ? `fired ${formatTime(t.last_fire)}` : 'never fired'}
                    </div>
                  </td>
                </tr>
                {open && (
                  <tr className="jmk-TriggerDetail-row">
                    <td colSpan={3}>
                      <TriggerDetail trigger={t} />
                    </td>
                  </tr>
                )}
              </tbody>
            );
          })}
        </table>
      )}
    </div>
  );
}
