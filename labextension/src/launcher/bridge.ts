/**
 * The kernel bridge of the launch form (contract C1): one silent execute
 * request whose user expression calls
 * `jupyter_mlflow_k8s.magics.launcher.kernel_request(get_ipython(), BASE64)`
 * and answers a JSON dict under `application/json`. The kernel computes
 * everything (free variables, sizes, validation); the browser never guesses.
 */
import { Kernel, KernelMessage } from '@jupyterlab/services';

import { IPreset } from '../types';

/** The form's values as `%%train` flags (null: not given). */
export interface ILaunchValues {
  backend: string | null;
  preset: string | null;
  gpus: string | null;
  cpu: string | null;
  memory: string | null;
  image: string | null;
  experiment: string | null;
  register: string | null;
  async: boolean;
}

/** The keys of ILaunchValues that are text fields. */
export type LaunchTextField = Exclude<keyof ILaunchValues, 'async'>;

/** One free variable the job would receive. */
export interface IShipItem {
  name: string;
  type: string;
  size: number | null;
  size_text: string;
  picklable: boolean;
  warning: string | null;
}

/** The answer to `{"op": "describe"}`. */
export interface IDescribeReply {
  ok: true;
  values: ILaunchValues;
  extra: string;
  had_line: boolean;
  body: string;
  ship: IShipItem[];
  ship_total_text: string;
  returns: string[];
  presets: IPreset[];
  backends: string[];
  default_backend: string;
  errors: Record<string, string>;
}

/** The answer to `{"op": "line"}` when the values are valid. */
export interface ILineReply {
  ok: true;
  line: string;
  cell: string;
}

/** Any refused request: problems by value key ("memory", "extra", "cell", "request"...). */
export interface IRefusal {
  ok: false;
  errors: Record<string, string>;
}

export type KernelProblem = 'no-kernel' | 'missing-package' | 'kernel-error';

/** The kernel could not answer: it is gone, lacks the package, or raised. */
export class KernelBridgeError extends Error {
  constructor(
    readonly problem: KernelProblem,
    message: string
  ) {
    super(message);
    this.name = 'KernelBridgeError';
  }
}

/** The Python expression the kernel evaluates for `request`. */
export function launcherExpression(request: unknown): string {
  const encoded = base64(JSON.stringify(request));
  return (
    "__import__('jupyter_mlflow_k8s.magics.launcher', fromlist=['kernel_request'])" +
    `.kernel_request(get_ipython(), '${encoded}')`
  );
}

/** Standard base64 of the UTF-8 bytes of `text` (btoa alone only takes Latin-1). */
export function base64(text: string): string {
  const bytes = new TextEncoder().encode(text);
  let binary = '';
  const chunk = 0x8000; // String.fromCharCode with a spread of a huge cell would overflow the stack
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode(...bytes.subarray(i, i + chunk));
  }
  return btoa(binary);
}

interface IExpressionResult {
  status: 'ok' | 'error';
  data?: Record<string, unknown>;
  ename?: string;
  evalue?: string;
}

/** Why `ename: evalue` happened, said as what to do. */
function explain(ename: string, evalue: string): KernelBridgeError {
  if (ename === 'ModuleNotFoundError' || ename === 'ImportError') {
    if (/'jupyter_mlflow_k8s'/.test(evalue)) {
      return new KernelBridgeError(
        'missing-package',
        'This kernel cannot import jupyter_mlflow_k8s: run %pip install jupyter_mlflow_k8s in it, ' +
          'then restart the kernel.'
      );
    }
    return new KernelBridgeError(
      'missing-package',
      `This kernel's jupyter_mlflow_k8s has no launch form (${ename}: ${evalue}): ` +
        'run %pip install -U jupyter_mlflow_k8s in it, then restart the kernel.'
    );
  }
  return new KernelBridgeError(
    'kernel-error',
    `The kernel could not answer the form: ${ename}: ${evalue}`
  );
}

/** Loads the `%%train` magic into the kernel (a no-op when `%load_ext jupyter_mlflow_k8s` ran already). */
const LOAD_EXTENSION =
  "get_ipython().extension_manager.load_extension('jupyter_mlflow_k8s')";

/**
 * Send `request` to the kernel's launcher and return its reply dict.
 * Waits behind a cell that is running (the kernel answers one request at a time).
 * With `loadExtension`, the same request loads the magics, so the cell the
 * form writes runs even where `%load_ext jupyter_mlflow_k8s` was never typed.
 */
export async function kernelRequest<T>(
  kernel: Kernel.IKernelConnection | null | undefined,
  request: Record<string, unknown>,
  loadExtension = false
): Promise<T> {
  if (!kernel || kernel.isDisposed) {
    throw new KernelBridgeError(
      'no-kernel',
      'This notebook has no kernel: start one (Kernel ▸ Change Kernel…) and open the form again.'
    );
  }
  const content: KernelMessage.IExecuteRequestMsg['content'] = {
    code: '',
    silent: true,
    store_history: false,
    allow_stdin: false,
    stop_on_error: false,
    user_expressions: {
      jmk: launcherExpression(request),
      ...(loadExtension ? { jmk_load_extension: LOAD_EXTENSION } : {})
    }
  };
  const future = kernel.requestExecute(content, true);
  let reply: KernelMessage.IExecuteReplyMsg;
  try {
    reply = await future.done;
  } catch (error) {
    throw new KernelBridgeError(
      'no-kernel',
      `The kernel did not answer (${String(error)}): restart it and open the form again.`
    );
  }
  const body = reply.content;
  if (body.status !== 'ok') {
    const failed = body as KernelMessage.IReplyErrorContent;
    throw explain(failed.ename ?? 'Error', failed.evalue ?? '');
  }
  const result = (body.user_expressions ?? {})['jmk'] as unknown as IExpressionResult | undefined;
  if (!result) {
    throw new KernelBridgeError('kernel-error', 'The kernel answered without the form\'s result.');
  }
  if (result.status !== 'ok') {
    throw explain(result.ename ?? 'Error', result.evalue ?? '');
  }
  const data = result.data?.['application/json'];
  if (!data || typeof data !== 'object') {
    throw new KernelBridgeError(
      'kernel-error',
      "The kernel's jupyter_mlflow_k8s answered the form without JSON: " +
        'run %pip install -U jupyter_mlflow_k8s in it, then restart the kernel.'
    );
  }
  return data as T;
}
