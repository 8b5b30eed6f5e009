/**
 * The "Run cell as job…" command: on the active code cell of a notebook with
 * a kernel, it opens the launch form; when the kernel accepts the values, the
 * cell's text becomes the `%%train` line it returned and the cell runs, so the
 * magic stays the one source of truth.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { ICommandPalette, showErrorMessage } from '@jupyterlab/apputils';
import { CodeCell } from '@jupyterlab/cells';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { LaunchDialog, LaunchFormBody } from './LaunchForm';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M4 5h9v2H6v10h7v2H4z"/>
    <path d="M14 7l7 5-7 5v-3.5H9v-3h5z"/>
  </g>
</svg>`;

export const runAsJobIcon = new LabIcon({ name: 'jupyter-mlflow-k8s:run-as-job', svgstr: ICON_SVG });

/** The active code cell of the current notebook, with its panel, or null. */
function activeCodeCell(
  tracker: INotebookTracker
): { panel: NotebookPanel; cell: CodeCell } | null {
  const panel = tracker.currentWidget;
  const cell = tracker.activeCell;
  if (!panel || !cell || cell.model.type !== 'code') {
    return null;
  }
  return { panel, cell: cell as CodeCell };
}

/** Write `text` into `cell`, make it the only selected cell and run it. */
async function replaceAndRun(panel: NotebookPanel, cell: CodeCell, text: string): Promise<void> {
  const notebook = panel.content;
  const index = notebook.widgets.indexOf(cell);
  if (index < 0 || cell.isDisposed) {
    throw new Error('The cell was deleted while the form was open: nothing was run.');
  }
  cell.model.sharedModel.setSource(text);
  notebook.deselectAll();
  notebook.activeCellIndex = index;
  await NotebookActions.run(notebook, panel.sessionContext);
}

/** Add the command (and its palette entry); menus, toolbar and shortcut come from the schema. */
export function addRunCellAsJob(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  commandId: string,
  palette: ICommandPalette | null
): void {
  const { commands } = app;
  commands.addCommand(commandId, {
    label: 'Run cell as job…',
    caption: 'Send this cell as a job (%%train) with resources picked in a form',
    icon: runAsJobIcon,
    isVisible: () => activeCodeCell(tracker) !== null,
    isEnabled: () => {
      const found = activeCodeCell(tracker);
      return !!found && !!found.panel.sessionContext.session?.kernel;
    },
    execute: async () => {
      const found = activeCodeCell(tracker);
      if (!found) {
        return;
      }
      const { panel, cell } = found;
      const form = new LaunchFormBody({
        kernel: () => panel.sessionContext.session?.kernel,
        cellText: () => cell.model.sharedModel.getSource()
      });
      const result = await new LaunchDialog(form).launch();
      if (result.button.accept && result.value) {
        try {
          await replaceAndRun(panel, cell, result.value.cell);
        } catch (error) {
          await showErrorMessage('Run cell as job', error as Error);
        }
      }
    }
  });
  palette?.addItem({ command: commandId, category: 'Notebook Cell Operations' });

  // Enabled and visible follow the active cell and the notebook's kernel.
  const changed = () => commands.notifyCommandChanged(commandId);
  tracker.currentChanged.connect(changed);
  tracker.activeCellChanged.connect(changed);
  tracker.widgetAdded.connect((_, panel) => panel.sessionContext.kernelChanged.connect(changed));
}
