import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PRICE_AXIS_END, type PriceBounds } from '../src/domain.js';
import {
  defaultMaxQueries,
  scanDensity,
  warmStartFrom,
  type CountFn,
  type DensityScan,
  type DollarStones,
  type ScanOptions,
  type WarmStart,
} from '../src/heatmap.js';
import { partitionCount, planPartitions, type PartitionRules } from '../src/partitioner.js';
import { generateInventory, INVENTORY_SHAPES } from '../tools/simulator/inventory.js';
import { assertTiles, inventoryCounter, seededRandom, workerRule } from './helpers/inventory-counter.js';

const fullRules: PartitionRules = { maxWorkers: 30, recordsPerWorker: 5000, minRecordsPerWorker: 1000 };
const seedDefaults = { maxPrice: 250_000, denseZoneThreshold: 20_000, denseZoneStep: 100 };

async function planFor(prices: ArrayLike<number>, options: ScanOptions) {
  const counter = inventoryCounter(prices);
  const scan = await scanDensity(counter.count, options);
  const plan = planPartitions(scan, options.partitions);
  return { scan, plan, asked: counter.asked };
}

/** Everything CONTRACT §2 asks of one plan over one inventory. */
function assertContract(prices: ArrayLike<number>, plan: ReturnType<typeof planPartitions>, rules: PartitionRules): void {
  assertTiles(plan);
  const rule = workerRule(plan, prices);
  assert.equal(rule.unowned, 0, 'every stone is fetched');
  assert.equal(rule.duplicated, 0, 'no stone is fetched twice');
  assert.deepEqual(
    plan.map((p) => p.expectedRecords),
    rule.fetched,
    'expectedRecords is what the worker rule yields',
  );
  const total = prices.length;
  assert.ok(plan.length <= partitionCount(total, rules) && plan.length <= rules.maxWorkers);
  assert.equal(plan.length === 0, total === 0);
  if (total < rules.minRecordsPerWorker) assert.ok(plan.length <= 1);
  else
    assert.ok(
      plan.every((p) => p.expectedRecords >= rules.minRecordsPerWorker),
      'no partition under the minimum',
    );
}

describe('scanDensity: counts map onto the worker rule', () => {
  it('a stone at $499.50 is below $500 and at-or-above $499; whole-dollar bounds lose nothing', async () => {
    const prices = [49_950, 50_000, 49_999, 50_001, 0, 100_000]; // $499.50 $500.00 $499.99 $500.01 $0 $1000
    const { count } = inventoryCounter(prices);
    assert.equal(await count({ from: 499, to: 500 }), 3); // $499.50, $499.99, $500.00 — not $500.01
    assert.equal(await count({ to: 499 }), 1); // the trap: only $0 — $499.50 and $499.99 are in neither {to: 499}…
    assert.equal(await count({ from: 500 }), 3); // …nor {from: 500}
    const { scan, plan } = await planFor(prices, {
      strategy: 'quantile',
      ...seedDefaults,
      partitions: { maxWorkers: 3, recordsPerWorker: 2, minRecordsPerWorker: 1 },
    });
    assert.equal(scan.total, 6);
    assertContract(prices, plan, { maxWorkers: 3, recordsPerWorker: 2, minRecordsPerWorker: 1 });
  });

  it('an empty window: one count query, no work items', async () => {
    for (const strategy of ['quantile', 'seed'] as const) {
      const { scan, plan } = await planFor([], { strategy, ...seedDefaults, partitions: fullRules });
      assert.equal(scan.countQueries, 1);
      assert.deepEqual(plan, []);
    }
  });

  it('a single stone far above the ceiling: one partition that fetches it', async () => {
    const prices = [2_000_000_000]; // $20,000,000.00
    const { scan, plan } = await planFor(prices, { strategy: 'quantile', ...seedDefaults, partitions: fullRules });
    assert.equal(scan.countQueries, 1);
    assertContract(prices, plan, fullRules);
  });

  it('asks only with whole-dollar lower bounds, never a `to` bound', async () => {
    const prices = generateInventory('realistic', { seed: 7, size: 50_000 }).priceCents;
    for (const strategy of ['quantile', 'seed'] as const) {
      const { asked } = await planFor(prices, { strategy, ...seedDefaults, partitions: fullRules });
      assert.deepEqual(asked[0], {});
      for (const b of asked.slice(1)) {
        assert.equal(b.to, undefined);
        assert.ok(Number.isInteger(b.from) && b.from! > 0 && b.from! < PRICE_AXIS_END);
      }
      assert.equal(new Set(asked.slice(1).map((b) => b.from)).size, asked.length - 1, 'no price asked twice');
    }
  });

  it('keeps at most `concurrency` count queries in flight', async () => {
    const { count } = inventoryCounter(generateInventory('realistic', { seed: 3, size: 100_000 }).priceCents);
    let inFlight = 0;
    let peak = 0;
    const slow: CountFn = async (bounds: PriceBounds) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise((resolve) => setImmediate(resolve));
      inFlight--;
      return count(bounds);
    };
    await scanDensity(slow, { strategy: 'quantile', ...seedDefaults, partitions: fullRules, concurrency: 3 });
    assert.equal(peak, 3);
  });

  it('fails when a count fails or is not a count', async () => {
    const options: ScanOptions = { strategy: 'quantile', ...seedDefaults, partitions: fullRules };
    await assert.rejects(
      scanDensity(async () => Promise.reject(new Error('HTTP 503')), options),
      /HTTP 503/,
    );
    await assert.rejects(
      scanDensity(() => Promise.resolve(-1), options),
      /not a count/,
    );
    let calls = 0;
    await assert.rejects(
      scanDensity(() => Promise.resolve(calls++ === 0 ? 100_000 : Number.NaN), options),
      /not a count/,
    );
  });

  it('stops asking once a count has failed', async () => {
    let asked = 0;
    let refused = false;
    const failing: CountFn = async (bounds) => {
      asked++;
      if (bounds.from === undefined) return 100_000;
      const refuse = !refused;
      refused = true;
      await new Promise((resolve) => setImmediate(resolve));
      // The firewall refuses one request; the vendor would answer the next ones, but nobody should ask.
      if (refuse) throw new Error('HTTP 403 firewall');
      return 50_000;
    };
    const options: ScanOptions = { strategy: 'quantile', ...seedDefaults, partitions: fullRules, concurrency: 2, gridPoints: 10 };
    await assert.rejects(scanDensity(failing, options), /HTTP 403/);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(asked <= 1 + 2, `asked ${asked} times after the first failure`);
  });
});

describe('scanDensity: seed strategy', () => {
  it('fixed steps in the dense zone, adaptive steps above it up to the ceiling, the tail covered', async () => {
    const prices = generateInventory('realistic', { seed: 11 }).priceCents;
    const { scan, plan, asked } = await planFor(prices, { strategy: 'seed', ...seedDefaults, partitions: fullRules });
    const probed = asked.slice(1).map((b) => b.from!);
    const dense = probed.filter((p) => p <= 20_000);
    assert.deepEqual(
      dense,
      Array.from({ length: 200 }, (_, i) => (i + 1) * 100),
    );
    const above = probed.filter((p) => p > 20_000);
    assert.equal(above.at(-1), 250_000);
    const steps = above.map((p, i) => p - (above[i - 1] ?? 20_000));
    assert.ok(new Set(steps.slice(0, -1)).size > 1, `adaptive steps: ${steps.join(', ')}`);
    assert.equal(scan.strategy, 'seed');
    assertContract(prices, plan, fullRules);
  });
});

describe('scanDensity + planPartitions: properties over generated inventories', () => {
  // Small rules so that inventories of a few thousand stones make many partitions.
  const arbitraryRules = fc
    .record({
      maxWorkers: fc.integer({ min: 1, max: 40 }),
      recordsPerWorker: fc.integer({ min: 5, max: 200 }),
      minShare: fc.double({ min: 0, max: 1, noNaN: true }),
    })
    .map(({ maxWorkers, recordsPerWorker, minShare }) => ({
      maxWorkers,
      recordsPerWorker,
      minRecordsPerWorker: Math.max(1, Math.floor(minShare * recordsPerWorker)),
    }));

  const wholeDollar = fc.integer({ min: 0, max: 300_000 });
  const cents = fc.oneof(
    fc.integer({ min: 0, max: 30_000_000 }), // $0 – $300,000 with any cents
    wholeDollar.map((d) => d * 100), // whole-dollar prices
    fc.tuple(fc.integer({ min: 1, max: 3000 }), fc.constantFrom(-1, 0, 1)).map(([d, c]) => d * 10_000 + c), // a cent either side of round prices
    fc.integer({ min: 25_000_000, max: 2_147_483_647 }), // above the ceiling, up to the largest Int of cents
    fc.constant(0), // $0.00
  );
  const arbitraryInventory = fc
    .record({
      stones: fc.array(cents, { maxLength: 1500 }),
      spikes: fc.array(fc.record({ price: cents, copies: fc.integer({ min: 1, max: 300 }) }), { maxLength: 4 }),
      pointMass: fc.option(cents, { nil: undefined }),
    })
    .map(({ stones, spikes, pointMass }) => {
      const prices = [...stones];
      for (const s of spikes) for (let i = 0; i < s.copies; i++) prices.push(s.price);
      if (pointMass !== undefined) {
        const share = Math.ceil((prices.length * 0.3) / 0.7); // 30 % of the result
        for (let i = 0; i < share; i++) prices.push(pointMass);
      }
      return prices;
    });

  const arbitraryOptions = fc.record({
    strategy: fc.constantFrom('quantile' as const, 'seed' as const),
    maxPrice: fc.integer({ min: 1, max: 300_000 }),
    denseShare: fc.double({ min: 0, max: 1, noNaN: true }),
    denseSteps: fc.integer({ min: 1, max: 60 }),
    concurrency: fc.integer({ min: 1, max: 8 }),
  });

  it('every stone lands in exactly one partition, with exact expectedRecords, whatever the inventory', async () => {
    await fc.assert(
      fc.asyncProperty(arbitraryInventory, arbitraryRules, arbitraryOptions, async (prices, rules, o) => {
        const denseZoneThreshold = Math.max(1, Math.floor(o.denseShare * o.maxPrice));
        const options: ScanOptions = {
          strategy: o.strategy,
          maxPrice: o.maxPrice,
          denseZoneThreshold,
          denseZoneStep: Math.max(1, Math.ceil(denseZoneThreshold / o.denseSteps)),
          partitions: rules,
          concurrency: o.concurrency,
          maxQueries: Math.max(80, 2 * partitionCount(prices.length, rules) + 20),
        };
        const { scan, plan } = await planFor(prices, options);
        assert.equal(scan.total, prices.length);
        if (o.strategy === 'quantile') assert.ok(scan.countQueries <= Math.max(80, 2 * partitionCount(prices.length, rules) + 20));
        assertContract(prices, plan, rules);
        // Stones a cent either side of, and exactly at, every boundary the plan chose.
        const edges = plan.slice(1).flatMap((p) => [p.priceMin * 100 - 1, p.priceMin * 100, p.priceMin * 100 + 1]);
        const rule = workerRule(plan, edges);
        assert.equal(rule.unowned + rule.duplicated, 0);
      }),
      { numRuns: 1500, seed: 438_000 },
    );
  });

  it('a 30 % point mass at one price never produces a partition under the minimum', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 2_000_000 }), fc.integer({ min: 1, max: 1000 }), async (massCents, seed) => {
        const random = seededRandom(seed);
        const prices: number[] = [];
        for (let i = 0; i < 7000; i++) prices.push(Math.floor(Math.exp(random() * Math.log(2_000_000))));
        for (let i = 0; i < 3000; i++) prices.push(massCents);
        const rules: PartitionRules = { maxWorkers: 30, recordsPerWorker: 500, minRecordsPerWorker: 100 };
        const { plan } = await planFor(prices, { strategy: 'quantile', ...seedDefaults, partitions: rules });
        assertContract(prices, plan, rules);
        assert.ok(plan.length >= 2);
      }),
      { numRuns: 200, seed: 30 },
    );
  });
});

describe('realistic inventory (≈438,000 stones)', () => {
  const realistic = generateInventory('realistic', { seed: 1 }).priceCents;

  it('full run: 30 partitions, ≤ 80 count queries, largest ≤ 1.05 × ideal, counts exact', async (t) => {
    // The 5 % this test asks for, as the scan's own target (the default 2 % costs more queries: see the benchmark).
    const { scan, plan } = await planFor(realistic, {
      strategy: 'quantile',
      ...seedDefaults,
      partitions: fullRules,
      balanceTolerance: 0.05,
    });
    assertContract(realistic, plan, fullRules);
    assert.equal(plan.length, 30);
    assert.ok(scan.countQueries <= 80, `${scan.countQueries} count queries`);
    const ratio = Math.max(...plan.map((p) => p.expectedRecords)) / (realistic.length / plan.length);
    t.diagnostic(`quantile: ${scan.countQueries} count queries, max/ideal ${ratio.toFixed(4)}`);
    assert.ok(ratio <= 1.05, `max/ideal ${ratio}`);
  });

  it('incremental-like 3 % window, 10 workers at most', async (t) => {
    const random = seededRandom(3);
    const window = realistic.filter(() => random() < 0.03);
    const rules = { ...fullRules, maxWorkers: 10 };
    const { scan, plan } = await planFor(window, { strategy: 'quantile', ...seedDefaults, partitions: rules });
    assertContract(window, plan, rules);
    assert.equal(plan.length, partitionCount(window.length, rules));
    const ratio = Math.max(...plan.map((p) => p.expectedRecords)) / (window.length / plan.length);
    t.diagnostic(`quantile: ${scan.countQueries} count queries, max/ideal ${ratio.toFixed(4)}`);
    assert.ok(scan.countQueries <= 20 && ratio <= 1.05);
  });

  it('the seed strategy stays a valid (if costly) reference', async (t) => {
    const { scan, plan } = await planFor(realistic, { strategy: 'seed', ...seedDefaults, partitions: fullRules });
    assertContract(realistic, plan, fullRules);
    const ratio = Math.max(...plan.map((p) => p.expectedRecords)) / (realistic.length / plan.length);
    t.diagnostic(`seed: ${scan.countQueries} count queries, max/ideal ${ratio.toFixed(4)}`);
  });
});

describe('scanDensity: warm start, balance target, budget', () => {
  const quantile = (partitions: PartitionRules, extra: Partial<ScanOptions> = {}): ScanOptions => ({
    strategy: 'quantile',
    ...seedDefaults,
    partitions,
    concurrency: 8,
    ...extra,
  });
  const base = generateInventory('realistic', { seed: 21, size: 150_000 }).priceCents;
  /** A night: 3 % repriced by up to ±10 %, 1 % removed, 1 % added (resampled); optionally a 1,500-stone spike. */
  const drifted = (prices: ArrayLike<number>, seed: number, spike?: number): number[] => {
    const random = seededRandom(seed);
    const out: number[] = [];
    for (let i = 0; i < prices.length; i++) {
      const r = random();
      if (r < 0.01) continue;
      out.push(r < 0.04 ? Math.round(prices[i]! * (1 + (random() * 2 - 1) * 0.1)) : prices[i]!);
      if (r > 0.99) out.push(prices[Math.floor(random() * prices.length)]!);
    }
    if (spike !== undefined) for (let i = 0; i < 1500; i++) out.push(spike * 100);
    return out;
  };

  it('a warm start on a drifted inventory is exact, probes the total with the old boundaries, costs less than cold, and less still with last run’s points', async () => {
    const cold = await planFor(base, quantile(fullRules));
    assert.equal(cold.scan.start, 'cold');
    assert.equal(cold.scan.startReason, 'no-history');
    const history = warmStartFrom(cold.scan.total, cold.plan, cold.scan.points);
    assert.equal(history.cuts.length, cold.plan.length - 1);
    assert.equal(history.points, cold.scan.points);
    for (const [i, spike] of [undefined, 700].entries()) {
      const tonight = drifted(base, 5 + i, spike);
      const warm = await planFor(tonight, quantile(fullRules, { warmStart: history }));
      // Without last run's points (a run recorded before they were kept) it still works, at a cost
      // on the spike night: its guesses cannot see the spikes between the old boundaries.
      const blind = await planFor(tonight, quantile(fullRules, { warmStart: warmStartFrom(cold.scan.total, cold.plan) }));
      assertContract(tonight, blind.plan, fullRules);
      assert.equal(blind.scan.stopReason, 'balanced');
      if (spike !== undefined)
        assert.ok(
          warm.scan.countQueries < blind.scan.countQueries,
          `with points ${warm.scan.countQueries}, without ${blind.scan.countQueries}`,
        );
      assertContract(tonight, warm.plan, fullRules);
      assert.equal(warm.scan.start, 'warm');
      assert.equal(warm.scan.startReason, 'history');
      // The first round: the total and every old boundary, nothing else.
      assert.deepEqual(warm.asked[0], {});
      assert.deepEqual(
        warm.asked.slice(1, history.cuts.length + 1).map((b) => b.from),
        history.cuts,
      );
      assert.ok(warm.scan.countQueries < cold.scan.countQueries, `warm ${warm.scan.countQueries} vs cold ${cold.scan.countQueries}`);
      assert.equal(warm.scan.stopReason, 'balanced');
      assert.ok(warm.scan.balance <= 1.02, `max/ideal ${warm.scan.balance}`);
      assert.equal(warm.scan.partitions, warm.plan.length);
    }
  });

  /** Stones per whole dollar: what the workers of the run `prices` was planned for wrote. */
  const byDollar = (prices: ArrayLike<number>): DollarStones[] => {
    const counts = new Map<number, number>();
    for (let i = 0; i < prices.length; i++) counts.set(Math.floor(prices[i]! / 100), (counts.get(Math.floor(prices[i]! / 100)) ?? 0) + 1);
    return [...counts].sort((a, b) => a[0] - b[0]).map(([dollar, stones]) => ({ dollar, stones }));
  };

  it('with last night’s stones per dollar, a spike night takes fewer dependent rounds than with its points, and stays exact', async () => {
    const cold = await planFor(base, quantile(fullRules));
    const stones = byDollar(base);
    assert.equal(
      stones.reduce((sum, d) => sum + d.stones, 0),
      base.length,
    );
    let exact = 0;
    let points = 0;
    for (const [night, spike] of [
      [6, 700],
      [7, 2_300],
      [8, 430],
    ] as const) {
      const tonight = drifted(base, night, spike);
      const withStones = await planFor(
        tonight,
        quantile(fullRules, { warmStart: warmStartFrom(cold.scan.total, cold.plan, cold.scan.points, stones) }),
      );
      const withPoints = await planFor(
        tonight,
        quantile(fullRules, { warmStart: warmStartFrom(cold.scan.total, cold.plan, cold.scan.points) }),
      );
      for (const { scan, plan } of [withStones, withPoints]) {
        assertContract(tonight, plan, fullRules);
        assert.equal(scan.start, 'warm');
        assert.equal(scan.stopReason, 'balanced');
        assert.ok(scan.balance <= 1.02, `max/ideal ${scan.balance}`);
      }
      assert.equal(withStones.scan.prior, 'stones');
      assert.equal(withPoints.scan.prior, 'points');
      // The first round is the same: the total and every old boundary.
      assert.deepEqual(withStones.asked.slice(0, cold.plan.length), withPoints.asked.slice(0, cold.plan.length));
      // A spike a third of a partition over a 2 % target: planned around where the points chase it round by round.
      assert.ok(withStones.scan.rounds <= 4, `spike at $${spike}: ${withStones.scan.rounds} rounds with stones`);
      exact += withStones.scan.rounds;
      points += withPoints.scan.rounds;
    }
    assert.ok(exact < points, `with stones ${exact} rounds over three nights, with points ${points}`);
  });

  /** Spike nights warm from the cold plan of `base` and `stones`: exact, balanced on stones per dollar; their scans. */
  const spikeNights = async (stones: DollarStones[], nights: ReadonlyArray<readonly [number, number]>) => {
    const cold = await planFor(base, quantile(fullRules));
    const scans: Array<{ spike: number; scan: DensityScan }> = [];
    for (const [night, spike] of nights) {
      const tonight = drifted(base, night, spike);
      const { scan, plan } = await planFor(
        tonight,
        quantile(fullRules, { warmStart: warmStartFrom(cold.scan.total, cold.plan, cold.scan.points, stones) }),
      );
      assertContract(tonight, plan, fullRules);
      assert.equal(scan.prior, 'stones', `spike at $${spike}`);
      assert.equal(scan.stopReason, 'balanced', `spike at $${spike}`);
      assert.ok(scan.balance <= 1.02, `spike at $${spike}: max/ideal ${scan.balance}`);
      scans.push({ spike, scan });
    }
    return scans;
  };

  it('with stones per dollar, a new spike just above or below an old boundary is planned around in at most four rounds', async () => {
    const cold = await planFor(base, quantile(fullRules));
    const cuts = warmStartFrom(cold.scan.total, cold.plan).cuts;
    const nights = [
      [12, cuts[12]! + 2],
      [13, cuts[20]! - 3],
      [14, cuts[25]! + 40],
      [15, cuts[5]! + 1],
    ] as const;
    for (const { spike, scan } of await spikeNights(byDollar(base), nights)) {
      assert.ok(scan.rounds <= 4, `spike at $${spike}: ${scan.rounds} rounds`);
    }
  });

  it('with stones per dollar, a new spike in the first or the last partition, or past the axis, stays exact and balanced', async () => {
    // Last night's shape with a few absurd prices the raw table held (counted at the axis's end, even one too large for a number).
    const stones = [...byDollar(base), { dollar: PRICE_AXIS_END, stones: 2 }, { dollar: Infinity, stones: 1 }];
    await spikeNights(stones, [
      [10, 120],
      [11, 90_000],
    ]);
  });

  it('with stones per dollar, two or three new spikes, a spike that moved and one that is gone: exact, at the target or its floor, within the budget, most in a few rounds', async () => {
    const cold = await planFor(base, quantile(fullRules));
    const cuts = warmStartFrom(cold.scan.total, cold.plan).cuts;
    const night = (seed: number, spikes: number[], from: ArrayLike<number> = base): number[] => {
      const out = drifted(from, seed);
      for (const dollar of spikes) for (let i = 0; i < 1500; i++) out.push(dollar * 100);
      return out;
    };
    const lastNightSpiked = night(70, [430]);
    const spikedCold = await planFor(lastNightSpiked, quantile(fullRules));
    const cases: Array<[string, number[], ArrayLike<number>, Awaited<ReturnType<typeof planFor>>]> = [
      ['two spikes', night(60, [cuts[8]! + 2, cuts[22]! - 2]), base, cold],
      ['three spikes', night(61, [cuts[3]! + 2, cuts[14]! + 1, cuts[24]! - 2]), base, cold],
      // Last night's spike at $430: tonight it is at $450, or gone (a deficit of 1,500 stones).
      ['a spike moved from $430 to $450', night(71, [450]), lastNightSpiked, spikedCold],
      ['a spike gone', night(72, []), lastNightSpiked, spikedCold],
    ];
    for (const [name, tonight, lastNight, last] of cases) {
      const { scan, plan } = await planFor(
        tonight,
        quantile(fullRules, { warmStart: warmStartFrom(last.scan.total, last.plan, last.scan.points, byDollar(lastNight)) }),
      );
      assertContract(tonight, plan, fullRules);
      assert.equal(scan.prior, 'stones', name);
      assert.ok(scan.stopReason === 'balanced' || scan.stopReason === 'unreachable', `${name}: ${scan.stopReason}`);
      assert.ok(scan.balance <= Math.max(1.02, scan.floor + 0.02) + 1e-9, `${name}: max/ideal ${scan.balance}, floor ${scan.floor}`);
      assert.ok(scan.countQueries < defaultMaxQueries(30), `${name}: ${scan.countQueries} count queries`);
      // Planned around (three excesses are left to the chain, which takes 10 rounds there): the
      // chain alone takes 9 rounds for the two spikes and 11 for the one gone.
      if (name !== 'three spikes') assert.ok(scan.rounds <= 5, `${name}: ${scan.rounds} rounds`);
    }
  });

  it('ignores stones per dollar that are malformed or far from tonight’s total, and says which shape it used', async () => {
    const cold = await planFor(base, quantile(fullRules));
    const tonight = drifted(base, 9, 1_200);
    const stones = byDollar(base);
    const cases: Array<[string, DollarStones[], 'points' | 'stones']> = [
      ['unsorted', [stones[1]!, stones[0]!, ...stones.slice(2)], 'points'],
      ['a fractional count', [{ dollar: stones[0]!.dollar, stones: 1.5 }, ...stones.slice(1)], 'points'],
      ['a repeated dollar', [stones[0]!, ...stones], 'points'],
      ['a dollar of no stones', [{ dollar: stones[0]!.dollar, stones: 0 }, ...stones.slice(1)], 'points'],
      ['a negative dollar', [{ dollar: -1, stones: 1 }, ...stones], 'points'],
      ['a fractional dollar', [...stones.slice(0, -1), { dollar: stones.at(-1)!.dollar + 0.5, stones: 1 }], 'points'],
      ['half the stones (a raw table being refilled)', stones.filter((_, i) => i % 2 === 0), 'points'],
      ['well formed', stones, 'stones'],
    ];
    for (const [what, given, used] of cases) {
      const { scan, plan } = await planFor(
        tonight,
        quantile(fullRules, { warmStart: warmStartFrom(cold.scan.total, cold.plan, cold.scan.points, given) }),
      );
      assertContract(tonight, plan, fullRules);
      assert.equal(scan.prior, used, what);
      assert.equal(scan.stopReason, 'balanced', what);
    }
    // A misleading shape (every price 30 % up: not last night's) costs queries, never exactness or balance.
    const misleading = byDollar(base.map((cents) => Math.round(cents * 1.3)));
    const misled = await planFor(
      tonight,
      quantile(fullRules, { warmStart: warmStartFrom(cold.scan.total, cold.plan, undefined, misleading) }),
    );
    assertContract(tonight, misled.plan, fullRules);
    assert.equal(misled.scan.prior, 'stones');
    assert.equal(misled.scan.stopReason, 'balanced');
    assert.ok(misled.scan.balance <= 1.02, `max/ideal ${misled.scan.balance}`);
    assert.ok(misled.scan.countQueries < defaultMaxQueries(30), `${misled.scan.countQueries} queries`);
    const blind = await planFor(tonight, quantile(fullRules, { warmStart: warmStartFrom(cold.scan.total, cold.plan) }));
    assert.equal(blind.scan.prior, 'none');
    assert.equal(cold.scan.prior, 'none');
  });

  it('falls back to cold, and says why, when the history does not fit', async () => {
    const cold = await planFor(base, quantile(fullRules));
    const history = warmStartFrom(cold.scan.total, cold.plan);
    const cases: Array<{ prices: ArrayLike<number>; rules: PartitionRules; warm: WarmStart; reason: string }> = [
      // Tonight's total asks for another partition count.
      { prices: base.slice(0, 60_000), rules: fullRules, warm: history, reason: 'partition-count-changed' },
      // Today's rules make last night's total ask for another count.
      { prices: base, rules: { ...fullRules, maxWorkers: 20 }, warm: history, reason: 'partition-count-changed' },
      // Same count (30 is the cap), but the inventory doubled.
      { prices: [...base, ...base.map((p) => p + 1)], rules: fullRules, warm: history, reason: 'total-moved' },
      // Same total, every stone ten times dearer: last night's partitions are nothing like tonight's.
      { prices: Array.from(base, (p) => p * 10), rules: fullRules, warm: history, reason: 'shape-moved' },
      { prices: base, rules: fullRules, warm: { total: history.total, cuts: [500, 400] }, reason: 'invalid-history' },
      { prices: base, rules: fullRules, warm: { total: -1, cuts: history.cuts }, reason: 'invalid-history' },
    ];
    for (const c of cases) {
      const { scan, plan } = await planFor(c.prices, quantile(c.rules, { warmStart: c.warm }));
      assert.equal(scan.start, 'cold', c.reason);
      assert.equal(scan.startReason, c.reason);
      assert.ok(c.reason === 'invalid-history' || (scan.startDetail ?? '').length > 0);
      assertContract(c.prices, plan, c.rules);
      assert.ok(scan.balance <= 1.02 || scan.stopReason !== 'balanced', `${c.reason}: ${scan.balance} ${scan.stopReason}`);
    }
  });

  it('holds the tolerance it is given, and reports the balance reached', async () => {
    for (const balanceTolerance of [0.01, 0.02, 0.05]) {
      const { scan, plan } = await planFor(base, quantile(fullRules, { balanceTolerance }));
      assertContract(base, plan, fullRules);
      const ratio = Math.max(...plan.map((p) => p.expectedRecords)) / (base.length / plan.length);
      assert.ok(Math.abs(ratio - scan.balance) < 1e-12);
      assert.ok(scan.floor <= scan.balance + 1e-12);
      if (scan.stopReason === 'balanced') assert.ok(ratio <= 1 + balanceTolerance, `${balanceTolerance}: ${ratio}`);
      else
        assert.ok(scan.stopReason === 'budget' || ratio <= scan.floor + balanceTolerance + 1e-9, `${balanceTolerance}: ${scan.stopReason}`);
    }
  });

  it('respects the query budget and says so', async () => {
    for (const maxQueries of [1, 8, 20, 40]) {
      const { scan, plan } = await planFor(base, quantile(fullRules, { maxQueries, balanceTolerance: 0.001 }));
      assert.ok(scan.countQueries <= Math.max(maxQueries, 1), `${scan.countQueries} > ${maxQueries}`);
      assert.equal(scan.stopReason, 'budget');
      assertContract(base, plan, fullRules);
    }
    const { scan } = await planFor(base, quantile(fullRules));
    assert.ok(scan.countQueries <= defaultMaxQueries(30));
  });

  it('adversarial inventories: exact tiling, exact estimates, nothing under the minimum, no runaway', async () => {
    const rules: PartitionRules = { maxWorkers: 30, recordsPerWorker: 2000, minRecordsPerWorker: 400 };
    for (const shape of INVENTORY_SHAPES) {
      const prices = generateInventory(shape, { seed: 4, size: shape === 'realistic' ? 60_000 : undefined }).priceCents;
      for (const start of ['cold', 'warm', 'warm with stones'] as const) {
        const warm = start !== 'cold';
        const first = await planFor(prices, quantile(rules));
        const stones = start === 'warm with stones' ? byDollar(prices) : undefined;
        const options = quantile(rules, warm ? { warmStart: warmStartFrom(first.scan.total, first.plan, undefined, stones) } : {});
        const { scan, plan } = await planFor(prices, options);
        assertContract(prices, plan, rules);
        const n = partitionCount(prices.length, rules);
        assert.ok(scan.countQueries <= defaultMaxQueries(n), `${shape}: ${scan.countQueries} queries`);
        // Known limit: on 'dollar-spikes' (half the stones in two-dollar spikes as large as half a
        // partition) the relaxed floor stays far below what whole-dollar cuts can reach, so the
        // scan spends its budget there; everywhere else it stops on its own.
        if (shape !== 'dollar-spikes') assert.notEqual(scan.stopReason, 'budget', `${shape} (${start}): ran out of budget`);
        if (scan.stopReason === 'unreachable') assert.ok(scan.floor > 1.02 || scan.partitions < n, `${shape}: floor ${scan.floor}`);
        else if (scan.stopReason === 'balanced') assert.ok(scan.balance <= 1.02, `${shape}: ${scan.balance}`);
        // The same plan again from its own boundaries: nothing to refine.
        if (warm && plan.length > 1 && scan.stopReason === 'balanced')
          assert.ok(scan.countQueries <= plan.length, `${shape}: ${scan.countQueries}`);
      }
    }
  });

  it('a point mass larger than a partition may hold: unreachable, stops near the floor instead of spending its budget', async () => {
    const prices = generateInventory('point-mass', { seed: 2 }).priceCents; // 60 % at $1,000.00
    const { scan, plan } = await planFor(prices, quantile(fullRules));
    assertContract(prices, plan, fullRules);
    assert.equal(scan.stopReason, 'unreachable');
    assert.ok(scan.floor > 1.02);
    assert.ok(scan.balance <= scan.floor + 0.02 + 1e-9, `${scan.balance} vs floor ${scan.floor}`);
    assert.ok(scan.countQueries < 60, `${scan.countQueries} queries`);
  });
});
