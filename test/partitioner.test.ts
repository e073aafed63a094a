import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PRICE_AXIS_END } from '../src/domain.js';
import { firstAtLeast, lastAtMost, normalisePoints, type CumulativePoint, type Density } from '../src/density.js';
import { partitionCount, planPartitions, type PartitionRules } from '../src/partitioner.js';
import { assertTiles } from './helpers/inventory-counter.js';

const rules: PartitionRules = { maxWorkers: 30, recordsPerWorker: 5000, minRecordsPerWorker: 1000 };

function scanOf(total: number, points: CumulativePoint[]): Density {
  return { total, points: normalisePoints(points, total) };
}

/** Every way to cut the points into n partitions with loads ≥ min: the least achievable maximum. */
function bruteForceBest(below: number[], n: number, min: number): number {
  let best = Infinity;
  const m = below.length;
  const walk = (at: number, parts: number, worst: number): void => {
    if (parts === n) {
      if (at === m - 1) best = Math.min(best, worst);
      return;
    }
    for (let j = at + 1; j < m; j++) {
      const load = below[j]! - below[at]!;
      if (load >= min) walk(j, parts + 1, Math.max(worst, load));
    }
  };
  walk(0, 0, 0);
  return best;
}

describe('partitionCount', () => {
  it('follows the worker-count rules', () => {
    assert.equal(partitionCount(0, rules), 0);
    assert.equal(partitionCount(1, rules), 1);
    assert.equal(partitionCount(999, rules), 1);
    assert.equal(partitionCount(1000, rules), 1);
    assert.equal(partitionCount(5001, rules), 2);
    assert.equal(partitionCount(1999, { ...rules, recordsPerWorker: 1000 }), 1); // two would put one under 1,000
    assert.equal(partitionCount(437_849, rules), 30);
    assert.equal(partitionCount(13_000, { ...rules, maxWorkers: 10 }), 3);
    assert.equal(partitionCount(1_000_000, { ...rules, maxWorkers: 10 }), 10);
  });
});

describe('planPartitions', () => {
  it('an empty window makes no work items', () => {
    assert.deepEqual(planPartitions(scanOf(0, [{ price: 0, below: 0 }]), rules), []);
  });

  it('a window under the minimum makes one partition over the whole axis', () => {
    const plan = planPartitions(scanOf(7, [{ price: 500, below: 3 }]), rules);
    assert.deepEqual(plan, [{ partitionId: 'partition-1', priceMin: 0, priceMax: PRICE_AXIS_END, expectedRecords: 7 }]);
  });

  it('cuts only at probed prices, with exact counts, and the last partition takes the tail', () => {
    const points = [100, 200, 300, 400, 500].map((price, i) => ({ price, below: (i + 1) * 2000 }));
    const plan = planPartitions(scanOf(12_000, points), { ...rules, recordsPerWorker: 2000 });
    assertTiles(plan);
    assert.equal(plan.length, 6);
    assert.deepEqual(
      plan.map((p) => p.expectedRecords),
      [2000, 2000, 2000, 2000, 2000, 2000],
    );
    assert.equal(plan.at(-1)!.priceMin, 500);
  });

  it('a 30 % point mass makes no partition under the minimum', () => {
    // 100,000 stones; 30,000 of them in the dollar [1000, 1001).
    const points: CumulativePoint[] = [];
    for (let price = 10; price <= 3000; price += 10) {
      const spread = Math.round((70_000 * price) / 3000);
      points.push({ price, below: spread + (price > 1000 ? 30_000 : 0) });
    }
    points.push({ price: 1001, below: Math.round((70_000 * 1001) / 3000) + 30_000 });
    const plan = planPartitions(scanOf(100_000, points), rules);
    assertTiles(plan);
    assert.equal(plan.length, 20);
    assert.ok(plan.every((p) => p.expectedRecords >= rules.minRecordsPerWorker));
    assert.equal(
      plan.reduce((s, p) => s + p.expectedRecords, 0),
      100_000,
    );
    const mass = plan.find((p) => p.priceMin <= 1000 && p.priceMax >= 1001)!;
    assert.ok(mass.expectedRecords >= 30_000);
    // The rest stays even: the other partitions share the remaining stones.
    const others = plan.filter((p) => p !== mass).map((p) => p.expectedRecords);
    assert.ok(Math.max(...others) <= 1.2 * ((100_000 - mass.expectedRecords) / others.length), `others ${others.join(', ')}`);
  });

  it('clamps counts that drifted while the scan ran', () => {
    const plan = planPartitions(
      scanOf(10_000, [
        { price: 100, below: 4000 },
        { price: 200, below: 3900 }, // the inventory moved between two queries
        { price: 300, below: 10_050 },
      ]),
      { ...rules, recordsPerWorker: 3000 },
    );
    assertTiles(plan);
    assert.equal(
      plan.reduce((s, p) => s + p.expectedRecords, 0),
      10_000,
    );
  });

  it('property: tiles the axis, obeys the worker-count rules and finds the least maximum load', () => {
    const arbitraryCase = fc.record({
      steps: fc.array(
        fc.record({
          gap: fc.integer({ min: 1, max: 1000 }),
          load: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 400 })),
        }),
        { maxLength: 9 },
      ),
      tail: fc.integer({ min: 0, max: 300 }),
      maxWorkers: fc.integer({ min: 1, max: 6 }),
      recordsPerWorker: fc.integer({ min: 1, max: 300 }),
      minShare: fc.double({ min: 0, max: 1, noNaN: true }),
    });
    fc.assert(
      fc.property(arbitraryCase, ({ steps, tail, maxWorkers, recordsPerWorker, minShare }) => {
        const r: PartitionRules = {
          maxWorkers,
          recordsPerWorker,
          minRecordsPerWorker: Math.max(1, Math.floor(minShare * recordsPerWorker)),
        };
        const points: CumulativePoint[] = [];
        let price = 0;
        let below = 0;
        for (const s of steps) {
          price += s.gap;
          below += s.load;
          points.push({ price, below });
        }
        const total = below + tail;
        const plan = planPartitions(scanOf(total, points), r);
        assertTiles(plan);
        const wanted = partitionCount(total, r);
        assert.ok(plan.length <= wanted && plan.length <= maxWorkers);
        assert.equal(plan.length === 0, total === 0);
        assert.equal(
          plan.reduce((s, p) => s + p.expectedRecords, 0),
          total,
        );
        if (total >= r.minRecordsPerWorker) assert.ok(plan.every((p) => p.expectedRecords >= r.minRecordsPerWorker));
        for (const p of plan.slice(1))
          assert.ok(
            points.some((q) => q.price === p.priceMin),
            'boundaries are probed prices',
          );
        if (plan.length > 1) {
          const all = [0, ...points.map((q) => q.below), total];
          // No larger count is feasible, and for this count the maximum is the least possible.
          for (let n = plan.length + 1; n <= wanted; n++) assert.equal(bruteForceBest(all, n, r.minRecordsPerWorker), Infinity);
          assert.equal(Math.max(...plan.map((p) => p.expectedRecords)), bruteForceBest(all, plan.length, r.minRecordsPerWorker));
        }
      }),
      { numRuns: 2000, seed: 20260212 },
    );
  });
});

describe('binary searches over counts', () => {
  it('lastAtMost takes a limit between whole counts as it is (the cold sweep once fixed a boundary past its window by less than a stone)', () => {
    const counts = [10, 11, 12, 12, 20];
    assert.equal(lastAtMost(counts, 10.4), 0);
    assert.equal(lastAtMost(counts, 11), 1);
    assert.equal(lastAtMost(counts, 12), 3);
    assert.equal(lastAtMost(counts, 9.99), -1);
    assert.equal(lastAtMost(counts, 1e9), 4);
    assert.equal(lastAtMost(counts, 12, 2), 2, 'only up to index 2');
    assert.equal(firstAtLeast(counts, 11.5), 2);
    assert.equal(firstAtLeast(counts, 21), counts.length);
    assert.equal(firstAtLeast(counts, 12, 2), 2, 'none below index 2: upTo');
  });

  it('agree with a linear scan on random nondecreasing counts and fractional limits', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 50 }), { maxLength: 40 }),
        fc.double({ min: -1, max: 60, noNaN: true }),
        (raw, limit) => {
          const counts = [...raw].sort((a, b) => a - b);
          let last = -1;
          counts.forEach((c, i) => {
            if (c <= limit) last = i;
          });
          const first = counts.findIndex((c) => c >= limit);
          assert.equal(lastAtMost(counts, limit), last);
          assert.equal(firstAtLeast(counts, limit), first === -1 ? counts.length : first);
        },
      ),
    );
  });
});
