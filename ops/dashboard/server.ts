import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import amqp, { type ChannelModel, type ConfirmChannel } from 'amqplib';
import { Queue } from 'bullmq';
import Fastify, {
  type FastifyInstance,
  type FastifyPluginAsync,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import type { Knex } from 'knex';
import { z } from 'zod';
import type { App } from '../../shared/app.js';
import { type Config, redactUrl } from '../../shared/config.js';
import { createKnex } from '../../shared/db/knex.js';
import {
  countDeadLettersMatching,
  type DeadLetterSearch,
  type DeadLetterSearchRow,
  deadLetterGroups,
  deadLetterIdsMatching,
  deadLetterReasons,
  deadLetterToJson,
  deleteDeadLetters,
  getDeadLetter,
  searchDeadLetters,
} from '../../shared/dead-letters.js';
import { workerDefaults, workQueueName } from '../../shared/defaults.js';
import { DurableWorkerError, ServiceUnavailableError, UsageError } from '../../shared/errors.js';
import { listProcesses } from '../../shared/heartbeat.js';
import { type Logger, silentLogger } from '../../shared/logger.js';
import { relayLag } from '../../shared/outbox.js';
import { createRedis } from '../../shared/redis.js';
import { sagaQueue } from '../../shared/saga/jobs.js';
import {
  getSaga,
  listStepRows,
  type SagaStatus,
  sagaStatuses,
  searchSagas,
} from '../../shared/saga/store.js';
import { type ReplayResult, replayDeadLetter } from '../dead-letter-replay.js';
import { formatTimeline, sagaView } from '../saga-view.js';
import {
  appQueueNames,
  bullmqDestinations,
  bullQueueStatus,
  deadLetterQueues,
  deadLetterStatus,
  outboxStatus,
  rabbitQueueStatus,
  sagaCountsByStatus,
} from '../status.js';
import { auditForMessage, insertAudit, listAudit } from './audit.js';
import {
  contentSecurityPolicy,
  cookie,
  isLoopbackHost,
  newCsrfToken,
  parseCookies,
  secretsEqual,
  sessionValue,
} from './security.js';

/** `createDashboard` / `dw dashboard`. */
export interface DashboardOptions {
  /** Where the data lives (DATABASE_URL, AMQP_URL, REDIS_URL, BULLMQ_PREFIX). */
  config: Config;
  /**
   * The app, for its work and retry queues and to plan replayed saga compensations.
   * @defaultValue undefined (only the queues that hold dead letters are shown)
   */
  app?: App;
  /**
   * The operators' secret (DW_DASHBOARD_TOKEN): a bearer token or the login form's password.
   * Without it, only requests whose Host is this machine (localhost, 127.x, ::1) are served.
   * @defaultValue undefined
   */
  token?: string;
  /**
   * Who the audit records for a token holder; `local` is recorded without a token.
   * @defaultValue 'operator'
   */
  tokenUser?: string;
  /**
   * Where the dashboard is mounted in the server: `''` at the root, `/dw` under /dw/.
   * @defaultValue ''
   */
  basePath?: string;
  /**
   * The workers' deduplication window: older entries get a warning in the replay preview.
   * @defaultValue workerDefaults.dedupWindowMs (7 days)
   */
  dedupWindowMs?: number;
  /**
   * A running or compensating saga untouched this long is shown as stuck.
   * @defaultValue 60000 (the saga sweep's staleness)
   */
  stuckAfterMs?: number;
  /**
   * A pool to use (not closed by `close`).
   * @defaultValue a pool of 4 on config.databaseUrl
   */
  knex?: Knex;
  /** @defaultValue silentLogger */
  logger?: Logger;
}

export interface Dashboard {
  /** A fastify plugin to register in your own fastify server (`{ prefix }` = basePath). */
  plugin: FastifyPluginAsync;
  /** A plain Node handler for `http.createServer` or an Express/Connect mount at basePath. */
  handler: (req: IncomingMessage, res: ServerResponse) => void;
  /** The dashboard's own fastify instance (what `handler` routes into; `dw dashboard` listens on it). */
  server: FastifyInstance;
  /** Closes the server and every connection the dashboard opened. */
  close(): Promise<void>;
}

/** At most this many dead letters per replay or purge; the preview says when more match. */
export const maxBatch = 1000;
const previewTtlMs = 10 * 60_000;

function assetsDir(): URL {
  // From the sources (ops/dashboard/) or from the build (dist/ops/dashboard/): the assets stay in ops/.
  for (const candidate of ['./assets/', '../../../ops/dashboard/assets/']) {
    const url = new URL(candidate, import.meta.url);
    try {
      readFileSync(new URL('index.html', url));
      return url;
    } catch {
      // next candidate
    }
  }
  throw new Error('the dashboard assets (ops/dashboard/assets) are missing from the installation');
}

// ---------- input validation ----------

const noNul = (v: string) =>
  !v.includes('\u0000') && !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(v);
const text = (max: number) =>
  z.string().min(1).max(max).refine(noNul, 'must not hold NUL or lone surrogates');
const dateParam = z
  .string()
  .max(40)
  .refine(
    (v) => /^\d{4}-\d{2}-\d{2}/.test(v) && !Number.isNaN(Date.parse(v)) && Date.parse(v) > Date.UTC(1, 0, 1),
    {
      message: 'expected an ISO date like 2024-05-01T12:00Z',
    },
  )
  .transform((v) => new Date(v));
const idParam = z
  .string()
  .regex(/^\d{1,15}$/, 'expected a positive whole number')
  .transform(Number)
  .refine((n) => n >= 1, 'expected a positive whole number');
const intParam = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d{1,9}$/, 'expected a whole number')
    .transform(Number)
    .refine((n) => n >= min && n <= max, `expected ${min}..${max}`);
const page = { limit: intParam(1, 500).optional(), offset: intParam(0, 10_000_000).optional() };

const searchFields = {
  type: text(500).optional(),
  reason: z.enum(deadLetterReasons).optional(),
  queue: text(500).optional(),
  text: text(500).optional(),
  from: dateParam.optional(),
  to: dateParam.optional(),
  group: z
    .string()
    .regex(/^[0-9a-f]{32}$/, 'expected a group key')
    .optional(),
  sagaId: text(500).optional(),
};
const deadLetterQuery = z.object({ ...searchFields, ...page }).strict();
const searchBody = z.object(searchFields).strict();
const selection = z
  .object({
    ids: z.array(z.number().int().min(1).max(Number.MAX_SAFE_INTEGER)).min(1).max(maxBatch).optional(),
    filter: searchBody.optional(),
  })
  .strict()
  .refine((s) => s.ids !== undefined || s.filter !== undefined, 'give ids, a filter (or group), or both');
const replayBody = z.object({ selection, dryRun: z.boolean(), preview: z.uuid().optional() }).strict();
const purgeBody = z
  .object({
    selection,
    dryRun: z.boolean(),
    preview: z.uuid().optional(),
    confirm: z.string().max(100).optional(),
  })
  .strict();
const sagaQuery = z
  .object({
    name: text(500).optional(),
    status: z.enum(sagaStatuses as [SagaStatus, ...SagaStatus[]]).optional(),
    correlationId: text(500).optional(),
    minAgeS: intParam(0, 3_153_600_000).optional(),
    maxAgeS: intParam(0, 3_153_600_000).optional(),
    stuck: z.enum(['true', 'false']).optional(),
    ...page,
  })
  .strict();
const pageQuery = z.object(page).strict();
const idParams = z.object({ id: idParam }).strict();
const sagaParams = z.object({ id: text(500) }).strict();
const loginBody = z.object({ token: z.string().max(4096), csrf: z.string().max(200) }).strict();

class BadRequest extends Error {
  constructor(
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

function parse<T extends z.ZodType>(schema: T, value: unknown, what: string): z.output<T> {
  const result = schema.safeParse(value ?? {});
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue?.path.length ? issue.path.join('.') : what;
    throw new BadRequest(`invalid ${where}: ${issue?.message ?? 'not accepted'}`);
  }
  return result.data;
}

// ---------- JSON shapes ----------

function listItem(row: DeadLetterSearchRow) {
  const message = String(row.error?.message ?? '');
  return {
    id: Number(row.id),
    messageId: row.message_id,
    type: row.type,
    reason: row.reason,
    queue: row.queue,
    attempts: row.attempts,
    error: message.length > 300 ? `${message.slice(0, 299)}…` : message,
    firstFailedAt: row.first_failed_at.toISOString(),
    lastFailedAt: row.last_failed_at.toISOString(),
    group: row.group_key,
    ...(row.saga_id ? { sagaId: row.saga_id } : {}),
  };
}

function summarize(results: ReplayResult[]) {
  const ids = (pred: (r: ReplayResult) => boolean) => results.filter(pred).map((r) => r.id);
  return {
    wouldReplay: ids((r) => r.outcome === 'would-replay').length,
    replayed: ids((r) => r.outcome === 'replayed').length,
    alreadyProcessed: ids((r) => r.outcome === 'already-processed'),
    notReplayable: ids((r) => r.outcome === 'not-replayable'),
    notFound: ids((r) => r.outcome === 'not-found'),
    beyondDedupWindow: ids((r) => Boolean(r.beyondDedupWindow)),
  };
}

interface Preview {
  kind: 'replay' | 'purge';
  actor: string;
  ids: number[];
  selection: unknown;
  result: unknown;
  confirm?: string;
  expires: number;
}

// ---------- the dashboard ----------

export async function createDashboard(options: DashboardOptions): Promise<Dashboard> {
  const { config } = options;
  const basePath = (options.basePath ?? '').replace(/\/+$/, '');
  if (basePath && !/^(\/[A-Za-z0-9._~-]+)+$/.test(basePath)) {
    throw new UsageError(
      `basePath must look like /dw (letters, digits, ._~-), got ${JSON.stringify(basePath)}`,
    );
  }
  const token = options.token || undefined;
  const tokenUser = options.tokenUser ?? 'operator';
  const dedupWindowMs = options.dedupWindowMs ?? workerDefaults.dedupWindowMs;
  const stuckAfterMs = options.stuckAfterMs ?? 60_000;
  const log = options.logger ?? silentLogger;
  const knex =
    options.knex ?? createKnex(config.databaseUrl, { poolMax: 4, applicationName: 'dw-dashboard' });
  const cookiePath = basePath || '/';
  const assets = assetsDir();
  const indexHtml = readFileSync(new URL('index.html', assets), 'utf8').replace(
    '<base href="/">',
    `<base href="${basePath}/">`,
  );
  const appJs = readFileSync(new URL('app.js', assets), 'utf8');
  const styleCss = readFileSync(new URL('style.css', assets), 'utf8');
  const session = token ? sessionValue(token) : undefined;
  const previews = new Map<string, Preview>();

  // RabbitMQ: one connection, opened when first needed, dropped when it fails (the next use reopens).
  let connection: Promise<ChannelModel> | undefined;
  let confirmChannel: Promise<ConfirmChannel> | undefined;
  const rabbit = () => {
    connection ??= amqp
      .connect(config.amqpUrl, { clientProperties: { connection_name: 'dw dashboard' } })
      .then((c) => {
        c.on('error', () => {});
        c.on('close', () => {
          connection = undefined;
          confirmChannel = undefined;
        });
        return c;
      })
      .catch((error: unknown) => {
        connection = undefined;
        throw new ServiceUnavailableError('RabbitMQ', redactUrl(config.amqpUrl), error);
      });
    return connection;
  };
  const channel = () => {
    confirmChannel ??= rabbit().then(async (c) => {
      const ch = await c.createConfirmChannel();
      ch.on('error', () => {});
      ch.on('close', () => {
        confirmChannel = undefined;
      });
      return ch;
    });
    return confirmChannel;
  };

  // bull-board: read-only, over the saga queue and the queues the outbox has sent to.
  const redis = createRedis(config, { lazy: true, bullmqPrefix: config.bullmqPrefix });
  redis.on('error', () => {});
  const bullQueues = new Map<string, Queue>();
  const boardAdapter = new FastifyAdapter();
  boardAdapter.setBasePath(`${basePath}/queues`);
  // @bull-board/fastify carries its own copy of @bull-board/api (9.10.1 beside our 9.10.2): same shape.
  const board = createBullBoard({
    queues: [],
    serverAdapter: boardAdapter as unknown as Parameters<typeof createBullBoard>[0]['serverAdapter'],
  });
  const refreshBoard = async (names: string[]) => {
    let added = false;
    for (const name of names) {
      if (bullQueues.has(name)) continue;
      bullQueues.set(name, new Queue(name, { connection: redis, prefix: config.bullmqPrefix }));
      added = true;
    }
    if (added) {
      board.replaceQueues([...bullQueues.values()].map((q) => new BullMQAdapter(q, { readOnlyMode: true })));
    }
  };
  await refreshBoard([sagaQueue, ...(await bullmqDestinations(knex).catch(() => []))]);

  const actorOf = (req: FastifyRequest) => (token ? `${tokenUser} (${req.ip})` : `local (${req.ip})`);

  function authorized(req: FastifyRequest): boolean {
    if (!token || !session) return true;
    const header = req.headers.authorization;
    const bearer = typeof header === 'string' ? /^Bearer (.+)$/i.exec(header)?.[1] : undefined;
    if (bearer !== undefined && secretsEqual(bearer, token)) return true;
    const sessionCookie = parseCookies(req.headers.cookie).dw_session;
    return sessionCookie !== undefined && secretsEqual(sessionCookie, session);
  }

  function csrfOk(req: FastifyRequest, sent: unknown): boolean {
    const expected = parseCookies(req.headers.cookie).dw_csrf;
    return (
      typeof sent === 'string' && sent.length > 0 && expected !== undefined && secretsEqual(sent, expected)
    );
  }

  function ensureCsrf(req: FastifyRequest, reply: FastifyReply): string {
    const existing = parseCookies(req.headers.cookie).dw_csrf;
    if (existing && /^[0-9a-f]{64}$/.test(existing)) return existing;
    const fresh = newCsrfToken();
    reply.header('set-cookie', cookie('dw_csrf', fresh, cookiePath, req.protocol === 'https'));
    return fresh;
  }

  function loginPage(csrf: string, failed: boolean): string {
    // Nothing here comes from the request but the CSRF token, which is hex we generated.
    return `<!doctype html><html lang="en"><head><meta charset="utf-8"><base href="${basePath}/"><title>durable-worker dashboard: log in</title><link rel="stylesheet" href="assets/style.css"></head><body class="login"><form method="post" action="login"><h1>durable-worker</h1><p>Enter the dashboard token (DW_DASHBOARD_TOKEN).</p>${failed ? '<p class="error">Wrong token.</p>' : ''}<input type="hidden" name="csrf" value="${csrf}"><input type="password" name="token" autocomplete="current-password" aria-label="token" autofocus required><button type="submit">Log in</button></form></body></html>`;
  }

  const plugin: FastifyPluginAsync = async (app) => {
    app.addContentTypeParser(
      'application/x-www-form-urlencoded',
      { parseAs: 'string' },
      (_req, body, done) => {
        done(null, Object.fromEntries(new URLSearchParams(body as string)));
      },
    );

    app.setErrorHandler((error, req, reply) => {
      if (error instanceof BadRequest) return reply.code(error.status).send({ error: error.message });
      const status = (error as { statusCode?: number }).statusCode;
      if (status && status >= 400 && status < 500) {
        // fastify's own (unparseable JSON, body too large, wrong content type): its message, no stack
        return reply.code(status).send({ error: String((error as Error).message).slice(0, 200) });
      }
      if (error instanceof ServiceUnavailableError) return reply.code(503).send({ error: error.message });
      log.error({ err: error, url: req.url }, 'dashboard request failed');
      const known =
        error instanceof DurableWorkerError ? error.message : 'internal error (see the dashboard log)';
      return reply.code(500).send({ error: known });
    });
    app.setNotFoundHandler((_req, reply) => reply.code(404).send({ error: 'not found' }));

    app.addHook('onRequest', async (req, reply) => {
      const route = req.routeOptions.url ?? '';
      const path = req.url.split('?')[0] ?? '';
      const inBoard = path === `${basePath}/queues` || path.startsWith(`${basePath}/queues/`);
      reply.header('x-content-type-options', 'nosniff');
      reply.header('referrer-policy', 'no-referrer');
      reply.header('x-frame-options', 'DENY');
      reply.header('cache-control', 'no-store');
      if (!inBoard) reply.header('content-security-policy', contentSecurityPolicy);
      if (!token) {
        // Without a token only this machine may talk to us; a foreign Host is DNS rebinding.
        const host = (req.headers.host ?? '').replace(/:\d+$/, '');
        if (!isLoopbackHost(host)) {
          return reply
            .code(403)
            .send({ error: 'without DW_DASHBOARD_TOKEN the dashboard answers localhost only' });
        }
      }
      const isPublic = route === `${basePath}/login` || route.startsWith(`${basePath}/assets/`);
      if (!isPublic && !authorized(req)) {
        if (req.method === 'GET' && (route === basePath || route === `${basePath}/`)) {
          return reply.redirect(`${basePath}/login`, 303);
        }
        return reply.code(401).send({
          error:
            'authentication required: send Authorization: Bearer <DW_DASHBOARD_TOKEN>, or log in at /login',
        });
      }
      if (!['GET', 'HEAD', 'OPTIONS'].includes(req.method)) {
        if (inBoard) return reply.code(403).send({ error: 'the queue board is read-only' });
        // The login form carries its CSRF token in the body (checked there); everything else in a header.
        if (route !== `${basePath}/login` && !csrfOk(req, req.headers['x-csrf-token'])) {
          return reply.code(403).send({
            error: 'missing or wrong CSRF token: read it from GET api/session and send it as X-CSRF-Token',
          });
        }
      }
    });

    await app.register(boardAdapter.registerPlugin(), { prefix: '/queues' });

    // ---------- pages ----------
    app.get('/', async (req, reply) => {
      ensureCsrf(req, reply);
      return reply.type('text/html; charset=utf-8').send(indexHtml);
    });
    app.get('/assets/app.js', async (_req, reply) =>
      reply.type('text/javascript; charset=utf-8').send(appJs),
    );
    app.get('/assets/style.css', async (_req, reply) => reply.type('text/css; charset=utf-8').send(styleCss));
    app.get('/login', async (req, reply) => {
      if (!token) return reply.redirect(`${basePath}/`, 303);
      return reply.type('text/html; charset=utf-8').send(loginPage(ensureCsrf(req, reply), false));
    });
    app.post('/login', async (req, reply) => {
      if (!token || !session) return reply.redirect(`${basePath}/`, 303);
      const body = parse(loginBody, req.body, 'login form');
      if (!csrfOk(req, body.csrf)) {
        throw new BadRequest('missing or wrong CSRF token: reload the login page', 403);
      }
      if (!secretsEqual(body.token, token)) {
        return reply
          .code(401)
          .type('text/html; charset=utf-8')
          .send(loginPage(ensureCsrf(req, reply), true));
      }
      reply.header(
        'set-cookie',
        cookie('dw_session', session, cookiePath, req.protocol === 'https', 12 * 3600),
      );
      return reply.redirect(`${basePath}/`, 303);
    });
    app.post('/api/logout', async (req, reply) => {
      reply.header('set-cookie', cookie('dw_session', '', cookiePath, req.protocol === 'https', 0));
      return { ok: true };
    });

    // ---------- API ----------
    app.get('/api/session', async (req, reply) => ({
      csrf: ensureCsrf(req, reply),
      actor: actorOf(req),
      auth: token ? 'token' : 'local',
      reasons: deadLetterReasons,
      sagaStatuses,
      dedupWindowMs,
      stuckAfterMs,
      maxBatch,
    }));

    app.get('/api/overview', async () => {
      const errors: string[] = [];
      const safely = async <T>(what: string, fn: () => Promise<T>): Promise<T | null> => {
        try {
          return await fn();
        } catch (error) {
          errors.push(`${what}: ${error instanceof DurableWorkerError ? error.message : 'unavailable'}`);
          log.warn({ err: error }, `dashboard overview: ${what}`);
          return null;
        }
      };
      const [outbox, lag, deadLetters, sagas, stuck, processes, dlqQueues, bullNames] = await Promise.all([
        safely('outbox', () => outboxStatus(knex)),
        safely('relay lag', () => relayLag(knex)),
        safely('dead letters', () => deadLetterStatus(knex)),
        safely('sagas', () => sagaCountsByStatus(knex)),
        safely(
          'stuck sagas',
          async () =>
            (await searchSagas(knex, { stuckOnly: true }, { limit: 1, offset: 0, stuckAfterMs })).total,
        ),
        safely('processes', () => listProcesses(knex, 3_600_000)),
        safely('queues', () => deadLetterQueues(knex)),
        safely('queues', () => bullmqDestinations(knex)),
      ]);
      const workQueues = options.app
        ? appQueueNames(options.app, workQueueName(config.exchange, options.app.name))
        : [];
      const rabbitNames = [...new Set([...workQueues, ...(dlqQueues ?? [])])];
      const bullList = [...new Set([sagaQueue, ...(bullNames ?? [])])];
      await refreshBoard(bullList);
      const [rabbitmq, bullmq] = await Promise.all([
        safely('RabbitMQ', async () => rabbitQueueStatus(await rabbit(), rabbitNames)),
        safely('Redis', () => bullQueueStatus(config, config.bullmqPrefix, bullList)),
      ]);
      return {
        generatedAt: new Date().toISOString(),
        outbox,
        relayLag: lag,
        deadLetters,
        sagas,
        stuckSagas: stuck,
        processes: processes?.map((p) => ({
          id: p.id,
          kind: p.kind,
          host: p.host,
          pid: p.pid,
          version: p.version,
          startedAt: p.started_at.toISOString(),
          lastSeenAt: p.last_seen_at.toISOString(),
          alive: p.alive,
        })),
        queues: { rabbitmq, bullmq },
        errors,
      };
    });

    app.get('/api/dead-letters', async (req) => {
      const { limit = 50, offset = 0, ...search } = parse(deadLetterQuery, req.query, 'query');
      const { rows, total } = await searchDeadLetters(knex, search, { limit, offset });
      return { total, limit, offset, items: rows.map(listItem) };
    });

    app.get('/api/dead-letters/groups', async (req) => {
      const { limit = 50, offset = 0, ...search } = parse(deadLetterQuery, req.query, 'query');
      const { groups, total } = await deadLetterGroups(knex, search, { limit, offset });
      return {
        total,
        limit,
        offset,
        groups: groups.map((g) => ({
          ...g,
          firstSeen: g.firstSeen.toISOString(),
          lastSeen: g.lastSeen.toISOString(),
        })),
      };
    });

    app.get('/api/dead-letters/:id', async (req) => {
      const { id } = parse(idParams, req.params, 'id');
      const row = await getDeadLetter(knex, id);
      if (!row) throw new BadRequest(`no dead letter with id ${id}`, 404);
      const [{ rows }, history] = await Promise.all([
        searchDeadLetters(knex, { ids: [id] }, { limit: 1, offset: 0 }),
        auditForMessage(knex, row.message_id, 50),
      ]);
      return {
        ...deadLetterToJson(row, { stack: true }),
        properties: row.properties ?? {},
        group: rows[0]?.group_key,
        bodyBytes: row.body?.length ?? null,
        history: history.map((h) => ({ ...h, at: h.at.toISOString() })),
      };
    });

    const resolveIds = async (sel: z.output<typeof selection>) => {
      const search: DeadLetterSearch = { ...sel.filter, ...(sel.ids ? { ids: sel.ids } : {}) };
      const [ids, total] = await Promise.all([
        deadLetterIdsMatching(knex, search, maxBatch),
        countDeadLettersMatching(knex, search),
      ]);
      return { ids, total };
    };
    const rememberPreview = (preview: Omit<Preview, 'expires'>): string => {
      const now = Date.now();
      for (const [key, p] of previews) if (p.expires < now) previews.delete(key);
      if (previews.size >= 200) previews.delete(previews.keys().next().value as string);
      const id = randomUUID();
      previews.set(id, { ...preview, expires: now + previewTtlMs });
      return id;
    };
    const takePreview = (id: string | undefined, kind: Preview['kind'], actor: string): Preview => {
      const preview = id ? previews.get(id) : undefined;
      if (!preview || preview.kind !== kind || preview.actor !== actor || preview.expires < Date.now()) {
        throw new BadRequest(
          `a ${kind} needs its dry run first: send dryRun: true, then the same request with dryRun: false and the returned preview id (valid 10 minutes)`,
          409,
        );
      }
      return preview;
    };

    app.post('/api/dead-letters/replay', async (req) => {
      const body = parse(replayBody, req.body, 'body');
      const actor = actorOf(req);
      const sagaDefinition = async (name: string) => options.app?.sagas.get(name);
      if (body.dryRun) {
        const { ids, total } = await resolveIds(body.selection);
        const results: ReplayResult[] = [];
        for (const id of ids) {
          results.push(
            await replayDeadLetter(knex, channel, id, { dryRun: true, dedupWindowMs, sagaDefinition }),
          );
        }
        const result = { matching: total, considered: ids.length, ...summarize(results), results };
        const preview = rememberPreview({ kind: 'replay', actor, ids, selection: body.selection, result });
        return { preview, dryRun: true, ...result };
      }
      const preview = takePreview(body.preview, 'replay', actor);
      previews.delete(body.preview as string);
      const results: ReplayResult[] = [];
      for (const id of preview.ids) {
        results.push(
          await replayDeadLetter(knex, channel, id, { dryRun: false, dedupWindowMs, sagaDefinition }),
        );
      }
      const result = { ...summarize(results), results };
      const auditId = await insertAudit(knex, {
        actor,
        action: 'replay',
        selection: preview.selection,
        entries: results.map((r) => ({ id: r.id, messageId: r.messageId, outcome: r.outcome })),
        preview: preview.result,
        result: summarize(results),
      });
      return { audit: auditId, dryRun: false, ...result };
    });

    app.post('/api/dead-letters/purge', async (req) => {
      const body = parse(purgeBody, req.body, 'body');
      const actor = actorOf(req);
      if (body.dryRun) {
        const { ids, total } = await resolveIds(body.selection);
        const confirm = `purge ${ids.length}`;
        const result = { matching: total, wouldPurge: ids.length, ids, confirm };
        const preview = rememberPreview({
          kind: 'purge',
          actor,
          ids,
          selection: body.selection,
          result,
          confirm,
        });
        return { preview, dryRun: true, ...result };
      }
      const preview = takePreview(body.preview, 'purge', actor);
      if (body.confirm !== preview.confirm) {
        throw new BadRequest(`type "${preview.confirm}" to confirm the purge`);
      }
      previews.delete(body.preview as string);
      const rows = await knex('dw_dead_letters').whereIn('id', preview.ids).select('id', 'message_id');
      const purged = await deleteDeadLetters(knex, { ids: preview.ids });
      const auditId = await insertAudit(knex, {
        actor,
        action: 'purge',
        selection: preview.selection,
        entries: rows.map((r: { id: string | number; message_id: string }) => ({
          id: Number(r.id),
          messageId: r.message_id,
          outcome: 'purged',
        })),
        preview: preview.result,
        result: { purged },
      });
      return { audit: auditId, dryRun: false, purged };
    });

    app.get('/api/audit', async (req) => {
      const { limit = 50, offset = 0 } = parse(pageQuery, req.query, 'query');
      const { rows, total } = await listAudit(knex, { limit, offset });
      return { total, limit, offset, items: rows.map((r) => ({ ...r, at: r.at.toISOString() })) };
    });

    app.get('/api/sagas', async (req) => {
      const {
        limit = 50,
        offset = 0,
        minAgeS,
        maxAgeS,
        stuck,
        ...rest
      } = parse(sagaQuery, req.query, 'query');
      const { rows, total } = await searchSagas(
        knex,
        {
          ...rest,
          ...(minAgeS !== undefined ? { minAgeMs: minAgeS * 1000 } : {}),
          ...(maxAgeS !== undefined ? { maxAgeMs: maxAgeS * 1000 } : {}),
          stuckOnly: stuck === 'true',
        },
        { limit, offset, stuckAfterMs },
      );
      return { total, limit, offset, items: rows.map((r) => ({ ...sagaView(r), stuck: r.stuck })) };
    });

    app.get('/api/sagas/:id', async (req) => {
      const { id } = parse(sagaParams, req.params, 'id');
      const row = await getSaga(knex, id);
      if (!row) throw new BadRequest('no saga with this id', 404);
      const view = sagaView(row, await listStepRows(knex, id));
      const { rows } = await searchDeadLetters(knex, { sagaId: id }, { limit: 100, offset: 0 });
      const stuck =
        (row.status === 'running' || row.status === 'compensating') &&
        Date.now() - row.updated_at.getTime() > stuckAfterMs;
      return { ...view, stuck, timeline: formatTimeline(view), deadLetters: rows.map(listItem) };
    });
  };

  const server = Fastify({ logger: false, bodyLimit: 1024 * 1024, return503OnClosing: true });
  await server.register(plugin, { prefix: basePath });
  await server.ready();

  let closing: Promise<void> | undefined;
  return {
    plugin,
    server,
    handler: (req, res) => server.routing(req, res),
    close() {
      closing ??= (async () => {
        await server.close();
        for (const queue of bullQueues.values()) await queue.close().catch(() => {});
        redis.disconnect();
        const c = await connection?.catch(() => undefined);
        await c?.close().catch(() => {});
        if (!options.knex) await knex.destroy();
      })();
      return closing;
    },
  };
}

/** `dw dashboard`: refuses a non-loopback host without a token, then listens. */
export async function startDashboard(
  options: DashboardOptions & { host: string; port: number },
): Promise<Dashboard & { url: string }> {
  if (!isLoopbackHost(options.host) && !options.token) {
    throw new UsageError(
      `refusing to serve the dashboard on ${options.host} without DW_DASHBOARD_TOKEN: it can replay and purge dead letters; set the token or bind 127.0.0.1`,
    );
  }
  const dashboard = await createDashboard(options);
  try {
    const address = await dashboard.server.listen({ host: options.host, port: options.port });
    return { ...dashboard, url: `${address}${options.basePath ?? ''}/` };
  } catch (error) {
    await dashboard.close();
    const code = (error as { code?: string }).code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
      throw new UsageError(
        `cannot listen on ${options.host}:${options.port} (${code}); choose another --port or --host`,
      );
    }
    throw error;
  }
}
