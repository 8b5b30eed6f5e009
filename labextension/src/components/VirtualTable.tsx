/**
 * A virtualized table: fixed-height rows, only the visible window (plus a few
 * rows of overscan) is in the DOM, so 10,000 rows scroll like 30. Rows not yet
 * fetched render as placeholders and `onNeedRows` asks for more.
 */
import * as React from 'react';

export interface IColumn<T> {
  key: string;
  title: string;
  /** CSS width, e.g. '40%' or '80px'. */
  width: string;
  render: (row: T) => React.ReactNode;
  /** Tooltip text for the cell. */
  tooltip?: (row: T) => string;
  sortable?: boolean;
}

export interface ISort {
  key: string;
  ascending: boolean;
}

export interface IVirtualTableProps<T> {
  columns: IColumn<T>[];
  rows: T[];
  /** Total rows when known (placeholders fill the gap); else rows.length. */
  total: number;
  rowKey: (row: T) => string;
  rowHeight?: number;
  height?: number;
  sort?: ISort | null;
  onSort?: (key: string) => void;
  onRowClick?: (row: T) => void;
  /** Called when the visible window reaches past the loaded rows. */
  onNeedRows?: (upTo: number) => void;
  testId: string;
  rowTestId: string;
}

const OVERSCAN = 8;

export function VirtualTable<T>(props: IVirtualTableProps<T>): JSX.Element {
  const rowHeight = props.rowHeight ?? 26;
  const height = props.height ?? 320;
  const [scrollTop, setScrollTop] = React.useState(0);
  const frame = React.useRef<number | null>(null);
  const bodyRef = React.useRef<HTMLDivElement>(null);

  const onScroll = (event: React.UIEvent<HTMLDivElement>) => {
    const top = event.currentTarget.scrollTop;
    // One state update per animation frame, however many scroll events arrive.
    if (frame.current === null) {
      frame.current = requestAnimationFrame(() => {
        frame.current = null;
        setScrollTop(bodyRef.current?.scrollTop ?? top);
      });
    }
  };
  React.useEffect(
    () => () => {
      if (frame.current !== null) {
        cancelAnimationFrame(frame.current);
      }
    },
    []
  );

  const total = Math.max(props.total, props.rows.length);
  const first = Math.max(0, Math.floor(scrollTop / rowHeight) - OVERSCAN);
  const last = Math.min(total, Math.ceil((scrollTop + height) / rowHeight) + OVERSCAN);

  const { onNeedRows } = props;
  const loaded = props.rows.length;
  React.useEffect(() => {
    // Ask for more a screen ahead of the end of what is loaded.
    const wanted = last + Math.ceil(height / rowHeight);
    if (onNeedRows && wanted > loaded) {
      onNeedRows(wanted);
    }
  }, [last, loaded, onNeedRows, height, rowHeight]);

  const template = props.columns.map(c => c.width).join(' ');
  const items: JSX.Element[] = [];
  for (let index = first; index < last; index++) {
    const row = index < loaded ? props.rows[index] : undefined;
    const style: React.CSSProperties = {
      transform: `translateY(${index * rowHeight}px)`,
      height: rowHeight,
      gridTemplateColumns: template
    };
    if (row === undefined) {
      items.push(
        <div key={`placeholder-${index}`} className="jmk-VRow jmk-mod-placeholder" style={style}>
          <div className="jmk-VCell">…</div>
        </div>
      );
      continue;
    }
    items.push(
      <div
        key={props.rowKey(row)}
        className={`jmk-VRow${index % 2 ? ' jmk-mod-odd' : ''}`}
        style={style}
        data-testid={props.rowTestId}
        data-index={index}
        data-key={props.rowKey(row)}
        onClick={() => props.onRowClick?.(row)}
        role="row"
      >
        {props.columns.map(c => (
          <div key={c.key} className="jmk-VCell" title={c.tooltip ? c.tooltip(row) : undefined} role="cell">
            {c.render(row)}
          </div>
        ))}
      </div>
    );
  }

  return (
    <div className="jmk-VTable" data-testid={props.testId} data-total={total} data-loaded={loaded} role="table">
      <div className="jmk-VHeader" style={{ gridTemplateColumns: template }} role="row">
        {props.columns.map(c => {
          const active = props.sort?.key === c.key;
          const arrow = active ? (props.sort?.ascending ? ' ▲' : ' ▼') : '';
          return c.sortable && props.onSort ? (
            <button
              key={c.key}
              className={`jmk-VHeadCell jmk-mod-sortable${active ? ' jmk-mod-active' : ''}`}
              data-testid="jmk-runs-sort"
              data-sort-key={c.key}
              data-sort-dir={active ? (props.sort?.ascending ? 'asc' : 'desc') : ''}
              onClick={() => props.onSort?.(c.key)}
              title={`Sort by ${c.title}`}
              role="columnheader"
            >
              {c.title}
              {arrow}
            </button>
          ) : (
            <div key={c.key} className="jmk-VHeadCell" role="columnheader">
              {c.title}
            </div>
          );
        })}
      </div>
      <div className="jmk-VBody" ref={bodyRef} style={{ height }} onScroll={onScroll}>
        <div className="jmk-VSpacer" style={{ height: total * rowHeight }}>
          {items}
        </div>
      </div>
    </div>
  );
}
