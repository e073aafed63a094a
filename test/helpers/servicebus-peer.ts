// An in-process AMQP 1.0 peer that is just enough of Azure Service Bus for the real
// @azure/service-bus SDK to publish to it and to receive from it in peek-lock mode.
// Sender side: SASL ANONYMOUS, the $cbs put-token exchange, sender links to known queues, and
// decoding of single and batched (0x80013700) transfers. Receiver side: queues store what they
// are sent; receiver links get deliveries as their credit allows (drain answered), with the lock
// token as the delivery tag and the x-opt-* annotations the SDK reads; settlement by disposition
// or through `<entity>/$management` (update-disposition, renew-lock, peek-message); locks that
// expire, delivery counts, and dead-lettering into `<queue>/$DeadLetterQueue` at the queue's max
// delivery count, as the service does. Fault knobs let a test make deliveries fail the way a busy
// or broken namespace does, drop every connection, or expire every lock at once.
import { randomUUID } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import rhea, { type AmqpError, type Connection, type Delivery, type EventContext, type Receiver, type Sender } from 'rhea';

/** Service Bus' batch message format: the body is a list of data sections, each one a whole encoded message. */
export const BATCH_MESSAGE_FORMAT = 0x80013700;

/** The sub-queue the service dead-letters into; the SDK addresses it as `<queue>/$DeadLetterQueue`. */
export const DEAD_LETTER_SUFFIX = '/$DeadLetterQueue';

export interface ReceivedMessage {
  queue: string;
  body: unknown;
  messageId: string | undefined;
  contentType: string | undefined;
  subject: string | undefined;
  applicationProperties: Record<string, unknown>;
}

export interface PeerDelivery {
  queue: string;
  format: number;
  messages: number;
  outcome: 'accepted' | 'rejected';
}

/** One $cbs put-token request as the peer received it. */
export interface CbsToken {
  /** `jwt` for an Entra ID token (TokenCredential), `servicebus.windows.net:sastoken` for a SAS. */
  type: unknown;
  /** The `name` property: the entity the claim is for, e.g. `sb://127.0.0.1:<port>/work-items`. */
  audience: unknown;
  token: unknown;
}

export type QueuedMessageState = 'active' | 'locked' | 'completed' | 'dead-lettered';

/** A snapshot of one stored message (changing it changes nothing in the peer). */
export interface QueuedMessage {
  /** The entity holding it: a queue, or `<queue>/$DeadLetterQueue`. */
  entity: string;
  sequenceNumber: number;
  messageId: string | undefined;
  body: unknown;
  applicationProperties: Record<string, unknown>;
  state: QueuedMessageState;
  /** As the SDK reports it: 0 on the first delivery, +1 per abandon or expired lock. */
  deliveryCount: number;
  /** The current lock while `locked`; afterwards the last one it had. */
  lockToken: string | undefined;
  lockedUntil: Date | undefined;
  enqueuedAt: Date;
  deadLetterReason: string | undefined;
  deadLetterErrorDescription: string | undefined;
}

export interface QueueOptions {
  /** Deliveries before the service dead-letters a message (Service Bus default 10). */
  maxDeliveryCount?: number;
  /** How long a peek-lock lasts unless renewed (default 30 s; the service's is 60 s; tests use a few seconds). */
  lockDurationMs?: number;
}

export interface ServiceBusPeerOptions extends QueueOptions {
  queues?: string[];
  /**
   * Listen with TLS (amqps, as the real namespace does) with this key and certificate. The SDK's
   * credential constructor (namespace + TokenCredential) always speaks TLS: no emulator switch.
   */
  tls?: { key: string | Buffer; cert: string | Buffer };
  /** Per-queue overrides of maxDeliveryCount and lockDurationMs. */
  queueOptions?: Record<string, QueueOptions>;
  /** Announced on every attach; the SDK sizes its batches from it. Standard tier: 256 KB. */
  maxMessageSize?: number;
  /**
   * Service Bus duplicate detection: a message whose messageId the queue already took is
   * accepted and dropped (not stored, not delivered), as the real service does within its window.
   */
  duplicateDetection?: boolean;
}

export interface ReceiveCounters {
  /** Messages handed to a receiver link (each redelivery counts again). */
  delivered: number;
  completes: number;
  abandons: number;
  /** Explicit dead-lettering by a receiver (not the automatic one at the max delivery count). */
  deadLetters: number;
  /** Dead-lettering by the peer itself at the max delivery count. */
  maxDeliveryDeadLetters: number;
  renewals: number;
  lockExpiries: number;
  /** Settlements and renewals refused because the lock was gone. */
  lockLost: number;
  managementRequests: number;
}

export interface ServiceBusPeer {
  readonly port: number;
  /** A connection string for the SDK, port included (RabbitMQ may own the emulator default 5672). */
  connectionString(sharedAccessKey?: string): string;
  /** Every message of every accepted delivery, in arrival order. */
  readonly received: ReceivedMessage[];
  /** Every transfer on a queue link (accepted or rejected). */
  readonly deliveries: PeerDelivery[];
  readonly cbsRequests: number;
  /** Every $cbs put-token request, in arrival order. */
  readonly cbsTokens: CbsToken[];
  /** `127.0.0.1:<port>`: what a namespace-and-credential client is given as its fully qualified namespace. */
  readonly namespace: string;
  /**
   * Rejects the next `count` queue deliveries with `condition` (e.g. com.microsoft:server-busy),
   * after first accepting `skip` of them (a failure in the middle of a multi-batch publish).
   */
  rejectNext(count: number, condition: string, options?: { description?: string; skip?: number }): void;
  /**
   * The next `count` queue deliveries are taken (stored, as a broker that crashes before it
   * answers may have done) but never acknowledged: the sender waits for an answer that never comes.
   */
  holdNext(count: number): void;
  /** Acknowledges every accepted delivery this much later (a slow broker; 0 = at once). */
  ackDelayMs: number;
  /** Messages dropped by duplicate detection. */
  readonly duplicatesDropped: number;
  /** Status code answered to $cbs put-token (default 202). */
  cbsStatus: number;
  /** Receive-side counters, live. */
  readonly counters: Readonly<ReceiveCounters>;
  /** Every message the entity (a queue or `<queue>/$DeadLetterQueue`) ever held, in sequence order. */
  messages(entity: string): QueuedMessage[];
  /** Messages of the queue waiting for a receiver (state `active`). */
  activeCount(queue: string): number;
  /** Messages of the queue currently locked by a receiver. */
  lockedCount(queue: string): number;
  /** The messages now in the queue's dead-letter queue (not yet completed there). */
  deadLetters(queue: string): QueuedMessage[];
  /** Stores a message as if a sender had sent it; the body travels as JSON in a data section, like the SDK's. */
  enqueue(queue: string, message: { body: unknown; messageId?: string; applicationProperties?: Record<string, unknown> }): number;
  /** Ends every current lock now (in one entity, or all): each message returns to active, or is dead-lettered. */
  expireLocks(entity?: string): number;
  /** Cuts every client connection the way a network failure does; the SDK reconnects on its next call. */
  dropConnections(): void;
  close(): Promise<void>;
}

// rhea's `Message` typings cover neither the decoded data `Section` nor `message_id` as a string
// on every path, so the peer reads the decoded shapes through this narrow view.
interface DecodedMessage {
  message_id?: unknown;
  correlation_id?: unknown;
  reply_to?: string;
  subject?: string;
  content_type?: string;
  application_properties?: Record<string, unknown>;
  message_annotations?: Record<string, unknown>;
  delivery_count?: number;
  body?: unknown;
}

interface DataSection {
  typecode: number;
  content: unknown;
  multiple?: boolean;
}

// rhea internals the receiver side needs and its typings leave out (rhea 3.0.5, lib/link.js and
// lib/session.js): the sender's credit bookkeeping, its attach frame, and the session's
// transfer cursor, which tells a delivery rhea still holds from one already on the wire.
interface SenderInternals {
  credit: number;
  delivery_count: number;
  _draining: boolean;
  _drained: boolean;
  _get_drain: () => boolean;
  local: { attach: { snd_settle_mode?: number; rcv_settle_mode?: number } };
  remote: { attach?: { snd_settle_mode?: number } };
  session: { outgoing: { next_pending_delivery: number } };
}

interface DeliveryInternals {
  remote_settled: boolean;
}

/** The remote outcome of a disposition, as rhea unwraps it. */
interface RemoteOutcome {
  error?: { condition?: string; description?: string; info?: Record<string, unknown> };
  undeliverable_here?: boolean;
  message_annotations?: Record<string, unknown>;
}

type Outcome =
  | { kind: 'complete' }
  | { kind: 'abandon'; properties?: Record<string, unknown> }
  | { kind: 'dead-letter'; reason?: string; description?: string; properties?: Record<string, unknown> }
  | { kind: 'defer' };

interface StoredMessage {
  entity: Entity;
  sequenceNumber: number;
  /** The message as decoded, re-encoded (with fresh annotations) for every delivery. */
  decoded: DecodedMessage;
  applicationProperties: Record<string, unknown>;
  enqueuedAt: Date;
  state: QueuedMessageState;
  deliveryCount: number;
  lockToken: string | undefined;
  lockedUntil: Date | undefined;
  lockTimer: NodeJS.Timeout | undefined;
  deadLetterReason: string | undefined;
  deadLetterErrorDescription: string | undefined;
}

interface Entity {
  name: string;
  /** The queue an entity's dead letters go to; undefined for a dead-letter queue itself. */
  deadLetter: Entity | undefined;
  maxDeliveryCount: number;
  lockDurationMs: number;
  messages: StoredMessage[];
  byLockToken: Map<string, StoredMessage>;
  links: ReceiveLink[];
  /** Round-robin start, so competing receivers share the backlog. */
  nextLink: number;
}

interface ReceiveLink {
  sender: Sender;
  entity: Entity;
  /** receiveAndDelete: deliveries go out settled and the message is gone at once. */
  presettled: boolean;
  /** Deliveries handed to rhea on this link, until they are on the wire. */
  unsent: Delivery[];
}

const LOCK_LOST = 'com.microsoft:message-lock-lost';

/** rhea builds outcomes at run time (lib/message.js define_outcome); its typings omit the builders. */
const outcomes = rhea.message as unknown as {
  accepted: () => { described(): unknown };
  rejected: (fields: { error: AmqpError }) => { described(): unknown };
};

function isDataSection(value: unknown): value is DataSection {
  return typeof value === 'object' && value !== null && 'typecode' in value && 'content' in value;
}

/** The Buffers of a data body: one section, or several once rhea saw more than one. */
function dataBuffers(body: unknown): Buffer[] {
  if (!isDataSection(body) || body.typecode !== 0x75) return [];
  const parts = body.multiple ? (body.content as unknown[]) : [body.content];
  return parts.filter((p): p is Buffer => Buffer.isBuffer(p));
}

function decodeBody(body: unknown): unknown {
  const [buffer] = dataBuffers(body);
  if (buffer === undefined) return body;
  const text = buffer.toString('utf8');
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** A message id as the SDK would show it: ids are strings, numbers, uuids or binary on the wire. */
function idString(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string' || typeof value === 'number' || typeof value === 'bigint') return String(value);
  if (Buffer.isBuffer(value)) return value.length === 16 ? rhea.uuid_to_string(value) : value.toString('hex');
  return JSON.stringify(value);
}

function toReceived(queue: string, msg: DecodedMessage): ReceivedMessage {
  return {
    queue,
    body: decodeBody(msg.body),
    messageId: idString(msg.message_id),
    contentType: msg.content_type,
    subject: msg.subject,
    applicationProperties: { ...(msg.application_properties ?? {}) },
  };
}

/**
 * The byte order of a .NET Guid: the first three groups reversed. Service Bus sends lock tokens
 * that way as delivery tags and the SDK reverses them again; the swap is its own inverse.
 */
function dotnetGuidBytes(bytes: Buffer): Buffer {
  const order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
  return Buffer.from(order.map((i) => bytes[i] ?? 0));
}

/** A lock token from a management request: rhea hands a uuid over as its 16 bytes. */
function lockTokenString(value: unknown): string | undefined {
  if (Buffer.isBuffer(value) && value.length === 16) return rhea.uuid_to_string(value);
  if (typeof value === 'string') return value.toLowerCase();
  return undefined;
}

/** A long as rhea decodes it: a number when it fits, else its 8 big-endian bytes. */
function longValue(value: unknown): number | undefined {
  if (typeof value === 'number') return value;
  if (Buffer.isBuffer(value) && value.length === 8) return Number(value.readBigInt64BE(0));
  return undefined;
}

function asArray(value: unknown): unknown[] {
  if (Array.isArray(value)) return value as unknown[];
  return value === undefined || value === null ? [] : [value];
}

function snapshot(m: StoredMessage): QueuedMessage {
  return {
    entity: m.entity.name,
    sequenceNumber: m.sequenceNumber,
    messageId: idString(m.decoded.message_id),
    body: decodeBody(m.decoded.body),
    applicationProperties: { ...m.applicationProperties },
    state: m.state,
    deliveryCount: m.deliveryCount,
    lockToken: m.lockToken,
    lockedUntil: m.lockedUntil,
    enqueuedAt: m.enqueuedAt,
    deadLetterReason: m.deadLetterReason,
    deadLetterErrorDescription: m.deadLetterErrorDescription,
  };
}

export async function startServiceBusPeer(options: ServiceBusPeerOptions = {}): Promise<ServiceBusPeer> {
  const queues = new Set(options.queues ?? ['work-items']);
  const maxMessageSize = options.maxMessageSize ?? 262_144;
  const received: ReceivedMessage[] = [];
  const deliveries: PeerDelivery[] = [];
  const connections = new Set<Connection>();
  const sockets = new Set<Socket>();
  let cbsRequests = 0;
  const cbsTokens: CbsToken[] = [];
  let reject: { count: number; skip: number; error: AmqpError } | undefined;
  let hold = 0;
  let duplicatesDropped = 0;
  /** Per queue: the message ids taken, for duplicate detection. */
  const seenIds = new Map<string, Set<string>>();
  let closed = false;
  const counters: ReceiveCounters = {
    delivered: 0,
    completes: 0,
    abandons: 0,
    deadLetters: 0,
    maxDeliveryDeadLetters: 0,
    renewals: 0,
    lockExpiries: 0,
    lockLost: 0,
    managementRequests: 0,
  };

  /** Entities by lower-cased name: the SDK spells the sub-queue `$DeadLetterQueue`, others `$deadletterqueue`. */
  const entities = new Map<string, Entity>();
  for (const queue of queues) {
    const own = options.queueOptions?.[queue] ?? {};
    const lockDurationMs = own.lockDurationMs ?? options.lockDurationMs ?? 30_000;
    const maxDeliveryCount = own.maxDeliveryCount ?? options.maxDeliveryCount ?? 10;
    if (!(lockDurationMs > 0) || !Number.isInteger(maxDeliveryCount) || maxDeliveryCount < 1) {
      throw new Error(`queue ${queue}: lockDurationMs must be > 0 and maxDeliveryCount a whole number ≥ 1`);
    }
    const make = (name: string, deadLetter: Entity | undefined): Entity => ({
      name,
      deadLetter,
      maxDeliveryCount,
      lockDurationMs,
      messages: [],
      byLockToken: new Map(),
      links: [],
      nextLink: 0,
    });
    const dlq = make(`${queue}${DEAD_LETTER_SUFFIX}`, undefined);
    entities.set(queue.toLowerCase(), make(queue, dlq));
    entities.set(dlq.name.toLowerCase(), dlq);
  }
  const sequenceNumbers = new Map<string, number>();

  function entityFor(address: string): Entity | undefined {
    return entities.get(address.toLowerCase());
  }
  function queueEntity(queue: string): Entity {
    const entity = entityFor(queue);
    if (!entity) throw new Error(`the peer has no queue or sub-queue named ${queue}`);
    return entity;
  }

  const container = rhea.create_container({ id: 'servicebus-peer' });
  /** Per connection: the link on which $cbs replies go back (the client's $cbs receiver). */
  const cbsReplyLinks = new WeakMap<Connection, Sender>();
  /** Per connection: the $management reply links, by their address (the requests' reply_to). */
  const managementReplyLinks = new WeakMap<Connection, Map<string, Sender>>();
  const receiveLinks = new WeakMap<Sender, ReceiveLink>();
  /** What each outgoing delivery carried: settlement applies only if that lock is still the message's. */
  const inFlight = new WeakMap<Delivery, { message: StoredMessage; lockToken: string }>();

  // ---- storage and locks ------------------------------------------------------------------

  function store(entity: Entity, decoded: DecodedMessage, sequenceNumber?: number): StoredMessage {
    const root = entity.deadLetter ? entity.name : entity.name.slice(0, -DEAD_LETTER_SUFFIX.length);
    let seq = sequenceNumber;
    if (seq === undefined) {
      seq = (sequenceNumbers.get(root) ?? 0) + 1;
      sequenceNumbers.set(root, seq);
    }
    const message: StoredMessage = {
      entity,
      sequenceNumber: seq,
      decoded,
      applicationProperties: { ...(decoded.application_properties ?? {}) },
      enqueuedAt: new Date(),
      state: 'active',
      deliveryCount: 0,
      lockToken: undefined,
      lockedUntil: undefined,
      lockTimer: undefined,
      deadLetterReason: undefined,
      deadLetterErrorDescription: undefined,
    };
    entity.messages.push(message);
    return message;
  }

  function unlock(message: StoredMessage): void {
    if (message.lockTimer) clearTimeout(message.lockTimer);
    message.lockTimer = undefined;
    if (message.lockToken) message.entity.byLockToken.delete(message.lockToken);
    message.lockedUntil = undefined;
  }

  function armLockTimer(message: StoredMessage): void {
    if (message.lockTimer) clearTimeout(message.lockTimer);
    const token = message.lockToken;
    const wait = Math.max(0, (message.lockedUntil?.getTime() ?? 0) - Date.now());
    message.lockTimer = setTimeout(() => {
      if (message.state === 'locked' && message.lockToken === token) expireLock(message);
    }, wait);
    // A test that forgets a lock must not keep its process alive.
    message.lockTimer.unref();
  }

  function expireLock(message: StoredMessage): void {
    counters.lockExpiries++;
    returnToQueue(message);
  }

  /** An abandon or a lost lock: one more delivery counted, then active again or dead-lettered. */
  function returnToQueue(message: StoredMessage, properties?: Record<string, unknown>): void {
    unlock(message);
    if (properties) Object.assign(message.applicationProperties, properties);
    message.deliveryCount++;
    const { entity } = message;
    if (entity.deadLetter && message.deliveryCount >= entity.maxDeliveryCount) {
      counters.maxDeliveryDeadLetters++;
      deadLetter(message, 'MaxDeliveryCountExceeded', `Message could not be consumed after ${entity.maxDeliveryCount} delivery attempts.`);
      return;
    }
    message.state = 'active';
    pump(entity);
  }

  function deadLetter(
    message: StoredMessage,
    reason: string | undefined,
    description: string | undefined,
    properties?: Record<string, unknown>,
  ): void {
    unlock(message);
    const target = message.entity.deadLetter;
    if (!target) throw new Error('a dead-lettered message is already in the dead-letter queue');
    message.state = 'dead-lettered';
    message.deadLetterReason = reason;
    message.deadLetterErrorDescription = description;
    // The service keeps the message (sequence number, delivery count) and records why in two
    // application properties, which is where the SDK reads deadLetterReason from.
    const applicationProperties: Record<string, unknown> = { ...message.applicationProperties, ...(properties ?? {}) };
    if (reason !== undefined) applicationProperties.DeadLetterReason = reason;
    if (description !== undefined) applicationProperties.DeadLetterErrorDescription = description;
    const copy = store(target, { ...message.decoded, application_properties: applicationProperties }, message.sequenceNumber);
    copy.deliveryCount = message.deliveryCount;
    copy.enqueuedAt = message.enqueuedAt;
    copy.deadLetterReason = reason;
    copy.deadLetterErrorDescription = description;
    pump(target);
  }

  /** Applies a settlement to the lock `lockToken`; an error when that lock is no longer held. */
  function settle(message: StoredMessage, lockToken: string, outcome: Outcome): AmqpError | undefined {
    if (message.state !== 'locked' || message.lockToken !== lockToken) return lockLost();
    if ((message.lockedUntil?.getTime() ?? 0) <= Date.now()) {
      // The timer has not fired yet, but the lock is over all the same.
      expireLock(message);
      return lockLost();
    }
    switch (outcome.kind) {
      case 'complete':
        unlock(message);
        message.state = 'completed';
        counters.completes++;
        return undefined;
      case 'abandon':
        counters.abandons++;
        returnToQueue(message, outcome.properties);
        return undefined;
      case 'dead-letter':
        if (!message.entity.deadLetter) {
          return { condition: 'com.microsoft:invalid-operation', description: 'A message in a dead-letter queue cannot be dead-lettered.' };
        }
        counters.deadLetters++;
        deadLetter(message, outcome.reason, outcome.description, outcome.properties);
        return undefined;
      case 'defer':
        return { condition: 'amqp:not-implemented', description: 'The test peer does not defer messages.' };
    }
  }

  function lockLost(): AmqpError {
    counters.lockLost++;
    return {
      condition: LOCK_LOST,
      description: 'The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.',
    };
  }

  /** The message as it goes out: its own sections plus the annotations and header of this delivery. */
  function outgoing(message: StoredMessage): DecodedMessage {
    const annotations: Record<string, unknown> = {
      ...(message.decoded.message_annotations ?? {}),
      'x-opt-sequence-number': rhea.types.wrap_long(message.sequenceNumber),
      'x-opt-enqueued-time': message.enqueuedAt,
    };
    if (message.lockedUntil) annotations['x-opt-locked-until'] = message.lockedUntil;
    return {
      ...message.decoded,
      application_properties: message.applicationProperties,
      message_annotations: annotations,
      delivery_count: message.deliveryCount,
    };
  }

  // ---- deliveries -------------------------------------------------------------------------

  /** Credit a link has left: rhea counts down only once a delivery is on the wire. */
  function creditLeft(link: ReceiveLink): number {
    const internals = link.sender as unknown as SenderInternals;
    const next = internals.session.outgoing.next_pending_delivery;
    link.unsent = link.unsent.filter((d) => d.id >= next);
    return internals.credit - link.unsent.length;
  }

  /** Hands active messages, oldest first, to the entity's links as their credit allows. */
  function pump(entity: Entity): void {
    if (closed) return;
    entity.links = entity.links.filter((l) => l.sender.is_open());
    if (entity.links.length === 0) return;
    for (const message of entity.messages) {
      if (message.state !== 'active') continue;
      const link = nextLinkWithCredit(entity);
      if (!link) return;
      deliver(message, link);
    }
  }

  function nextLinkWithCredit(entity: Entity): ReceiveLink | undefined {
    const count = entity.links.length;
    for (let i = 0; i < count; i++) {
      const link = entity.links[(entity.nextLink + i) % count];
      // sendable(): rhea's own check also covers a session whose outgoing buffer is full.
      if (link && link.sender.sendable() && creditLeft(link) > 0) {
        entity.nextLink = (entity.nextLink + i + 1) % count;
        return link;
      }
    }
    return undefined;
  }

  function deliver(message: StoredMessage, link: ReceiveLink): void {
    counters.delivered++;
    if (link.presettled) {
      message.state = 'completed';
      link.unsent.push(link.sender.send(outgoing(message) as Parameters<Sender['send']>[0]));
      return;
    }
    const lockToken = randomUUID();
    message.state = 'locked';
    message.lockToken = lockToken;
    message.lockedUntil = new Date(Date.now() + message.entity.lockDurationMs);
    message.entity.byLockToken.set(lockToken, message);
    armLockTimer(message);
    const tag = dotnetGuidBytes(rhea.string_to_uuid(lockToken));
    const delivery = link.sender.send(outgoing(message) as Parameters<Sender['send']>[0], tag);
    link.unsent.push(delivery);
    inFlight.set(delivery, { message, lockToken });
  }

  /** Settles an outgoing delivery from the peer's side, which is what the SDK's settle call awaits. */
  function settleDelivery(delivery: Delivery, error: AmqpError | undefined): void {
    // Success is `accepted` whatever the client asked for: the SDK fails a settlement whose state
    // carries an error, so echoing a dead-letter `rejected` back would fail deadLetterMessage().
    delivery.update(true, error ? outcomes.rejected({ error }).described() : outcomes.accepted().described());
    // The client never settles after the sender did; marking it lets rhea drop the delivery.
    (delivery as unknown as DeliveryInternals).remote_settled = true;
  }

  function onDisposition(kind: 'accepted' | 'rejected' | 'modified' | 'released', ctx: EventContext): void {
    const delivery = ctx.delivery as Delivery;
    const carried = inFlight.get(delivery);
    if (!carried) return;
    inFlight.delete(delivery);
    const state = (delivery.remote_state ?? {}) as RemoteOutcome;
    let outcome: Outcome;
    if (kind === 'accepted') {
      outcome = { kind: 'complete' };
    } else if (kind === 'rejected') {
      // The SDK's deadLetterMessage(): rejected with com.microsoft:dead-letter, reason and description in info.
      const info = state.error?.info ?? {};
      const { DeadLetterReason, DeadLetterErrorDescription, ...rest } = info;
      outcome = {
        kind: 'dead-letter',
        reason: typeof DeadLetterReason === 'string' ? DeadLetterReason : state.error?.condition,
        description: typeof DeadLetterErrorDescription === 'string' ? DeadLetterErrorDescription : state.error?.description,
        properties: Object.keys(rest).length > 0 ? rest : undefined,
      };
    } else if (kind === 'modified' && state.undeliverable_here) {
      outcome = { kind: 'defer' };
    } else {
      outcome = { kind: 'abandon', properties: state.message_annotations };
    }
    settleDelivery(delivery, settle(carried.message, carried.lockToken, outcome));
  }

  // ---- $management ------------------------------------------------------------------------

  interface ManagementReply {
    status: number;
    body?: unknown;
    condition?: string;
    description?: string;
  }

  function answerManagement(connection: Connection, entity: Entity, request: DecodedMessage, delivery: Delivery): void {
    counters.managementRequests++;
    delivery.accept();
    const requested = request.application_properties?.operation;
    const operation = typeof requested === 'string' ? requested : '';
    const body = (typeof request.body === 'object' && request.body !== null ? request.body : {}) as Record<string, unknown>;
    const reply = managementOperation(entity, operation, body);
    const link = request.reply_to ? managementReplyLinks.get(connection)?.get(request.reply_to) : undefined;
    if (!link) return;
    // Service Bus answers management requests with camelCase keys; the SDK's peek reads `statusCode`.
    const applicationProperties: Record<string, unknown> = {
      statusCode: reply.status,
      statusDescription: reply.description ?? (reply.status < 300 ? 'OK' : 'Error'),
    };
    if (reply.condition) applicationProperties.errorCondition = reply.condition;
    link.send({
      correlation_id: request.message_id,
      to: request.reply_to,
      application_properties: applicationProperties,
      body: reply.body ?? null,
    } as unknown as Parameters<Sender['send']>[0]);
  }

  function managementOperation(entity: Entity, operation: string, body: Record<string, unknown>): ManagementReply {
    const lockTokens = asArray(body['lock-tokens']).map(lockTokenString);
    switch (operation) {
      case 'com.microsoft:renew-lock': {
        const expirations: Date[] = [];
        for (const token of lockTokens) {
          const message = token ? entity.byLockToken.get(token) : undefined;
          if (!message || message.state !== 'locked' || (message.lockedUntil?.getTime() ?? 0) <= Date.now()) {
            if (message && message.state === 'locked') expireLock(message);
            const error = lockLost();
            return { status: 410, condition: error.condition, description: error.description };
          }
          message.lockedUntil = new Date(Date.now() + entity.lockDurationMs);
          armLockTimer(message);
          counters.renewals++;
          expirations.push(message.lockedUntil);
        }
        return { status: 200, body: { expirations } };
      }
      case 'com.microsoft:update-disposition': {
        const status = typeof body['disposition-status'] === 'string' ? body['disposition-status'] : '';
        const outcome: Outcome | undefined =
          status === 'completed'
            ? { kind: 'complete' }
            : status === 'abandoned'
              ? { kind: 'abandon', properties: body['properties-to-modify'] as Record<string, unknown> | undefined }
              : status === 'suspended'
                ? {
                    kind: 'dead-letter',
                    reason: body['deadletter-reason'] as string | undefined,
                    description: body['deadletter-description'] as string | undefined,
                    properties: body['properties-to-modify'] as Record<string, unknown> | undefined,
                  }
                : status === 'defered'
                  ? { kind: 'defer' }
                  : undefined;
        if (!outcome) return { status: 400, condition: 'amqp:invalid-field', description: `unknown disposition-status '${status}'` };
        for (const token of lockTokens) {
          const message = token ? entity.byLockToken.get(token) : undefined;
          const error = message && token ? settle(message, token, outcome) : lockLost();
          if (error)
            return { status: error.condition === LOCK_LOST ? 410 : 400, condition: error.condition, description: error.description };
        }
        return { status: 200 };
      }
      case 'com.microsoft:peek-message': {
        const from = longValue(body['from-sequence-number']) ?? 1;
        const count = typeof body['message-count'] === 'number' ? body['message-count'] : 1;
        const peeked = entity.messages
          .filter((m) => (m.state === 'active' || m.state === 'locked') && m.sequenceNumber >= from)
          .slice(0, count);
        if (peeked.length === 0) return { status: 204, description: 'No messages to peek' };
        return { status: 200, body: { messages: peeked.map((m) => ({ message: rhea.message.encode(outgoing(m)) })) } };
      }
      default:
        return {
          status: 501,
          condition: 'amqp:not-implemented',
          description: `the test peer does not answer ${operation || '(no operation)'}`,
        };
    }
  }

  // ---- the peer ---------------------------------------------------------------------------

  function entityMessages(entity: string): StoredMessage[] {
    return queueEntity(entity).messages;
  }

  const peer: ServiceBusPeer = {
    port: 0,
    connectionString: (key = 'not-a-real-key') =>
      `Endpoint=sb://127.0.0.1:${peer.port};SharedAccessKeyName=test;SharedAccessKey=${key};UseDevelopmentEmulator=true`,
    received,
    deliveries,
    get cbsRequests() {
      return cbsRequests;
    },
    cbsTokens,
    get namespace() {
      return `127.0.0.1:${peer.port}`;
    },
    rejectNext(count, condition, options = {}) {
      const description = options.description ?? `rejected by the test peer (${condition})`;
      reject = count > 0 ? { count, skip: options.skip ?? 0, error: { condition, description } } : undefined;
    },
    holdNext(count) {
      hold = Math.max(0, count);
    },
    ackDelayMs: 0,
    get duplicatesDropped() {
      return duplicatesDropped;
    },
    cbsStatus: 202,
    counters,
    messages: (entity) => entityMessages(entity).map(snapshot),
    activeCount: (queue) => entityMessages(queue).filter((m) => m.state === 'active').length,
    lockedCount: (queue) => entityMessages(queue).filter((m) => m.state === 'locked').length,
    deadLetters: (queue) => {
      const dlq = queueEntity(queue).deadLetter;
      if (!dlq) throw new Error(`${queue} is itself a dead-letter queue`);
      return dlq.messages.filter((m) => m.state !== 'completed').map(snapshot);
    },
    enqueue(queue, message) {
      const entity = queueEntity(queue);
      const stored = store(entity, {
        message_id: message.messageId,
        content_type: 'application/json',
        application_properties: message.applicationProperties ?? {},
        body: rhea.message.data_section(Buffer.from(JSON.stringify(message.body), 'utf8')),
      });
      pump(entity);
      return stored.sequenceNumber;
    },
    expireLocks(entity) {
      const targets = entity === undefined ? [...entities.values()] : [queueEntity(entity)];
      let expired = 0;
      for (const target of targets) {
        for (const message of target.messages.filter((m) => m.state === 'locked')) {
          expireLock(message);
          expired++;
        }
      }
      return expired;
    },
    dropConnections() {
      for (const connection of [...connections]) disconnect(connection);
      for (const socket of sockets) socket.destroy();
    },
    close: async () => {
      closed = true;
      for (const entity of entities.values()) for (const message of entity.messages) unlock(message);
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const connection of [...connections]) disconnect(connection);
        for (const socket of sockets) socket.destroy();
      });
      connections.clear();
    },
  };

  function disconnect(connection: Connection): void {
    // destroy() emits no 'end', so rhea would keep its heartbeat timer alive forever;
    // eof() runs rhea's own disconnect cleanup.
    const socket = (connection as unknown as { socket?: Socket }).socket;
    socket?.destroy();
    // Not in rhea's typings.
    (connection as unknown as { eof(): void }).eof();
    forgetConnection(connection);
  }

  /** Links of a gone connection take no more deliveries; their locks run out as the service's do. */
  function forgetConnection(connection: Connection): void {
    connections.delete(connection);
    for (const entity of entities.values()) entity.links = entity.links.filter((l) => l.sender.connection !== connection);
  }

  container.on('connection_open', (ctx: EventContext) => {
    connections.add(ctx.connection);
  });
  container.on('disconnected', (ctx: EventContext) => {
    forgetConnection(ctx.connection);
  });
  container.on('connection_close', (ctx: EventContext) => {
    forgetConnection(ctx.connection);
  });
  // A link error the peer itself caused (a refused attach) must not crash the test process.
  container.on('error', () => {});

  // The client's receivers: the $cbs reply link, $management reply links, and queue receivers.
  container.on('sender_open', (ctx: EventContext) => {
    const sender = ctx.sender as Sender;
    const source = (sender.source as { address?: string } | undefined)?.address ?? '';
    const replyTo = (sender.target as { address?: string } | undefined)?.address;
    if (source === '$cbs') {
      cbsReplyLinks.set(ctx.connection, sender);
      sender.set_source({ address: '$cbs' });
      if (replyTo) sender.set_target({ address: replyTo });
      return;
    }
    const management = /^(.*)\/\$management$/i.exec(source);
    if (management && entityFor(management[1] ?? '') && replyTo) {
      let links = managementReplyLinks.get(ctx.connection);
      if (!links) managementReplyLinks.set(ctx.connection, (links = new Map<string, Sender>()));
      links.set(replyTo, sender);
      sender.set_source({ address: source });
      sender.set_target({ address: replyTo });
      return;
    }
    const entity = entityFor(source);
    if (!entity) {
      sender.close({
        condition: 'amqp:not-found',
        description: `The messaging entity 'sb://127.0.0.1:${peer.port}/${source}' could not be found.`,
      });
      return;
    }
    sender.set_source({ address: source });
    if (replyTo) sender.set_target({ address: replyTo });
    const internals = sender as unknown as SenderInternals;
    const presettled = internals.remote.attach?.snd_settle_mode === 1;
    internals.local.attach.snd_settle_mode = presettled ? 1 : 0;
    internals.local.attach.rcv_settle_mode = 1;
    // rhea reports a drain only while credit is left, but the SDK waits for the drain flow even
    // when the last deliveries used the credit up; always echo it, once per drain request.
    internals._get_drain = function (this: SenderInternals) {
      if (!this._draining || !this._drained) return false;
      this.delivery_count += this.credit;
      this.credit = 0;
      this._drained = false;
      return true;
    };
    const link: ReceiveLink = { sender, entity, presettled, unsent: [] };
    receiveLinks.set(sender, link);
    entity.links.push(link);
  });

  container.on('sendable', (ctx: EventContext) => {
    const link = receiveLinks.get(ctx.sender as Sender);
    if (link) pump(link.entity);
  });
  container.on('sender_draining', (ctx: EventContext) => {
    const sender = ctx.sender as Sender;
    const link = receiveLinks.get(sender);
    if (!link) return;
    pump(link.entity);
    // Whatever pump() sent goes on the wire before rhea writes the flow that gives up the rest.
    sender.set_drained(true);
  });
  container.on('sender_close', (ctx: EventContext) => {
    const link = receiveLinks.get(ctx.sender as Sender);
    if (link) link.entity.links = link.entity.links.filter((l) => l !== link);
  });
  for (const kind of ['accepted', 'rejected', 'modified', 'released'] as const) {
    container.on(kind, (ctx: EventContext) => onDisposition(kind, ctx));
  }

  // The client's senders: $cbs, $management and the known queues.
  container.on('receiver_open', (ctx: EventContext) => {
    const receiver = ctx.receiver as Receiver;
    const address = (receiver.target as { address?: string } | undefined)?.address ?? '';
    const management = /^(.*)\/\$management$/i.exec(address);
    const known = address === '$cbs' || queues.has(address) || (management !== null && entityFor(management[1] ?? '') !== undefined);
    if (!known) {
      receiver.close({
        condition: 'amqp:not-found',
        description: `The messaging entity 'sb://127.0.0.1:${peer.port}/${address}' could not be found.`,
      });
      return;
    }
    receiver.set_target({ address });
    const origin = (receiver.source as { address?: string } | undefined)?.address;
    if (origin) receiver.set_source({ address: origin });
    // Not in rhea's typings: the local attach frame is what carries max_message_size to the client.
    (receiver as unknown as { local: { attach: { max_message_size: number } } }).local.attach.max_message_size = maxMessageSize;
  });

  container.on('message', (ctx: EventContext) => {
    const receiver = ctx.receiver as Receiver;
    const delivery = ctx.delivery as Delivery;
    const address = (receiver.target as { address?: string } | undefined)?.address ?? '';
    if (address === '$cbs') {
      answerCbs(ctx.connection, ctx.message as unknown as DecodedMessage, delivery);
      return;
    }
    const management = /^(.*)\/\$management$/i.exec(address);
    if (management) {
      answerManagement(ctx.connection, queueEntity(management[1] ?? ''), ctx.message as unknown as DecodedMessage, delivery);
      return;
    }
    // rhea hands over non-zero formats undecoded, as a Buffer, with the format beside it.
    const format = (ctx as unknown as { format?: number }).format ?? 0;
    const messages: DecodedMessage[] =
      format === BATCH_MESSAGE_FORMAT
        ? dataBuffers((rhea.message.decode(ctx.message as unknown as Buffer) as unknown as DecodedMessage).body).map(
            (section) => rhea.message.decode(section) as unknown as DecodedMessage,
          )
        : [ctx.message as unknown as DecodedMessage];
    if (reject && reject.skip > 0) {
      reject.skip--;
    } else if (reject) {
      const error = reject.error;
      if (--reject.count <= 0) reject = undefined;
      deliveries.push({ queue: address, format, messages: messages.length, outcome: 'rejected' });
      delivery.reject(error);
      return;
    }
    deliveries.push({ queue: address, format, messages: messages.length, outcome: 'accepted' });
    const entity = queueEntity(address);
    for (const msg of messages) {
      received.push(toReceived(address, msg));
      const id =
        typeof msg.message_id === 'string' ? msg.message_id : msg.message_id === undefined ? undefined : JSON.stringify(msg.message_id);
      if (options.duplicateDetection && id !== undefined) {
        const seen = seenIds.get(address) ?? new Set<string>();
        seenIds.set(address, seen);
        if (seen.has(id)) {
          duplicatesDropped++;
          continue;
        }
        seen.add(id);
      }
      store(entity, msg);
    }
    pump(entity);
    if (hold > 0) {
      hold--;
      return;
    }
    if (peer.ackDelayMs > 0) setTimeout(() => delivery.accept(), peer.ackDelayMs);
    else delivery.accept();
  });

  function answerCbs(connection: Connection, request: DecodedMessage, delivery: Delivery): void {
    cbsRequests++;
    const properties = request.application_properties ?? {};
    cbsTokens.push({ type: properties.type, audience: properties.name, token: request.body });
    delivery.accept();
    const replyLink = cbsReplyLinks.get(connection);
    if (!replyLink) return;
    const status = peer.cbsStatus;
    replyLink.send({
      correlation_id: request.message_id,
      to: request.reply_to,
      application_properties: {
        'status-code': status,
        'status-description': status >= 200 && status < 300 ? 'Accepted' : 'Rejected by the test peer',
      },
      body: null,
    } as unknown as Parameters<Sender['send']>[0]);
  }

  // autoaccept off: the peer settles each delivery itself, accepted or rejected, exactly once.
  // treat_modified_as_released off: an abandon (modified) must not also arrive as a release.
  const server: Server = container.listen({
    port: 0,
    host: '127.0.0.1',
    autoaccept: false,
    sender_options: { treat_modified_as_released: false },
    ...(options.tls ? { transport: 'tls', key: options.tls.key, cert: options.tls.cert } : {}),
  } as unknown as Parameters<typeof container.listen>[0]);
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  (peer as { port: number }).port = (server.address() as AddressInfo).port;
  return peer;
}

/** A port on 127.0.0.1 where nothing listens: bound, then released. */
export async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}
