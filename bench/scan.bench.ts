// `npm run bench` (second table): the quantile scan cold and warm over many inventory seeds,
// in-process, with a simulated clock. It prints figures; it asserts nothing.
//
// Seeds: BENCH_SEEDS (default 101–130), held out from the seeds the scan was tuned on (1–5).
// For each seed: the realistic inventory (≈438,000 stones) and a night of drift applied to it
// here (about 3 % of the stones repriced by up to ±10 %, 1 % removed, 1 % added from the same
// distribution; the spike night adds 1,500 stones at one whole-dollar price on top). Rows:
//   full cold          the seed's inventory, no history                       N = 30
//   full warm          the drifted inventory, from the cold plan's boundaries N = 30
//                      and last night's stones per dollar (the raw table the workers filled)
//   full warm + spike  the same with the new spike                            N = 30
//                      (BENCH_NO_STONES=1: without the stones; BENCH_STONES_SCALE=1.1: their
//                      prices 10 % up, a misleading shape)
//   incremental cold   tonight's window (3 % of the drifted stones), no history, up to 10 workers
//   incremental warm   the same window, from last night's window's plan (the generator's last-day stones)
// Scan time is simulated, not measured: every round waits one latency (BENCH_LATENCY_MS, 100)
// and the rate limit spaces every query (BENCH_RPS, 24/s): rounds × latency + queries / rate.
// max/ideal is exact: the counter is the inventory itself.
import { performance } from 'node:perf_hooks';
import type { PriceBounds } from '../src/domain.js';
import {
  scanDensity,
  warmStartFrom,
  type CountFn,
  type DensityScan,
  type DollarStones,
  type ScanOptions,
  type WarmStart,
} from '../src/heatmap.js';
import { partitionCount, planPartitions, type PartitionRules } from '../src/partitioner.js';
import { generateInventory, mulberry32 } from '../tools/simulator/inventory.js';

const LATENCY_S = Number(process.env.BENCH_LATENCY_MS ?? 100) / 1000;
const RATE = Number(process.env.BENCH_RPS ?? 24);
const SEEDS = parseSeeds(process.env.BENCH_SEEDS ?? '101-130');
const TOLERANCE = Number(process.env.BENCH_TOLERANCE ?? 0.02);
/** Every price of last night's stones per dollar times this: a misleading shape (1 = the real one). */
const STONES_SCALE = Number(process.env.BENCH_STONES_SCALE ?? 1);

const full: PartitionRules = { maxWorkers: 30, recordsPerWorker: 5000, minRecordsPerWorker: 1000 };
const incremental: PartitionRules = { ...full, maxWorkers: 10 };

function parseSeeds(spec: string): number[] {
  return spec.split(',').flatMap((part) => {
    const [a, b] = part.split('-').map(Number);
    if (!Number.isInteger(a) || (b !== undefined && !Number.isInteger(b))) throw new Error(`BENCH_SEEDS: bad part ${part}`);
    return b === undefined ? [a!] : Array.from({ length: b - a! + 1 }, (_, i) => a! + i);
  });
}

/** Stones priced below a whole dollar, over prices in cents sorted ascending. */
function belowDollar(sorted: Int32Array, dollars: number): number {
  const cents = dollars * 100;
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid]! < cents) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** count({from}) and count({}) over prices in cents sorted ascending, exactly as the simulator answers them. */
function counter(sorted: Int32Array): CountFn {
  return (bounds: PriceBounds) => {
    if (bounds.to !== undefined) throw new Error('the scan never counts with a `to` bound');
    if (bounds.from === undefined) return Promise.resolve(sorted.length);
    return Promise.resolve(sorted.length - belowDollar(sorted, bounds.from));
  };
}

/**
 * A lower bound of the count queries of any warm scan built as the design asks (the total and
 * last night's boundaries in the first round): 1 + those boundaries + one query for each boundary
 * that must move to meet the target. The fewest moves are found knowing tonight's inventory
 * exactly: a DP over the boundaries kept, where a run of m moved ones between two kept ones works
 * when m cuts at whole dollars, each as far as one partition of the target allows (greedy), reach
 * the next kept one. Undefined when last night's plan had another partition count (a cold start).
 */
function warmLowerBound(sorted: Int32Array, cuts: readonly number[], rules: PartitionRules): number | undefined {
  const total = sorted.length;
  const n = partitionCount(total, rules);
  if (cuts.length !== n - 1) return undefined;
  const maxLoad = (1 + TOLERANCE) * (total / n);
  // The most stones below a whole-dollar cut that stays at or under `limit`.
  const reach = (limit: number): number => (limit >= total ? total : belowDollar(sorted, Math.floor(sorted[Math.floor(limit)]! / 100)));
  const kept = [0, ...cuts.map((c) => belowDollar(sorted, c)), total];
  const runWorks = (from: number, to: number, moved: number): boolean => {
    let at = from;
    for (let i = 0; i < moved && at < to; i++) {
      const next = reach(at + maxLoad);
      if (next <= at) return false;
      at = next;
    }
    return to - at <= maxLoad;
  };
  const fewest = Array.from({ length: n + 1 }, () => Infinity);
  fewest[0] = 0;
  for (let k = 1; k <= n; k++)
    for (let k0 = k - 1; k0 >= 0; k0--) {
      const moved = k - k0 - 1;
      if (fewest[k0]! + moved < fewest[k]! && runWorks(kept[k0]!, kept[k]!, moved)) fewest[k] = fewest[k0]! + moved;
    }
  return Number.isFinite(fewest[n]!) ? 1 + cuts.length + fewest[n]! : undefined;
}

/** Stones per whole dollar, as the scheduler reads them from the raw table (what last night's workers wrote). */
function dollarStones(priceCents: Int32Array): DollarStones[] {
  const byDollar = new Map<number, number>();
  for (const cents of priceCents) byDollar.set(Math.floor(cents / 100), (byDollar.get(Math.floor(cents / 100)) ?? 0) + 1);
  return [...byDollar].sort((a, b) => a[0] - b[0]).map(([dollar, stones]) => ({ dollar, stones }));
}

/** One night: ~3 % repriced by up to ±10 %, 1 % removed, 1 % added; optionally a new 1,500-stone spike. */
function drift(priceCents: Int32Array, seed: number, spike: boolean): Int32Array {
  const random = mulberry32(seed * 7919 + 17);
  const out: number[] = [];
  for (const cents of priceCents) {
    const r = random();
    if (r < 0.01) continue;
    if (r < 0.04) out.push(Math.max(0, Math.round(cents * (1 + (random() * 2 - 1) * 0.1))));
    else out.push(cents);
  }
  const added = generateInventory('realistic', { seed: seed + 50_000, size: Math.round(priceCents.length * 0.01) }).priceCents;
  out.push(...added);
  if (spike) {
    const dollars = Math.round(Math.exp(Math.log(300) + random() * (Math.log(20_000) - Math.log(300))));
    for (let i = 0; i < 1500; i++) out.push(dollars * 100);
  }
  return Int32Array.from(out);
}

/** A random share of the stones: an incremental window (the stones updated since the watermark). */
function sample(priceCents: Int32Array, share: number, seed: number): Int32Array {
  const random = mulberry32(seed);
  return priceCents.filter(() => random() < share);
}

interface Result {
  scan: DensityScan;
  maxOverIdeal: number;
  ok: boolean;
  seconds: number;
  /** Warm rows: warmLowerBound. */
  lowerBound?: number;
}

async function scan(priceCents: Int32Array, rules: PartitionRules, warmStart?: WarmStart): Promise<Result> {
  const sorted = Int32Array.from(priceCents).sort();
  const options: ScanOptions = {
    strategy: 'quantile',
    maxPrice: 250_000,
    denseZoneThreshold: 20_000,
    denseZoneStep: 100,
    partitions: rules,
    concurrency: 8,
    balanceTolerance: TOLERANCE,
    ...(warmStart ? { warmStart } : {}),
  };
  const result = await scanDensity(counter(sorted), options);
  const plan = planPartitions(result, rules);
  const ideal = result.total / plan.length;
  const maxOverIdeal = Math.max(...plan.map((p) => p.expectedRecords)) / ideal;
  // Within the tolerance, or within it of the provable floor.
  const ok =
    maxOverIdeal <= 1 + TOLERANCE + 1e-9 || (result.stopReason === 'unreachable' && maxOverIdeal <= result.floor + TOLERANCE + 1e-9);
  const lowerBound = warmStart ? warmLowerBound(sorted, warmStart.cuts, rules) : undefined;
  return {
    scan: result,
    maxOverIdeal,
    ok,
    seconds: result.rounds * LATENCY_S + result.countQueries / RATE,
    ...(lowerBound === undefined ? {} : { lowerBound }),
  };
}

const rows = ['full cold', 'full warm', 'full warm + spike', 'incremental cold', 'incremental warm'] as const;
type RowName = (typeof rows)[number];

async function main(): Promise<void> {
  const started = performance.now();
  const results = new Map<RowName, Result[]>(rows.map((r) => [r, []]));
  for (const seed of SEEDS) {
    const inventory = generateInventory('realistic', { seed });
    const base = inventory.priceCents;
    const cold = await scan(base, full);
    results.get('full cold')!.push(cold);
    const history = warmStartFrom(
      cold.scan.total,
      planPartitions(cold.scan, full),
      cold.scan.points,
      process.env.BENCH_NO_STONES ? undefined : dollarStones(STONES_SCALE === 1 ? base : base.map((c) => Math.round(c * STONES_SCALE))),
    );
    results.get('full warm')!.push(await scan(drift(base, seed, false), full, history));
    results.get('full warm + spike')!.push(await scan(drift(base, seed, true), full, history));

    // Last night's window: the stones the generator updated in the last day; tonight's: a fresh 3 % of the drifted ones.
    const lastDay = inventory.priceCents.filter((_, i) => inventory.updatedMs[i]! >= inventory.nowMs - 86_400_000);
    const lastNight = await scan(lastDay, incremental);
    const tonight = sample(drift(base, seed, false), 0.03, seed + 90_000);
    results.get('incremental cold')!.push(await scan(tonight, incremental));
    results
      .get('incremental warm')!
      .push(
        await scan(
          tonight,
          incremental,
          warmStartFrom(lastNight.scan.total, planPartitions(lastNight.scan, incremental), lastNight.scan.points),
        ),
      );
    if (process.env.BENCH_VERBOSE) {
      const r = (x: Result): string =>
        `${x.scan.countQueries}q${x.lowerBound === undefined ? '' : ` (≥ ${x.lowerBound})`}/${x.scan.rounds}r ${x.maxOverIdeal.toFixed(3)} ${x.scan.start}:${x.scan.stopReason} floor ${x.scan.floor.toFixed(3)}`;
      process.stderr.write(`seed ${seed}: ${rows.map((row) => `${row}: ${r(results.get(row)!.at(-1)!)}`).join(' | ')}\n`);
    }
  }

  const quantile = (values: number[], q: number): number => {
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
  };
  const header = [
    'row',
    'partitions',
    'count queries median / p90 / max',
    'lower bound median / p90 / max',
    'rounds median / max',
    'scan s median / p90 / max',
    'max/ideal median / max',
    'within target',
    'start',
    'stop',
  ];
  const tally = (values: string[]): string =>
    [...new Set(values)]
      .sort()
      .map((v) => `${v} ${values.filter((x) => x === v).length}`)
      .join(', ');
  process.stdout.write(
    `Scan benchmark: realistic inventories, seeds ${SEEDS[0]}–${SEEDS.at(-1)} (${SEEDS.length}), tolerance ${TOLERANCE}, ` +
      `simulated clock: rounds × ${LATENCY_S * 1000} ms + queries / ${RATE} per s\n\n`,
  );
  process.stdout.write(`| ${header.join(' | ')} |\n|${header.map(() => '---').join('|')}|\n`);
  for (const row of rows) {
    const list = results.get(row)!;
    const q = list.map((r) => r.scan.countQueries);
    const bounds = list.flatMap((r) => (r.lowerBound === undefined ? [] : [r.lowerBound]));
    const rounds = list.map((r) => r.scan.rounds);
    const s = list.map((r) => r.seconds);
    const ratio = list.map((r) => r.maxOverIdeal);
    const cells = [
      row,
      tally(list.map((r) => String(r.scan.partitions))),
      `${quantile(q, 0.5)} / ${quantile(q, 0.9)} / ${Math.max(...q)}`,
      bounds.length === 0 ? '–' : `${quantile(bounds, 0.5)} / ${quantile(bounds, 0.9)} / ${Math.max(...bounds)}`,
      `${quantile(rounds, 0.5)} / ${Math.max(...rounds)}`,
      `${quantile(s, 0.5).toFixed(2)} / ${quantile(s, 0.9).toFixed(2)} / ${Math.max(...s).toFixed(2)}`,
      `${quantile(ratio, 0.5).toFixed(3)} / ${Math.max(...ratio).toFixed(3)}`,
      `${list.filter((r) => r.ok).length} / ${list.length}`,
      tally(list.map((r) => `${r.scan.start} (${r.scan.start === 'cold' ? r.scan.startReason : `prior: ${r.scan.prior}`})`)),
      tally(list.map((r) => r.scan.stopReason)),
    ];
    process.stdout.write(`| ${cells.join(' | ')} |\n`);
  }
  process.stdout.write(`\n(${((performance.now() - started) / 1000).toFixed(0)} s)\n`);
}

await main();
