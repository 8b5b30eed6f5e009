/**
 * A small SVG line chart: one or more series against a shared x axis, with
 * min/max labels. No chart library; labels are React text nodes.
 */
import * as React from 'react';

import { formatNumber } from '../format';

export interface ISeries {
  label: string;
  /** Points as [x, y]; y null leaves a gap. */
  points: Array<[number, number | null]>;
  /** CSS colour; defaults to a palette by index. */
  color?: string;
}

export interface ILineChartProps {
  title: string;
  series: ISeries[];
  testId: string;
  /** Suffix shown after values, e.g. 'ms'. */
  unit?: string;
  /** Lower bound of the y axis (e.g. 0 for rates); default: the data's minimum. */
  yMin?: number;
  width?: number;
  height?: number;
}

const PALETTE = [
  'var(--jp-brand-color1, #1976d2)',
  'var(--jp-warn-color1, #f57c00)',
  'var(--jp-success-color1, #388e3c)',
  'var(--jp-error-color1, #d32f2f)'
];

const PAD = { left: 44, right: 8, top: 6, bottom: 16 };

export function LineChart(props: ILineChartProps): JSX.Element {
  const width = props.width ?? 300;
  const height = props.height ?? 110;
  const innerW = width - PAD.left - PAD.right;
  const innerH = height - PAD.top - PAD.bottom;

  let xMin = Infinity;
  let xMax = -Infinity;
  let yMin = props.yMin ?? Infinity;
  let yMax = -Infinity;
  let count = 0;
  for (const s of props.series) {
    for (const [x, y] of s.points) {
      xMin = Math.min(xMin, x);
      xMax = Math.max(xMax, x);
      if (y !== null && isFinite(y)) {
        yMin = Math.min(yMin, y);
        yMax = Math.max(yMax, y);
        count++;
      }
    }
  }
  if (!isFinite(yMin) || !isFinite(yMax)) {
    yMin = 0;
    yMax = 1;
  }
  if (yMax === yMin) {
    yMax = yMin + (Math.abs(yMin) || 1);
  }
  if (!isFinite(xMin) || xMax === xMin) {
    xMax = (isFinite(xMin) ? xMin : 0) + 1;
    xMin = xMax - 1;
  }
  const sx = (x: number) => PAD.left + ((x - xMin) / (xMax - xMin)) * innerW;
  const sy = (y: number) => PAD.top + innerH - ((y - yMin) / (yMax - yMin)) * innerH;

  const paths = props.series.map((s, i) => {
    let d = '';
    let pen = false;
    for (const [x, y] of s.points) {
      if (y === null || !isFinite(y)) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
      pen = true;
    }
    return { d, color: s.color ?? PALETTE[i % PALETTE.length], label: s.label, points: s.points };
  });
  const unit = props.unit ? ` ${props.unit}` : '';
  const last = (s: ISeries): number | null => {
    for (let i = s.points.length - 1; i >= 0; i--) {
      const y = s.points[i][1];
      if (y !== null && isFinite(y)) {
        return y;
      }
    }
    return null;
  };

  return (
    <div className="jmk-Chart" data-testid={props.testId}>
      <div className="jmk-Chart-title">
        <span>{props.title}</span>
        {props.series.map((s, i) => (
          <span
            key={s.label}
            className="jmk-Chart-legend"
            style={{ color: s.color ?? PALETTE[i % PALETTE.length] }}
            data-testid={`${props.testId}-value`}
          >
            {props.series.length > 1 ? `${s.label}: ` : ''}
            {formatNumber(last(s))}
            {last(s) !== null ? unit : ''}
          </span>
        ))}
      </div>
      <svg
        width={width}
        height={height}
        viewBox={`0 0 ${width} ${height}`}
        className="jmk-Chart-svg"
        data-points={count}
        role="img"
        aria-label={props.title}
      >
        <line
          x1={PAD.left}
          y1={PAD.top + innerH}
          x2={PAD.left + innerW}
          y2={PAD.top + innerH}
          className="jmk-Chart-axis"
        />
        <line x1={PAD.left} y1={PAD.top} x2={PAD.left} y2={PAD.top + innerH} className="jmk-Chart-axis" />
        <text x={PAD.left - 4} y={PAD.top + 8} textAnchor="end" className="jmk-Chart-label">
          {formatNumber(yMax)}
        </text>
        <text x={PAD.left - 4} y={PAD.top + innerH} textAnchor="end" className="jmk-Chart-label">
          {formatNumber(yMin)}
        </text>
        {paths.map(p => (
          <path key={p.label} d={p.d} fill="none" stroke={p.color} strokeWidth={1.5} />
        ))}
        {count === 0 && (
          <text x={PAD.left + innerW / 2} y={PAD.top + innerH / 2} textAnchor="middle" className="jmk-Chart-label">
            no data yet
          </text>
        )}
      </svg>
    </div>
  );
}
