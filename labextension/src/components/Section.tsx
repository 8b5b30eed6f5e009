/** A collapsible section of the sidebar; its body is unmounted (and stops polling) when collapsed. */
import { caretDownIcon, caretRightIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

export interface ISectionProps {
  /** 'jobs', 'runs', 'registry', 'serving', 'triggers': used in test ids. */
  id: string;
  title: string;
  initiallyOpen?: boolean;
  /** Extra controls in the header (right side). */
  actions?: React.ReactNode;
  children: React.ReactNode;
  /** Each new value opens the section (e.g. the show-job command opening Jobs). */
  openSignal?: unknown;
}

export function Section(props: ISectionProps): JSX.Element {
  const [open, setOpen] = React.useState(props.initiallyOpen ?? true);
  React.useEffect(() => {
    if (props.openSignal !== undefined && props.openSignal !== null) {
      setOpen(true);
    }
  }, [props.openSignal]);
  const Caret = open ? caretDownIcon : caretRightIcon;
  return (
    <section
      className={`jmk-Section${open ? ' jmk-mod-open' : ''}`}
      data-testid={`jmk-section-${props.id}`}
      data-open={open ? 'true' : 'false'}
    >
      <header className="jmk-Section-header">
        <button
          className="jmk-Section-toggle"
          data-testid={`jmk-section-${props.id}-toggle`}
          aria-expanded={open}
          onClick={() => setOpen(!open)}
        >
          <Caret.react tag="span" className="jmk-Section-caret" />
          <span className="jmk-Section-title">{props.title}</span>
        </button>
        {open && <div className="jmk-Section-actions">{props.actions}</div>}
      </header>
      {open && <div className="jmk-Section-body">{props.children}</div>}
    </section>
  );
}
