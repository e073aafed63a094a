// An in-process AMQP 1.0 peer that is just enough of Azure Service Bus for the real
// @azure/service-bus SDK to publish to it: SASL ANONYMOUS, the $cbs put-token exchange,
// sender links to known queues, and decoding of single and batched (0x80013700) transfers.
// Fault knobs let a test make deliveries fail the way a busy or broken namespace does.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import rhea, { type AmqpError, type Connection, type Delivery, type EventContext, type Receiver, type Sender } from 'rhea';

/** Service Bus' batch message format: the body is a list of data sections, each one a whole encoded message. */
export const BATCH_MESSAGE_FORMAT = 0x80013700;

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

export interface ServiceBusPeerOptions {
  queues?: string[];
  /** Announced on every attach; the SDK sizes its batches from it. Standard tier: 256 KB. */
  maxMessageSize?: number;
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
  /**
   * Rejects the next `count` queue deliveries with `condition` (e.g. com.microsoft:server-busy),
   * after first accepting `skip` of them (a failure in the middle of a multi-batch publish).
   */
  rejectNext(count: number, condition: string, options?: { description?: string; skip?: number }): void;
  /** Status code answered to $cbs put-token (default 202). */
  cbsStatus: number;
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
  body?: unknown;
}

interface DataSection {
  typecode: number;
  content: unknown;
  multiple?: boolean;
}

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

function toReceived(queue: string, msg: DecodedMessage): ReceivedMessage {
  return {
    queue,
    body: decodeBody(msg.body),
    messageId: msg.message_id === undefined ? undefined : String(msg.message_id),
    contentType: msg.content_type,
    subject: msg.subject,
    applicationProperties: { ...(msg.application_properties ?? {}) },
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
  let reject: { count: number; skip: number; error: AmqpError } | undefined;

  const container = rhea.create_container({ id: 'servicebus-peer' });
  /** Per connection: the link on which $cbs replies go back (the client's $cbs receiver). */
  const cbsReplyLinks = new WeakMap<Connection, Sender>();

  const peer: ServiceBusPeer = {
    port: 0,
    connectionString: (key = 'not-a-real-key') =>
      `Endpoint=sb://127.0.0.1:${peer.port};SharedAccessKeyName=test;SharedAccessKey=${key};UseDevelopmentEmulator=true`,
    received,
    deliveries,
    get cbsRequests() {
      return cbsRequests;
    },
    rejectNext(count, condition, options = {}) {
      const description = options.description ?? `rejected by the test peer (${condition})`;
      reject = count > 0 ? { count, skip: options.skip ?? 0, error: { condition, description } } : undefined;
    },
    cbsStatus: 202,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const connection of connections) {
          // destroy() emits no 'end', so rhea would keep its heartbeat timer alive forever;
          // eof() runs rhea's own disconnect cleanup.
          const socket = (connection as unknown as { socket?: Socket }).socket;
          socket?.destroy();
          connection.eof();
        }
        for (const socket of sockets) socket.destroy();
      });
      connections.clear();
    },
  };

  container.on('connection_open', (ctx: EventContext) => {
    connections.add(ctx.connection);
  });
  container.on('disconnected', (ctx: EventContext) => {
    connections.delete(ctx.connection);
  });
  container.on('connection_close', (ctx: EventContext) => {
    connections.delete(ctx.connection);
  });
  // A link error the peer itself caused (a refused attach) must not crash the test process.
  container.on('error', () => {});

  // The client's receivers: only the $cbs reply link is expected.
  container.on('sender_open', (ctx: EventContext) => {
    const sender = ctx.sender as Sender;
    const source = sender.source as { address?: string } | undefined;
    if (source?.address === '$cbs') {
      cbsReplyLinks.set(ctx.connection, sender);
      sender.set_source({ address: '$cbs' });
      const replyTo = (sender.target as { address?: string } | undefined)?.address;
      if (replyTo) sender.set_target({ address: replyTo });
    } else {
      sender.close({ condition: 'amqp:not-found', description: `no such entity: ${source?.address ?? '(none)'}` });
    }
  });

  // The client's senders: $cbs and the known queues.
  container.on('receiver_open', (ctx: EventContext) => {
    const receiver = ctx.receiver as Receiver;
    const address = (receiver.target as { address?: string } | undefined)?.address ?? '';
    if (address !== '$cbs' && !queues.has(address)) {
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
    for (const msg of messages) received.push(toReceived(address, msg));
    delivery.accept();
  });

  function answerCbs(connection: Connection, request: DecodedMessage, delivery: Delivery): void {
    cbsRequests++;
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
  const server: Server = container.listen({ port: 0, host: '127.0.0.1', autoaccept: false } as unknown as Parameters<
    typeof container.listen
  >[0]) as Server;
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
