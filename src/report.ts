// Human-readable output of the commands (stdout): the plan's partition table with its
// density chart, and the run history. Logs go to stderr, never here.
import { PRICE_AXIS_END } from './domain.js';
import type { PartitionOutcome } from './db/partitions.js';
import type { PartitionRecord, RunRecord } from './db/runs.js';
import type { Plan } from './scheduler.js';

const BAR_WIDTH = 40;
const money = (dollars: number) => (dollars >= PRICE_AXIS_END ? '∞' : `$${dollars.toLocaleString('en-US')}`);
const bar = (value: number, max: number) => '█'.repeat(max > 0 ? Math.max(value > 0 ? 1 : 0, Math.round((value / max) * BAR_WIDTH)) : 0);

export function formatPlan(planned: Plan, strategy: string): string {
  const lines: string[] = [];
  const window = planned.updatedFrom ? `${planned.updatedFrom} → ${planned.updatedTo}` : `everything up to ${planned.updatedTo}`;
  lines.push(`${planned.runType} run · ${planned.priceField} · window ${window}`);
  if (planned.watermarkBefore) lines.push(`watermark before: ${planned.watermarkBefore}`);
  lines.push(
    `${planned.totalRecords.toLocaleString('en-US')} stones → ${planned.partitions.length} partitions · ` +
      `${planned.scan.countQueries} count queries in ${(planned.scan.durationMs / 1000).toFixed(2)} s (${strategy})`,
  );
  if (planned.partitions.length === 0) {
    lines.push('', 'The window holds no stones: nothing to publish.');
    return lines.join('\n');
  }
  const ideal = planned.totalRecords / planned.partitions.length;
  const max = Math.max(...planned.partitions.map((p) => p.expectedRecords));
  lines.push(`largest partition ${(max / ideal).toFixed(3)} × ideal (${Math.round(ideal).toLocaleString('en-US')})`, '');

  const rows = planned.partitions.map((p) => [
    p.partitionId,
    `${money(p.priceMin)} ≤ price < ${money(p.priceMax)}`,
    p.expectedRecords.toLocaleString('en-US'),
  ]);
  const widths = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i]!.length), ['partition', 'range', 'records'][i]!.length));
  const pad = (cells: string[]) => cells.map((c, i) => (i === 2 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ');
  lines.push(pad(['partition', 'range', 'records']) + '  share');
  lines.push(widths.map((w) => '─'.repeat(w)).join('  ') + '  ' + '─'.repeat(BAR_WIDTH));
  planned.partitions.forEach((p, i) => lines.push(`${pad(rows[i]!)}  ${bar(p.expectedRecords, max)}`));

  // Density: stones per dollar of each partition's width (the open last one is drawn to the ceiling it was scanned to).
  const density = planned.partitions.map((p) => {
    const width = Math.max(1, (p.priceMax >= PRICE_AXIS_END ? Math.max(p.priceMin * 2, p.priceMin + 1) : p.priceMax) - p.priceMin);
    return p.expectedRecords / width;
  });
  const maxLog = Math.log10(1 + Math.max(...density));
  lines.push('', 'density (stones per $, log scale)');
  planned.partitions.forEach((p, i) => {
    const d = density[i]!;
    const length = maxLog > 0 ? Math.round((Math.log10(1 + d) / maxLog) * BAR_WIDTH) : 0;
    lines.push(`${money(p.priceMin).padStart(12)} ${'▇'.repeat(length)} ${d >= 10 ? Math.round(d) : d.toFixed(2)}`);
  });
  return lines.join('\n');
}

export function formatRuns(runs: RunRecord[]): string {
  if (runs.length === 0) return 'No runs recorded yet.';
  const header = ['run', 'type', 'status', 'workers', 'stones', 'queries', 'started', 'completed / error'];
  const rows = runs.map((r) => [
    r.runId,
    r.runType ?? '—',
    r.status,
    String(r.expectedWorkers),
    String(r.totalRecords),
    String(r.countQueries),
    r.startedAt,
    r.completedAt ?? (r.error ? `error: ${r.error}` : '—'),
  ]);
  return table(header, rows);
}

/** One run with its partitions (`status <runId>`). */
export function formatRun(run: RunRecord, partitions: (PartitionRecord & Partial<PartitionOutcome>)[]): string {
  const lines = [
    `run ${run.runId}: ${run.status}${run.runType ? ` (${run.runType})` : ''}`,
    `  started ${run.startedAt}${run.holder ? ` by ${run.holder}` : ''}`,
    `  window ${run.updatedFrom ?? '(no lower bound)'} → ${run.updatedTo ?? '(not fixed yet)'} · ${run.priceField ?? '—'}`,
    `  base filter ${JSON.stringify(run.baseQuery ?? {})}`,
    `  ${run.totalRecords} stones · ${run.expectedWorkers} work items · ${run.countQueries} count queries in ${run.scanDurationMs} ms`,
    `  recorded ${run.recordedAt ?? '—'} · published ${run.publishedAt ?? '—'} (publish attempts ${run.publishAttempts}) · completed ${run.completedAt ?? '—'}`,
  ];
  if (run.watermarkBefore) lines.push(`  watermark before ${run.watermarkBefore}`);
  if (run.error) lines.push(`  error: ${run.error}`);
  if (partitions.length === 0) return lines.join('\n');
  const rows = partitions.map((p) => [
    p.partitionId,
    `${money(p.priceMin)} ≤ price < ${money(p.priceMax)}`,
    String(p.expectedRecords),
    p.fetchedRecords === undefined ? '—' : String(p.fetchedRecords),
    p.verifiedCount === undefined || p.verifiedCount === null
      ? '—'
      : `${p.verifiedCount}${p.discrepancy ? ` (off by ${p.discrepancy})` : ''}`,
    p.status ?? '—',
    p.deliveries === undefined ? '—' : String(p.deliveries) + (p.retries ? ` (${p.retries} retries)` : ''),
    p.publishedAt ?? '—',
    p.error ?? '',
  ]);
  const header = ['partition', 'range', 'expected', 'fetched', 'exact count', 'status', 'deliveries', 'acknowledged', 'error'];
  return [...lines, '', table(header, rows)].join('\n');
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [fmt(header), ...rows.map(fmt)].join('\n');
}
