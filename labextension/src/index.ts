/**
 * jupyter-mlflow-k8s: wires the sidebar plugin (panel, command, settings,
 * layout restore). Everything else lives in components/.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { SidebarWidget } from './components/Sidebar';
import { addRunCellAsJob } from './launcher/command';
import { notificationsPlugin, SHOW_JOB_COMMAND, SHOW_TRIGGER_COMMAND } from './notifications';
import { readSettings } from './settings';

export const PLUGIN_ID = 'jupyter-mlflow-k8s:plugin';

export namespace CommandIDs {
  export const open = 'jupyter-mlflow-k8s:open-sidebar';
  export const showJob = SHOW_JOB_COMMAND;
  export const showTrigger = SHOW_TRIGGER_COMMAND;
  export const runCellAsJob = 'jupyter-mlflow-k8s:run-cell-as-job';
}

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <rect x="3" y="13" width="4" height="8" rx="1"/>
    <rect x="10" y="8" width="4" height="13" rx="1"/>
    <rect x="17" y="3" width="4" height="18" rx="1"/>
  </g>
</svg>`;

export const sidebarIcon = new LabIcon({ name: 'jupyter-mlflow-k8s:sidebar', svgstr: ICON_SVG });

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Sidebar with jobs, MLflow runs, the model registry and live serving metrics.',
  autoStart: true,
  optional: [ILayoutRestorer, ISettingRegistry, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null
  ) => {
    const widget = new SidebarWidget();
    widget.id = 'jmk-sidebar';
    widget.title.icon = sidebarIcon;
    widget.title.caption = 'MLflow jobs, runs, models and serving';
    app.shell.add(widget, 'left', { rank: 850 });
    restorer?.add(widget, widget.id);

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show the MLflow jobs sidebar',
      execute: () => app.shell.activateById(widget.id)
    });
    palette?.addItem({ command: CommandIDs.open, category: 'MLflow' });

    app.commands.addCommand(CommandIDs.showJob, {
      label: args => (args.jobId ? `Show job ${String(args.jobId)} in the MLflow jobs sidebar` : 'Show a job in the sidebar'),
      describedBy: {
        args: {
          type: 'object',
          properties: { jobId: { type: 'string', description: 'the job id, as %jobs lists it' } },
          required: ['jobId']
        }
      },
      execute: args => {
        app.shell.activateById(widget.id);
        if (typeof args.jobId === 'string' && args.jobId) {
          widget.showJob(args.jobId);
        }
      }
    });

    app.commands.addCommand(CommandIDs.showTrigger, {
      label: args =>
        args.name ? `Show trigger ${String(args.name)} in the MLflow jobs sidebar` : 'Show a trigger in the sidebar',
      describedBy: {
        args: {
          type: 'object',
          properties: { name: { type: 'string', description: 'the trigger name, as jmk trigger list shows it' } },
          required: ['name']
        }
      },
      execute: args => {
        app.shell.activateById(widget.id);
        if (typeof args.name === 'string' && args.name) {
          widget.showTrigger(args.name);
        }
      }
    });

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            widget.settings = readSettings(settings.composite as Record<string, unknown>);
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.warn(`${PLUGIN_ID}: settings not loaded, using defaults.`, reason);
        });
    }
  }
};

/** "Run cell as job…" on code cells; toolbar, context menu and shortcut in schema/launcher.json. */
const launcherPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-mlflow-k8s:launcher',
  description: 'Run a notebook cell as a job (%%train) from a form.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, palette: ICommandPalette | null) =>
    addRunCellAsJob(app, tracker, CommandIDs.runCellAsJob, palette)
};

export default [plugin, launcherPlugin, notificationsPlugin];
