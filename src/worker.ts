// The worker (CONTRACT §9): consumes work items, fetches each partition (fetch-partition.ts),
// writes its stones, and consolidates the run whose last partition it finished.
//
// One process works up to `concurrency` items at once; any number of processes may share the
// queue (Service Bus peek-lock, or the local queue's leases). Per delivery: validate the body
// (a malformed one is dead-lettered with the reason); a run an operator abandoned, or a
// partition already done, is settled without fetching (one abandoned mid-way stops at its next
// page commit, which is fenced by the run's status too, and is settled); otherwise claim the partition (the
// claim fences out a worker whose lock was lost), resume from its committed progress, page,
// verify, finish and consolidate in one transaction, write the watermark, and only then
// settle. A transient failure abandons the message for redelivery; on its last allowed
// delivery (or for a failure no retry can fix) the partition is marked failed and the message
// dead-lettered. Locks are renewed for as long as a partition takes; a lost lock stops the
// work at once, and the redelivery resumes after the last committed page.
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import type { WorkerConfig } from './config.js';
import { advanceWatermark, consolidate, finishPartition } from './consolidate.js';
import type { Database } from './db/database.js';
import {
  claimPartition,
  ClaimLostError,
  commitPage,
  failPartition,
  retryGeneration,
  keptStoneIds,
  markPartitionUnverified,
  releasePartition,
  RunAbandonedError,
  UnverifiedPartitionError,
  type Claim,
} from './db/partitions.js';
import { PRICE_FIELDS, type WorkItemMessage } from './domain.js';
import { isTransient, toError } from './errors.js';
import { fetchPartition, type FetchOutcome, type PageCommit, type PartitionSource } from './fetch-partition.js';
import { scrub, type Logger } from './log.js';
import type { NivodaClient } from './nivoda/client.js';
import { LockLostError, type ReceivedWorkItem, type WorkItemQueue, type WorkItemReceiver } from './queue/queue.js';
import { withRetry } from './retry.js';
import type { WatermarkStore } from './watermark.js';

const isoDate = z.iso.datetime({ offset: true });

/** CONTRACT §3, checked: a worker must not page a range it cannot trust. */
const workItemSchema = z
  .object({
    runId: z.uuid(),
    partitionId: z.string().regex(/^partition-\d+$/),
    priceMin: z.number().int().min(0),
    priceMax: z.number().int().max(2147483647),
    expectedRecords: z.number().int().min(0),
    isIncremental: z.boolean(),
    watermarkBefore: isoDate.optional(),
    priceField: z.enum(PRICE_FIELDS),
    updatedFrom: isoDate.optional(),
    updatedTo: isoDate,
    partitionCount: z.number().int().min(1),
    query: z.record(z.string(), z.unknown()),
  })
  .refine((item) => item.priceMax > item.priceMin, { error: 'priceMax must be greater than priceMin' })
  .refine((item) => !item.isIncremental || item.updatedFrom !== undefined, { error: 'an incremental work item needs updatedFrom' });

export interface WorkerDeps {
  db: Database;
  queue: WorkItemQueue;
  watermarks: WatermarkStore;
  nivoda: NivodaClient;
  logger: Logger;
  config: WorkerConfig;
}

export interface WorkerOptions {
  concurrency: number;
  /** Exit (0) once the queue has been empty this long with nothing in flight; absent: run until stopped. */
  idleExitMs?: number;
  /** SIGTERM: stop after the page in flight, abandon what is in flight. */
  signal: AbortSignal;
  /** How long one receive waits for a message (default 1 s). */
  receiveWaitMs?: number;
  /** How often the dead-letter queue is drained into failed partitions (default 30 s; also at start and at the end). */
  deadLetterEveryMs?: number;
}

export type DeliveryOutcome =
  | 'done'
  | 'settled-without-fetching'
  /** An operator abandoned the run while this delivery worked it: stopped, settled. */
  | 'run-abandoned'
  | 'abandoned'
  | 'dead-lettered'
  | 'lock-lost'
  | 'stopped';

export interface WorkerSummary {
  deliveries: number;
  outcomes: Partial<Record<DeliveryOutcome, number>>;
  completedRuns: string[];
  deadLettersDrained: number;
  stopped: boolean;
}

/** Consumes work items until stopped or idle; see the top of this file. */
export async function runWorker(deps: WorkerDeps, options: WorkerOptions): Promise<WorkerSummary> {
  const { logger, config } = deps;
  const receiver = deps.queue.openReceiver({ maxDeliveries: config.maxDeliveries, lockDurationMs: config.lockSeconds * 1000 });
  const summary: WorkerSummary = { deliveries: 0, outcomes: {}, completedRuns: [], deadLettersDrained: 0, stopped: false };
  const stop = options.signal;
  const waitMs = options.receiveWaitMs ?? 1000;
  const deadLetterEveryMs = options.deadLetterEveryMs ?? 30_000;
  const inFlight = new Set<Promise<void>>();
  const stopped = new Promise<void>((resolve) => stop.addEventListener('abort', () => resolve(), { once: true }));

  logger.info({ concurrency: options.concurrency, idleExitMs: options.idleExitMs ?? null, queue: deps.queue.location }, 'worker started');
  try {
    // A crash between a run's completion and its watermark write, or a run without work items: repaired here.
    await sweep(deps, receiver, summary);
    let lastDrain = Date.now();
    let idleSince = Date.now();
    while (!stop.aborted) {
      if (Date.now() - lastDrain >= deadLetterEveryMs) {
        await drainDeadLetters(deps, receiver, summary);
        lastDrain = Date.now();
      }
      const free = options.concurrency - inFlight.size;
      if (free <= 0) {
        await Promise.race([...inFlight, stopped]);
        continue;
      }
      const items = await receiveSafely(receiver, free, waitMs, stop, logger);
      if (stop.aborted) {
        await Promise.all(items.map((item) => item.abandon().catch(() => {})));
        break;
      }
      if (inFlight.size > 0 || items.length > 0) idleSince = Date.now();
      if (items.length === 0) {
        if (options.idleExitMs !== undefined && inFlight.size === 0 && Date.now() - idleSince >= options.idleExitMs) break;
        continue;
      }
      for (const item of items) {
        summary.deliveries++;
        const task: Promise<void> = handleDelivery(deps, item, stop)
          .then(
            (outcome) => {
              summary.outcomes[outcome.kind] = (summary.outcomes[outcome.kind] ?? 0) + 1;
              if (outcome.runCompleted) summary.completedRuns.push(outcome.runCompleted);
            },
            (err: unknown) => logger.error({ err: toError(err), messageId: item.messageId }, 'handling a work item failed unexpectedly'),
          )
          .finally(() => {
            inFlight.delete(task);
            idleSince = Date.now();
          });
        inFlight.add(task);
      }
    }
    await Promise.allSettled([...inFlight]);
    summary.stopped = stop.aborted;
    if (!stop.aborted) await sweep(deps, receiver, summary);
  } finally {
    await receiver.close().catch((err: unknown) => logger.warn({ err: toError(err) }, 'closing the receiver failed'));
  }
  logger.info({ ...summary }, summary.stopped ? 'worker stopped' : 'worker finished: the queue stayed empty');
  return summary;
}

/** Dead letters into failed partitions, then a consolidation pass (idempotent). */
async function sweep(deps: WorkerDeps, receiver: WorkItemReceiver, summary: WorkerSummary): Promise<void> {
  await drainDeadLetters(deps, receiver, summary);
  try {
    const report = await consolidate(deps.db, deps.watermarks, deps.logger);
    summary.completedRuns.push(...report.completed);
  } catch (err) {
    deps.logger.warn({ err: toError(err) }, 'consolidation pass failed; `consolidate` repairs it');
  }
}

async function receiveSafely(
  receiver: WorkItemReceiver,
  max: number,
  waitMs: number,
  stop: AbortSignal,
  logger: Logger,
): Promise<ReceivedWorkItem[]> {
  try {
    return await withRetry(() => receiver.receive(max, waitMs), {
      attempts: Number.MAX_SAFE_INTEGER,
      baseDelayMs: 500,
      maxDelayMs: 15_000,
      signal: stop,
      onRetry: ({ attempt, delayMs, error }) =>
        logger.warn(
          { attempt, delayMs: Math.round(delayMs), error: scrub(toError(error).message) },
          'receiving work items failed, retrying',
        ),
    });
  } catch (err) {
    if (stop.aborted) return [];
    throw err;
  }
}

/** Every dead-lettered work item marks its partition failed with the dead-letter reason (unless it is done). */
async function drainDeadLetters(deps: WorkerDeps, receiver: WorkItemReceiver, summary: WorkerSummary): Promise<void> {
  const { logger } = deps;
  for (;;) {
    let letters: ReceivedWorkItem[];
    try {
      letters = await receiver.receiveDeadLetters(20, 200);
    } catch (err) {
      logger.warn({ err: toError(err) }, 'reading the dead-letter queue failed; trying again later');
      return;
    }
    if (letters.length === 0) return;
    for (const letter of letters) {
      const parsed = workItemSchema.safeParse(letter.body);
      const cause = `dead-lettered (${letter.deadLetterReason ?? 'no reason'}): ${letter.deadLetterDescription ?? 'no description'}`;
      try {
        if (parsed.success) {
          const changed = await failPartition(deps.db, parsed.data.runId, parsed.data.partitionId, cause, {
            generation: retryGeneration(letter.messageId),
          });
          if (changed)
            logger.warn(
              { runId: parsed.data.runId, partitionId: parsed.data.partitionId, cause },
              'partition failed: its work item was dead-lettered',
            );
        } else {
          logger.error(
            { messageId: letter.messageId, cause },
            'a dead-lettered message is not a work item; removed from the dead-letter queue',
          );
        }
        await letter.complete();
        summary.deadLettersDrained++;
      } catch (err) {
        logger.warn({ err: toError(err), messageId: letter.messageId }, 'could not record a dead letter; it stays for the next drain');
        await letter.abandon().catch(() => {});
      }
    }
  }
}

interface HandledDelivery {
  kind: DeliveryOutcome;
  /** The run this delivery completed. */
  runCompleted?: string;
}

/** One delivery, start to settlement; never throws for the failures it knows. */
export async function handleDelivery(deps: WorkerDeps, item: ReceivedWorkItem, stop: AbortSignal): Promise<HandledDelivery> {
  const base = deps.logger.child({ messageId: item.messageId, delivery: item.deliveryCount });
  const parsed = workItemSchema.safeParse(item.body);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ');
    base.error({ problems }, 'malformed work item; dead-lettered');
    await settle(base, 'dead-lettering', () => item.deadLetter('MalformedWorkItem', `not a CONTRACT §3 work item: ${problems}`));
    return { kind: 'dead-lettered' };
  }
  const work: WorkItemMessage = parsed.data;
  const logger = base.child({ runId: work.runId, partitionId: work.partitionId });
  let claim: Claim | undefined;
  try {
    const claimed = await claimPartition(deps.db, work.runId, work.partitionId);
    if (claimed.kind === 'done' || claimed.kind === 'abandoned') {
      logger.info(
        { reason: claimed.kind === 'done' ? 'partition already done' : 'run abandoned by an operator' },
        'settled without fetching',
      );
      await settle(logger, 'completing', () => item.complete());
      return { kind: 'settled-without-fetching' };
    }
    if (claimed.kind === 'unknown') {
      logger.error({ why: claimed.why }, 'work item of an unknown run or partition; dead-lettered');
      await settle(logger, 'dead-lettering', () => item.deadLetter('UnknownPartition', claimed.why));
      return { kind: 'dead-lettered' };
    }
    claim = claimed.claim;
    const result = await withLock(item, logger, (lockLost) => workPartition(deps, work, claim!, logger, stop, lockLost));
    let runCompleted: string | undefined;
    if (result.runCompleted) {
      runCompleted = work.runId;
      logger.info('run completed: every partition is done');
      await advanceWatermark(deps.db, deps.watermarks, logger).catch((err: unknown) =>
        logger.warn({ err: toError(err) }, 'writing the watermark failed; `consolidate` (or the next worker) repairs it'),
      );
    }
    await settle(logger, 'completing', () => item.complete());
    return { kind: 'done', runCompleted };
  } catch (thrown) {
    return onFailure(deps, item, work, claim, logger, stop, thrown);
  }
}

async function onFailure(
  deps: WorkerDeps,
  item: ReceivedWorkItem,
  work: WorkItemMessage,
  claim: Claim | undefined,
  logger: Logger,
  stop: AbortSignal,
  thrown: unknown,
): Promise<HandledDelivery> {
  const error = toError(thrown);
  const message = scrub(error.message);
  if (error instanceof LockLostError || error instanceof ClaimLostError) {
    // Every page it produced is committed; another delivery has the partition (or will).
    logger.info({ reason: message }, 'lost the work item to another delivery; stopping without settling');
    if (error instanceof ClaimLostError) await item.complete().catch(() => {});
    return { kind: 'lock-lost' };
  }
  if (error instanceof RunAbandonedError) {
    // Nothing more was written (every write is fenced by the run's status): settled, as a
    // work item of an abandoned run is. The partition is left pending with the reason.
    logger.info({ reason: message }, 'run abandoned by an operator while its partition was worked; stopped and settled');
    if (claim) await releasePartition(deps.db, claim, message).catch(() => {});
    await settle(logger, 'completing', () => item.complete());
    return { kind: 'run-abandoned' };
  }
  if (error instanceof UnverifiedPartitionError) {
    // Already failed with its cause and figures (and logged); the message goes with it.
    await settle(logger, 'dead-lettering', () => item.deadLetter('PartitionUnverified', message));
    return { kind: 'dead-lettered' };
  }
  if (stop.aborted) {
    if (claim) await releasePartition(deps.db, claim, `stopped: ${message}`).catch(() => {});
    await settle(logger, 'abandoning', () => item.abandon());
    logger.info('stopped; the work item goes back to the queue and resumes after the last committed page');
    return { kind: 'stopped' };
  }
  const last = item.deliveryCount >= deps.config.maxDeliveries;
  if (isTransient(error) && !last) {
    logger.warn(
      { error: message, kind: error.name, maxDeliveries: deps.config.maxDeliveries },
      'transient failure; abandoned for redelivery',
    );
    if (claim) await releasePartition(deps.db, claim, message).catch(() => {});
    await settle(logger, 'abandoning', () => item.abandon());
    return { kind: 'abandoned' };
  }
  const reason = last && isTransient(error) ? 'MaxDeliveriesReached' : 'PartitionFailed';
  const cause = `${reason} at delivery ${item.deliveryCount}: ${message}`;
  logger.error(
    { error: message, kind: error.name, reason },
    'partition failed; work item dead-lettered (`worker retry <runId>` re-queues it)',
  );
  await failPartition(deps.db, work.runId, work.partitionId, cause, { generation: retryGeneration(item.messageId) }).catch((err: unknown) =>
    logger.error({ err: toError(err) }, 'could not mark the partition failed; the dead-letter drain does'),
  );
  await settle(logger, 'dead-lettering', () => item.deadLetter(reason, cause));
  return { kind: 'dead-lettered' };
}

/** The fetch, committed page by page, then finish + consolidation in one transaction. */
async function workPartition(
  deps: WorkerDeps,
  work: WorkItemMessage,
  claim: Claim,
  logger: Logger,
  stop: AbortSignal,
  lockLost: AbortSignal,
): Promise<{ runCompleted: boolean; outcome: FetchOutcome }> {
  const { db, nivoda } = deps;
  const kept = await keptStoneIds(db, work.runId, work.partitionId);
  logger.info(
    { pass: claim.progress.pass, offset: claim.progress.nextOffset, kept: kept.length, deliveries: claim.deliveries },
    claim.progress.nextOffset > 0 || claim.progress.pass > 1 ? 'resuming partition' : 'fetching partition',
  );
  const source: PartitionSource = {
    search: async (query, page) => (await nivoda.search(query, page, lockLost)).items,
    count: (query) => nivoda.count(query, lockLost),
  };
  const committed = { search: 0, count: 0 };
  const delta = (calls: { search: number; count: number }) => {
    const d = { search: calls.search - committed.search, count: calls.count - committed.count };
    committed.search = calls.search;
    committed.count = calls.count;
    return d;
  };
  let written = 0;
  const outcome = await fetchPartition(
    work,
    source,
    async (page: PageCommit) => {
      const calls = delta(page.calls);
      try {
        written += await commitPage(db, claim, { items: page.items, progress: page.progress, kept: page.kept, calls });
      } catch (err) {
        committed.search -= calls.search;
        committed.count -= calls.count;
        throw err;
      }
    },
    {
      kept,
      progress: claim.progress,
      maxPasses: deps.config.maxPasses,
      signal: AbortSignal.any([stop, lockLost]),
    },
  );
  const finish = { kept: outcome.kept, count: outcome.count, discrepancy: outcome.discrepancy, calls: delta(outcome.calls) };
  if (!outcome.verified) {
    // A stone may be lost (a skipped stone can even show as a discrepancy ≤ 0): the run must
    // not complete past it. Failed, so `worker retry` pages it again.
    const cause =
      `not verified after ${outcome.passes} pass(es): kept ${outcome.lastPassUnique}, exact count ${outcome.count}` +
      (outcome.cutShortPasses > 0
        ? `; ${outcome.cutShortPasses} pass(es) ended by the paging bound (the vendor kept returning stones past the listing's end)`
        : '');
    await markPartitionUnverified(db, claim, finish, cause);
    logger.error(
      {
        passes: outcome.passes,
        count: outcome.count,
        lastPassUnique: outcome.lastPassUnique,
        kept: outcome.kept,
        discrepancy: outcome.discrepancy,
        cutShortPasses: outcome.cutShortPasses,
        resyncs: outcome.resyncs,
        resyncPages: outcome.resyncPages,
        cause,
      },
      'partition failed: not verified against the exact count (`worker retry <runId>` pages it again)',
    );
    throw new UnverifiedPartitionError(cause);
  }
  const { runCompleted } = await finishPartition(db, claim, finish);
  logger.info(
    {
      kept: outcome.kept,
      count: outcome.count,
      passes: outcome.passes,
      written,
      searches: outcome.calls.search,
      counts: outcome.calls.count,
      // A resync bridges a listing that shifted under the cursor, so this is the only trace of a
      // vendor reordering while it is paged (until a shift too large to bridge costs a pass).
      resyncs: outcome.resyncs,
      resyncPages: outcome.resyncPages,
    },
    'partition done',
  );
  return { runCompleted, outcome };
}

/**
 * Runs `fn` while renewing the delivery's lock, at half of what is left of it each time. A lock
 * that is lost aborts `fn` at once (its signal) and makes this throw LockLostError.
 */
async function withLock<T>(item: ReceivedWorkItem, logger: Logger, fn: (lockLost: AbortSignal) => Promise<T>): Promise<T> {
  const lost = new AbortController();
  const done = new AbortController();
  let lockedUntil = item.lockedUntil.getTime();
  const renewing = (async () => {
    while (!done.signal.aborted) {
      const waitMs = Math.max(500, (lockedUntil - Date.now()) / 2);
      try {
        await sleep(waitMs, undefined, { signal: done.signal });
      } catch {
        return;
      }
      try {
        lockedUntil = (await item.renewLock()).getTime();
      } catch (err) {
        if (err instanceof LockLostError) {
          logger.warn({ reason: err.message }, 'the lock on the work item was lost; stopping this delivery');
          lost.abort(err);
          return;
        }
        // A hiccup: try again soon, while the lock still holds.
        logger.warn({ error: scrub(toError(err).message) }, 'renewing the lock failed; trying again');
        lockedUntil = Math.max(Date.now() + 1000, lockedUntil - 1000);
      }
    }
  })();
  try {
    return await fn(lost.signal);
  } catch (err) {
    if (lost.signal.aborted) throw lost.signal.reason as Error;
    throw err;
  } finally {
    done.abort();
    await renewing;
  }
}

/** A settlement that fails is logged, never fatal: the pages are committed, and a redelivery finds the partition as it is. */
async function settle(logger: Logger, what: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof LockLostError)
      logger.info({ reason: err.message }, `${what} the work item: lock already lost (a redelivery settles it)`);
    else logger.warn({ err: toError(err) }, `${what} the work item failed; it will be redelivered`);
  }
}
