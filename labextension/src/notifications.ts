/**
 * Job and trigger notifications: the server extension emits a jupyter_events
 * event when a job of this user ends (jupyter_mlflow_k8s/labapp/notifications.py)
 * and when a pipeline trigger fires or suggests a run
 * (labapp/trigger_notifications.py); this plugin turns each into a JupyterLab
 * Notification: a job's name, state and duration, with actions that open the
 * job in the sidebar and its run in MLflow; a trigger's fire or suggestion,
 * with actions that open the trigger in the sidebar and copy a suggested
 * command. The sidebar setting `notifications` turns them off.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { Event } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { requestAPI } from './api';
import { formatDuration } from './format';
import { mlflowRunUrl, safeBaseUrl } from './settings';
import { IJobEndedEvent, IStatus, ITriggerFiredEvent } from './types';

/** The event's schema id (labapp/notifications.py SCHEMA_ID). */
export const JOB_ENDED_SCHEMA = 'https://jupyter-mlflow-k8s.org/events/job-ended';
/** Opens the sidebar on one job: `{ jobId }` (registered by the sidebar plugin in index.ts). */
export const SHOW_JOB_COMMAND = 'jupyter-mlflow-k8s:show-job';
/** The event's schema id (labapp/trigger_notifications.py SCHEMA_ID). */
export const TRIGGER_FIRED_SCHEMA = 'https://jupyter-mlflow-k8s.org/events/trigger-fired';
/** Opens the sidebar on one trigger: `{ name }` (registered by the sidebar plugin in index.ts). */
export const SHOW_TRIGGER_COMMAND = 'jupyter-mlflow-k8s:show-trigger';
/** The sidebar plugin, whose settings (schema/plugin.json) hold `notifications` and `mlflowUiUrl`. */
const SIDEBAR_PLUGIN_ID = 'jupyter-mlflow-k8s:plugin';

const TYPES: Record<string, Notification.TypeOptions> = {
  succeeded: 'success',
  failed: 'error',
  cancelled: 'info'
};

/** What the notification says: `Job "name" succeeded after 3m 12s`. */
export function notificationText(event: IJobEndedEvent): string {
  const took = formatDuration(event.duration);
  const name = event.name.length > 60 ? `${event.name.slice(0, 57)}…` : event.name;
  return `Job "${name}" (${event.job_id}) ${event.state}${took ? ` after ${took}` : ''}`;
}

/** What a trigger notification says: `Trigger "t" suggests a run of pipeline.yaml: 3 new objects in …`. */
export function triggerNotificationText(event: ITriggerFiredEvent): string {
  const what = event.event === 'suggested' ? 'suggests a run of' : 'started a run of';
  const pipeline = event.pipeline.split('/').slice(-2).join('/');
  const why =
    event.objects ? `${event.objects} new object${event.objects === 1 ? '' : 's'}` : event.condition;
  const run = event.run_id ? ` as ${event.run_id}` : '';
  return `Trigger "${event.trigger}" ${what} ${pipeline}${run} (${why})`;
}

function isTriggerFired(emission: Event.Emission): boolean {
  return emission.schema_id === TRIGGER_FIRED_SCHEMA && typeof emission.trigger === 'string';
}

function isJobEnded(emission: Event.Emission): boolean {
  return emission.schema_id === JOB_ENDED_SCHEMA && typeof emission.job_id === 'string';
}

export const notificationsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-mlflow-k8s:notifications',
  description: 'Notifications when a job of this user ends or a pipeline trigger fires, with links to the sidebar and MLflow.',
  autoStart: true,
  optional: [ISettingRegistry],
  activate: (app: JupyterFrontEnd, settingRegistry: ISettingRegistry | null) => {
    let enabled = true;
    let mlflowUiUrl = '';
    if (settingRegistry) {
      settingRegistry
        .load(SIDEBAR_PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            const composite = settings.composite as Record<string, unknown>;
            enabled = composite.notifications !== false;
            mlflowUiUrl = typeof composite.mlflowUiUrl === 'string' ? composite.mlflowUiUrl.trim() : '';
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => console.warn(`${SIDEBAR_PLUGIN_ID}: settings not loaded; notifications stay on.`, reason));
    }

    // The server's MLflow UI link, asked once, when the first notification needs it.
    let status: Promise<IStatus | null> | null = null;
    const mlflowBase = async (): Promise<string | null> => {
      if (mlflowUiUrl) {
        return safeBaseUrl(mlflowUiUrl);
      }
      status = status ?? requestAPI<IStatus>('status').catch(() => null);
      return safeBaseUrl((await status)?.mlflow_ui_url);
    };

    const announce = async (event: IJobEndedEvent) => {
      const actions: Notification.IAction[] = [
        {
          label: 'Show in sidebar',
          caption: 'Open this job in the MLflow jobs sidebar',
          callback: () => void app.commands.execute(SHOW_JOB_COMMAND, { jobId: event.job_id })
        }
      ];
      const base = await mlflowBase();
      if (base && event.run_id && event.experiment_id) {
        const url = mlflowRunUrl(base, event.experiment_id, event.run_id);
        actions.push({
          label: 'Open in MLflow',
          caption: url,
          displayType: 'link',
          callback: () => void window.open(url, '_blank', 'noopener,noreferrer')
        });
      }
      Notification.emit(notificationText(event), TYPES[event.state] ?? 'info', {
        autoClose: event.state === 'failed' ? false : 15000,
        actions
      });
    };

    const announceTrigger = (event: ITriggerFiredEvent) => {
      const actions: Notification.IAction[] = [
        {
          label: 'Show in sidebar',
          caption: 'Open this trigger in the MLflow jobs sidebar',
          callback: () => void app.commands.execute(SHOW_TRIGGER_COMMAND, { name: event.trigger })
        }
      ];
      const command = event.command;
      if (event.event === 'suggested' && command) {
        actions.push({
          label: 'Copy command',
          caption: command,
          callback: () => void navigator.clipboard?.writeText(command).catch(() => undefined)
        });
      }
      // A suggestion waits for someone to act on it; a fire only reports.
      Notification.emit(triggerNotificationText(event), event.event === 'suggested' ? 'warning' : 'info', {
        autoClose: event.event === 'suggested' ? false : 15000,
        actions
      });
    };

    app.serviceManager.events.stream.connect((_, emission) => {
      if (!enabled) {
        return;
      }
      if (isJobEnded(emission)) {
        void announce(emission as unknown as IJobEndedEvent);
      } else if (isTriggerFired(emission)) {
        announceTrigger(emission as unknown as ITriggerFiredEvent);
      }
    });
  }
};
