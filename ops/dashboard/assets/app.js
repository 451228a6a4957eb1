// The dashboard's page script. Everything shown comes from the API and may be hostile (a dead
// letter's payload is whatever someone published): it is only ever set as textContent or as an
// attribute value, never parsed as HTML.

let session = null;
let timer = null;

/** el('td', { class: 'x', 'data-testid': 'y' }, 'text', child) */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An in-page link: only our own hash routes, built from encoded parts. */
function link(hash, ...children) {
  return el('a', { href: hash }, ...children);
}

function toast(message) {
  const box = document.getElementById('toast');
  box.textContent = message;
  box.className = 'show';
  setTimeout(() => {
    box.className = '';
  }, 4000);
}

async function api(path, body) {
  const init =
    body === undefined
      ? { headers: { accept: 'application/json' } }
      : {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-csrf-token': session?.csrf ?? '' },
          body: JSON.stringify(body),
        };
  const response = await fetch(path, { credentials: 'same-origin', ...init });
  if (response.status === 401) {
    location.href = 'login';
    throw new Error('not logged in');
  }
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error ?? `HTTP ${response.status}`);
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

function parseHash() {
  const hash = location.hash.replace(/^#/, '') || '/overview';
  const [path, search = ''] = hash.split('?');
  return {
    parts: path.split('/').filter(Boolean).map(decodeURIComponent),
    params: Object.fromEntries(new URLSearchParams(search)),
  };
}

const time = (iso) => (iso ? new Date(iso).toLocaleString() : '-');
const ago = (iso) => {
  if (!iso) return '-';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${s}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
};
const badge = (text, cls = text) => el('span', { class: `badge ${cls}` }, text);
const json = (value) => (typeof value === 'string' ? value : JSON.stringify(value, null, 2));

function errorBox(error) {
  return el('div', { class: 'error-box', 'data-testid': 'error' }, error.message ?? String(error));
}

function render(...nodes) {
  document.getElementById('main').replaceChildren(...nodes);
}

function table(headers, rows, attrs = {}) {
  return el(
    'table',
    attrs,
    el(
      'thead',
      {},
      el(
        'tr',
        {},
        headers.map((h) => el('th', {}, h)),
      ),
    ),
    el('tbody', {}, rows),
  );
}

function pager(total, limit, offset, go) {
  const page = Math.floor(offset / limit) + 1;
  const pages = Math.max(1, Math.ceil(total / limit));
  return el(
    'div',
    { class: 'pager' },
    el(
      'button',
      { class: 'secondary', disabled: offset === 0, onclick: () => go(Math.max(0, offset - limit)) },
      '‹ Prev',
    ),
    el('span', { 'data-testid': 'page' }, `page ${page} of ${pages} (${total} in all)`),
    el(
      'button',
      { class: 'secondary', disabled: offset + limit >= total, onclick: () => go(offset + limit) },
      'Next ›',
    ),
  );
}

// ---------- overview ----------

async function overview() {
  const draw = async () => {
    let o;
    try {
      o = await api('api/overview');
    } catch (error) {
      render(el('h2', {}, 'Overview'), errorBox(error));
      return;
    }
    const card = (title, testid, ...body) =>
      el('div', { class: 'card', 'data-testid': testid }, el('h3', {}, title), ...body);
    const outbox = o.outbox;
    const lag = o.relayLag;
    const processes = o.processes ?? [];
    render(
      el(
        'h2',
        {},
        'Overview ',
        el('span', { class: 'muted' }, `updated ${new Date(o.generatedAt).toLocaleTimeString()}`),
      ),
      o.errors.length ? el('div', { class: 'error-box' }, o.errors.join('; ')) : '',
      el(
        'div',
        { class: 'cards' },
        card(
          'Outbox',
          'outbox',
          el('div', { class: 'big' }, outbox ? `${outbox.pending} pending` : '?'),
          el(
            'div',
            { class: 'muted' },
            outbox ? `oldest ${outbox.oldestPendingAgeSeconds ?? '-'} s, ${outbox.failing} failing` : '',
          ),
        ),
        card(
          'Relay lag (5 min)',
          'relay-lag',
          el('div', { class: 'big' }, lag?.avgMs == null ? '-' : `${lag.avgMs} ms`),
          el(
            'div',
            { class: 'muted' },
            lag ? `max ${lag.maxMs ?? '-'} ms over ${lag.delivered} delivered` : '',
          ),
        ),
        card(
          'Dead letters',
          'dead-letters',
          el('div', { class: 'big' }, link('#/dead-letters', String(o.deadLetters?.total ?? '?'))),
          el(
            'ul',
            {},
            Object.entries(o.deadLetters?.byReason ?? {}).map(([reason, n]) =>
              el('li', {}, link(`#/dead-letters${query({ reason })}`, reason), `: ${n}`),
            ),
          ),
        ),
        card(
          'Sagas',
          'sagas',
          el(
            'ul',
            {},
            Object.entries(o.sagas ?? {}).map(([status, n]) =>
              el('li', {}, link(`#/sagas${query({ status })}`, status), `: ${n}`),
            ),
          ),
          o.stuckSagas
            ? el('div', {}, link('#/sagas?stuck=true', badge(`${o.stuckSagas} stuck`, 'stuck')))
            : el('div', { class: 'muted' }, 'none stuck'),
        ),
      ),
      el('h3', {}, 'Workers and relays'),
      processes.length
        ? table(
            ['kind', 'host', 'pid', 'version', 'started', 'last seen', ''],
            processes.map((p) =>
              el(
                'tr',
                { 'data-testid': 'process' },
                el('td', {}, p.kind),
                el('td', {}, p.host),
                el('td', {}, String(p.pid)),
                el('td', {}, p.version),
                el('td', {}, time(p.startedAt)),
                el('td', {}, ago(p.lastSeenAt)),
                el('td', {}, p.alive ? badge('alive') : badge('gone')),
              ),
            ),
          )
        : el('p', { class: 'muted' }, 'No worker or relay has reported in the last hour.'),
      el('h3', {}, 'RabbitMQ queues'),
      table(
        ['queue', 'ready', 'consumers'],
        (o.queues.rabbitmq ?? []).map((q) =>
          el(
            'tr',
            {},
            el('td', {}, q.name),
            el('td', {}, q.exists ? String(q.messages) : '(absent)'),
            el('td', {}, String(q.consumers)),
          ),
        ),
        { 'data-testid': 'rabbit-queues' },
      ),
      el('h3', {}, 'BullMQ queues ', link('queues/', '(board)')),
      table(
        ['queue', 'waiting', 'active', 'delayed', 'failed'],
        (o.queues.bullmq ?? []).map((q) =>
          el(
            'tr',
            {},
            el('td', {}, q.name),
            el('td', {}, String(q.waiting)),
            el('td', {}, String(q.active)),
            el('td', {}, String(q.delayed)),
            el('td', {}, String(q.failed)),
          ),
        ),
      ),
    );
  };
  await draw();
  timer = setInterval(draw, 3000);
}

// ---------- dead letters ----------

const filterKeys = ['type', 'reason', 'queue', 'text', 'from', 'to', 'group', 'sagaId'];

function filterOf(params) {
  const filter = {};
  for (const key of filterKeys) if (params[key]) filter[key] = params[key];
  return filter;
}

function localOf(iso) {
  if (!iso || Number.isNaN(Date.parse(iso))) return '';
  const d = new Date(iso);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
}

function isoOf(local) {
  // <input type=datetime-local> gives local time without a zone
  return local ? new Date(local).toISOString() : '';
}

async function deadLetters(params) {
  const view = params.view ?? (params.group ? 'list' : 'groups');
  const limit = 50;
  const offset = Number(params.offset ?? 0);
  const filter = filterOf(params);
  const go = (changes) => {
    location.hash = `#/dead-letters${query({ ...params, ...changes })}`;
  };
  const input = (name, label, attrs = {}) =>
    el('label', {}, label, el('input', { name, value: params[name] ?? '', ...attrs }));
  const form = el(
    'form',
    {
      class: 'filters',
      'data-testid': 'dl-filters',
      onsubmit: (event) => {
        event.preventDefault();
        const data = new FormData(event.target);
        const next = { view };
        for (const [k, v] of data.entries()) if (v) next[k] = k === 'from' || k === 'to' ? isoOf(v) : v;
        if (params.group) next.group = params.group;
        location.hash = `#/dead-letters${query(next)}`;
      },
    },
    input('type', 'type'),
    el(
      'label',
      {},
      'reason',
      el(
        'select',
        { name: 'reason' },
        el('option', { value: '' }, 'any'),
        session.reasons.map((r) => el('option', { value: r, selected: params.reason === r }, r)),
      ),
    ),
    input('queue', 'queue'),
    input('text', 'text in the error'),
    el(
      'label',
      {},
      'failed from',
      el('input', { name: 'from', type: 'datetime-local', value: localOf(params.from) }),
    ),
    el('label', {}, 'to', el('input', { name: 'to', type: 'datetime-local', value: localOf(params.to) })),
    el('button', { type: 'submit', 'data-testid': 'dl-apply' }, 'Filter'),
    el(
      'button',
      { type: 'button', class: 'secondary', onclick: () => (location.hash = '#/dead-letters') },
      'Clear',
    ),
  );
  const tabs = el(
    'div',
    { class: 'actions' },
    el(
      'button',
      {
        class: view === 'groups' ? '' : 'secondary',
        'data-testid': 'view-groups',
        onclick: () => go({ view: 'groups', offset: 0, group: undefined }),
      },
      'Groups',
    ),
    el(
      'button',
      {
        class: view === 'list' ? '' : 'secondary',
        'data-testid': 'view-list',
        onclick: () => go({ view: 'list', offset: 0 }),
      },
      'List',
    ),
    params.group
      ? el(
          'span',
          {},
          'group ',
          el('code', {}, params.group.slice(0, 8)),
          ' ',
          link(`#/dead-letters${query({ ...params, group: undefined, view: 'groups' })}`, '(all groups)'),
        )
      : '',
    Object.keys(filter).length
      ? el(
          'span',
          { class: 'muted' },
          `filters: ${Object.entries(filter)
            .map(([k, v]) => `${k}=${v}`)
            .join(', ')}`,
        )
      : '',
  );
  const panel = el('div', { 'data-testid': 'action-panel' });
  render(el('h2', {}, 'Dead letters'), form, tabs, panel, el('p', {}, 'Loading…'));
  try {
    if (view === 'groups') {
      const data = await api(`api/dead-letters/groups${query({ ...filter, limit, offset })}`);
      render(
        el('h2', {}, 'Dead letters'),
        form,
        tabs,
        panel,
        table(
          ['count', 'type', 'reason', 'error (normalised)', 'first seen', 'last seen', ''],
          data.groups.map((g) =>
            el(
              'tr',
              { 'data-testid': 'group-row' },
              el('td', { class: 'big' }, String(g.count)),
              el('td', {}, g.type ?? '-'),
              el('td', {}, badge(g.reason)),
              el('td', { class: 'err' }, g.message, el('div', { class: 'muted' }, `e.g. ${g.sample}`)),
              el('td', {}, time(g.firstSeen)),
              el('td', {}, time(g.lastSeen)),
              el(
                'td',
                {},
                link(
                  `#/dead-letters${query({ ...filter, group: g.key, view: 'list' })}`,
                  el('span', { 'data-testid': 'open-group' }, 'open'),
                ),
                ' ',
                el(
                  'button',
                  {
                    'data-testid': 'replay-group',
                    onclick: () =>
                      startReplay(panel, { filter: { ...filter, group: g.key } }, `group of ${g.count}`),
                  },
                  'Replay group',
                ),
              ),
            ),
          ),
          { 'data-testid': 'groups' },
        ),
        pager(data.total, limit, offset, (o) => go({ offset: o })),
      );
      return;
    }
    const data = await api(`api/dead-letters${query({ ...filter, limit, offset })}`);
    const selected = new Set();
    const selectionActions = el(
      'div',
      { class: 'actions' },
      el(
        'button',
        {
          'data-testid': 'replay-selected',
          onclick: () =>
            selected.size && startReplay(panel, { ids: [...selected] }, `${selected.size} selected`),
        },
        'Replay selected',
      ),
      el(
        'button',
        {
          'data-testid': 'replay-all',
          onclick: () => startReplay(panel, { filter }, `all ${data.total} matching`),
        },
        `Replay all matching (${data.total})`,
      ),
      el(
        'button',
        {
          class: 'danger',
          'data-testid': 'purge-selected',
          onclick: () => selected.size && startPurge(panel, { ids: [...selected] }),
        },
        'Purge selected…',
      ),
      el(
        'button',
        { class: 'danger', 'data-testid': 'purge-all', onclick: () => startPurge(panel, { filter }) },
        'Purge all matching…',
      ),
    );
    render(
      el('h2', {}, 'Dead letters'),
      form,
      tabs,
      selectionActions,
      panel,
      table(
        ['', 'id', 'last failed', 'type', 'reason', 'queue', 'attempts', 'error'],
        data.items.map((d) =>
          el(
            'tr',
            { 'data-testid': 'dl-row' },
            el(
              'td',
              {},
              el('input', {
                type: 'checkbox',
                'aria-label': `select ${d.id}`,
                onchange: (e) => (e.target.checked ? selected.add(d.id) : selected.delete(d.id)),
              }),
            ),
            el('td', {}, link(`#/dead-letters/${d.id}`, String(d.id))),
            el('td', {}, time(d.lastFailedAt)),
            el('td', {}, d.type ?? '-'),
            el('td', {}, badge(d.reason)),
            el('td', {}, d.queue),
            el('td', {}, String(d.attempts)),
            el('td', { class: 'err' }, d.error),
          ),
        ),
        { 'data-testid': 'dl-list' },
      ),
      pager(data.total, limit, offset, (o) => go({ offset: o })),
    );
  } catch (error) {
    render(el('h2', {}, 'Dead letters'), form, tabs, errorBox(error));
  }
}

/** Replay: a dry run first, always; the real replay replays exactly what the preview listed. */
async function startReplay(panel, selection, what, after) {
  panel.replaceChildren(el('div', { class: 'panel' }, `Dry run for ${what}…`));
  let preview;
  try {
    preview = await api('api/dead-letters/replay', { selection, dryRun: true });
  } catch (error) {
    panel.replaceChildren(errorBox(error));
    return;
  }
  const list = (label, ids) =>
    ids.length
      ? el(
          'li',
          {},
          `${label}: ${ids.length} (ids ${ids.slice(0, 20).join(', ')}${ids.length > 20 ? ', …' : ''})`,
        )
      : '';
  const go = preview.wouldReplay;
  panel.replaceChildren(
    el(
      'div',
      { class: 'panel', 'data-testid': 'replay-preview' },
      el('strong', { 'data-testid': 'would-replay' }, `Dry run: ${go} would be replayed`),
      preview.matching > preview.considered
        ? el(
            'div',
            { class: 'error' },
            `${preview.matching} match; this replays the oldest ${preview.considered}, repeat for the rest.`,
          )
        : '',
      el(
        'ul',
        {},
        list('already processed (inbox holds the id; skipped)', preview.alreadyProcessed),
        list('older than the dedup window (a duplicate would not be detected)', preview.beyondDedupWindow),
        list('not replayable', preview.notReplayable),
        list('not found', preview.notFound),
      ),
      el(
        'div',
        { class: 'actions' },
        el(
          'button',
          {
            'data-testid': 'confirm-replay',
            disabled: go === 0,
            onclick: async (event) => {
              event.target.disabled = true;
              try {
                const result = await api('api/dead-letters/replay', {
                  selection,
                  dryRun: false,
                  preview: preview.preview,
                });
                panel.replaceChildren(
                  el(
                    'div',
                    { class: 'panel', 'data-testid': 'replay-result' },
                    `Replayed ${result.replayed}`,
                    result.alreadyProcessed.length
                      ? `, skipped ${result.alreadyProcessed.length} already processed`
                      : '',
                    '.',
                  ),
                );
                toast(`replayed ${result.replayed}`);
                if (after) after();
              } catch (error) {
                panel.replaceChildren(errorBox(error));
              }
            },
          },
          `Replay ${go}`,
        ),
        el('button', { class: 'secondary', onclick: () => panel.replaceChildren() }, 'Cancel'),
      ),
    ),
  );
}

/** Purge: a count first, then the operator types "purge N". */
async function startPurge(panel, selection, after) {
  let preview;
  try {
    preview = await api('api/dead-letters/purge', { selection, dryRun: true });
  } catch (error) {
    panel.replaceChildren(errorBox(error));
    return;
  }
  const typed = el('input', {
    'data-testid': 'purge-confirm-text',
    placeholder: preview.confirm,
    'aria-label': 'confirmation',
  });
  const button = el(
    'button',
    { class: 'danger', disabled: true, 'data-testid': 'confirm-purge' },
    `Purge ${preview.wouldPurge} for good`,
  );
  typed.addEventListener('input', () => {
    button.disabled = typed.value !== preview.confirm;
  });
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      const result = await api('api/dead-letters/purge', {
        selection,
        dryRun: false,
        preview: preview.preview,
        confirm: typed.value,
      });
      panel.replaceChildren(
        el('div', { class: 'panel', 'data-testid': 'purge-result' }, `Purged ${result.purged}.`),
      );
      toast(`purged ${result.purged}`);
      if (after) after();
    } catch (error) {
      panel.replaceChildren(errorBox(error));
    }
  });
  panel.replaceChildren(
    el(
      'div',
      { class: 'panel danger', 'data-testid': 'purge-preview' },
      el('strong', {}, `${preview.wouldPurge} dead letter(s) would be deleted for good.`),
      el('p', {}, 'Type ', el('code', {}, preview.confirm), ' to confirm.'),
      el(
        'div',
        { class: 'actions' },
        typed,
        button,
        el('button', { class: 'secondary', onclick: () => panel.replaceChildren() }, 'Cancel'),
      ),
    ),
  );
}

async function deadLetterDetail(id) {
  let d;
  try {
    d = await api(`api/dead-letters/${encodeURIComponent(id)}`);
  } catch (error) {
    render(el('h2', {}, `Dead letter ${id}`), errorBox(error));
    return;
  }
  const panel = el('div', {});
  const kv = (pairs) =>
    el(
      'dl',
      { class: 'kv' },
      pairs.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]),
    );
  render(
    el('h2', {}, `Dead letter ${d.id} `, badge(d.reason)),
    el(
      'div',
      { class: 'actions' },
      el(
        'button',
        {
          'data-testid': 'replay-one',
          onclick: () => startReplay(panel, { ids: [d.id] }, `dead letter ${d.id}`),
        },
        'Replay…',
      ),
      el(
        'button',
        { class: 'danger', 'data-testid': 'purge-one', onclick: () => startPurge(panel, { ids: [d.id] }) },
        'Purge…',
      ),
      d.group ? link(`#/dead-letters${query({ group: d.group, view: 'list' })}`, 'its group') : '',
    ),
    panel,
    kv([
      ['message id', d.messageId],
      ['type', d.type ?? '-'],
      ['queue', d.queue],
      ['source', d.source],
      ['attempts', String(d.attempts)],
      ['first failed', time(d.firstFailedAt)],
      ['last failed', time(d.lastFailedAt)],
      [
        'saga',
        d.sagaId
          ? link(
              `#/sagas/${encodeURIComponent(d.sagaId)}`,
              `${d.sagaId} (${d.step ?? '-'}, ${d.phase ?? '-'})`,
            )
          : '-',
      ],
    ]),
    el('h3', {}, 'Error'),
    el(
      'pre',
      { 'data-testid': 'error-text' },
      // the stack starts with name and message already
      d.error?.stack ?? [d.error?.name, d.error?.message].filter(Boolean).join(': '),
    ),
    el('h3', {}, 'Payload'),
    el('pre', { 'data-testid': 'payload' }, json(d.payload)),
    el('h3', {}, 'Headers'),
    el('pre', { 'data-testid': 'headers' }, json(d.headers)),
    el('h3', {}, 'Properties'),
    el('pre', {}, json(d.properties)),
    el('h3', {}, 'Replays and purges of this message'),
    d.history.length
      ? table(
          ['when', 'who', 'what', 'outcome'],
          d.history.map((h) =>
            el(
              'tr',
              {},
              el('td', {}, time(h.at)),
              el('td', {}, h.actor),
              el('td', {}, h.action),
              el(
                'td',
                {},
                h.entries
                  .filter((e) => e.messageId === d.messageId)
                  .map((e) => e.outcome)
                  .join(', '),
              ),
            ),
          ),
        )
      : el('p', { class: 'muted' }, 'none'),
  );
}

// ---------- sagas ----------

async function sagas(params) {
  const limit = 50;
  const offset = Number(params.offset ?? 0);
  const input = (name, label, attrs = {}) =>
    el('label', {}, label, el('input', { name, value: params[name] ?? '', ...attrs }));
  const form = el(
    'form',
    {
      class: 'filters',
      onsubmit: (event) => {
        event.preventDefault();
        const next = {};
        for (const [k, v] of new FormData(event.target).entries())
          if (v) next[k] = k.endsWith('AgeS') ? String(Math.round(Number(v) * 60)) : v;
        location.hash = `#/sagas${query(next)}`;
      },
    },
    input('name', 'name'),
    el(
      'label',
      {},
      'status',
      el(
        'select',
        { name: 'status' },
        el('option', { value: '' }, 'any'),
        session.sagaStatuses.map((s) => el('option', { value: s, selected: params.status === s }, s)),
      ),
    ),
    input('correlationId', 'correlation id'),
    el(
      'label',
      {},
      'older than (min)',
      el('input', {
        name: 'minAgeS',
        type: 'number',
        min: 0,
        value: params.minAgeS ? Number(params.minAgeS) / 60 : '',
      }),
    ),
    el(
      'label',
      {},
      'newer than (min)',
      el('input', {
        name: 'maxAgeS',
        type: 'number',
        min: 0,
        value: params.maxAgeS ? Number(params.maxAgeS) / 60 : '',
      }),
    ),
    el(
      'label',
      {},
      'stuck only',
      el(
        'select',
        { name: 'stuck' },
        el('option', { value: '' }, 'no'),
        el('option', { value: 'true', selected: params.stuck === 'true' }, 'yes'),
      ),
    ),
    el('button', { type: 'submit' }, 'Filter'),
  );
  try {
    const data = await api(`api/sagas${query({ ...params, limit, offset })}`);
    render(
      el('h2', {}, 'Sagas'),
      form,
      table(
        ['id', 'name', 'status', 'correlation id', 'started', 'last change', 'last error'],
        data.items.map((s) =>
          el(
            'tr',
            { class: s.stuck ? 'stuck' : '', 'data-testid': 'saga-row' },
            el('td', {}, link(`#/sagas/${encodeURIComponent(s.id)}`, s.id)),
            el('td', {}, s.name),
            el('td', {}, badge(s.status), s.stuck ? [' ', badge('stuck')] : ''),
            el('td', {}, s.correlationId ?? '-'),
            el('td', {}, time(s.createdAt)),
            el('td', {}, ago(s.updatedAt)),
            el('td', { class: 'err' }, s.lastError?.message ?? ''),
          ),
        ),
        { 'data-testid': 'saga-list' },
      ),
      pager(data.total, limit, offset, (o) => {
        location.hash = `#/sagas${query({ ...params, offset: o })}`;
      }),
    );
  } catch (error) {
    render(el('h2', {}, 'Sagas'), form, errorBox(error));
  }
}

async function sagaDetail(id) {
  let s;
  try {
    s = await api(`api/sagas/${encodeURIComponent(id)}`);
  } catch (error) {
    render(el('h2', {}, 'Saga'), errorBox(error));
    return;
  }
  const start = Date.parse(s.createdAt);
  const offsetOf = (iso) => (iso ? `+${Date.parse(iso) - start} ms` : '');
  render(
    el('h2', {}, `Saga ${s.name} `, badge(s.status), s.stuck ? [' ', badge('stuck')] : ''),
    el(
      'dl',
      { class: 'kv' },
      el('dt', {}, 'id'),
      el('dd', {}, s.id),
      el('dt', {}, 'correlation id'),
      el('dd', {}, s.correlationId ?? '-'),
      el('dt', {}, 'started'),
      el('dd', {}, time(s.createdAt)),
      el('dt', {}, 'last change'),
      el('dd', {}, `${time(s.updatedAt)} (${ago(s.updatedAt)})`),
      el('dt', {}, 'deadline'),
      el('dd', {}, time(s.deadlineAt)),
      el('dt', {}, 'last error'),
      el('dd', {}, s.lastError?.message ?? '-'),
    ),
    el('h3', {}, 'Timeline'),
    (s.steps ?? []).length
      ? el(
          'ol',
          { class: 'timeline', 'data-testid': 'timeline' },
          s.steps.map((step) =>
            el(
              'li',
              { class: `${step.status} ${step.phase}`, 'data-testid': 'timeline-step' },
              el('strong', {}, `${step.phase === 'execute' ? 'run' : 'undo'} ${step.name}`),
              ' ',
              badge(step.status),
              el(
                'span',
                { class: 'muted' },
                `  ${offsetOf(step.startedAt)} → ${offsetOf(step.finishedAt) || '…'}, ${step.attempts} attempt${step.attempts === 1 ? '' : 's'}`,
              ),
              step.error ? el('div', { class: 'error' }, step.error.message) : '',
            ),
          ),
        )
      : el('p', { class: 'muted' }, 'no step has run yet'),
    el('h3', {}, 'State'),
    el('pre', {}, json(s.state)),
    el('h3', {}, 'Its dead letters'),
    s.deadLetters.length
      ? table(
          ['id', 'step', 'reason', 'error'],
          s.deadLetters.map((d) =>
            el(
              'tr',
              {},
              el('td', {}, link(`#/dead-letters/${d.id}`, String(d.id))),
              el('td', {}, d.type ?? '-'),
              el('td', {}, badge(d.reason)),
              el('td', { class: 'err' }, d.error),
            ),
          ),
        )
      : el('p', { class: 'muted' }, 'none'),
  );
}

// ---------- audit ----------

async function audit(params) {
  const limit = 50;
  const offset = Number(params.offset ?? 0);
  try {
    const data = await api(`api/audit${query({ limit, offset })}`);
    render(
      el('h2', {}, 'Audit: replays and purges'),
      table(
        ['when', 'who', 'what', 'dead letters', 'result'],
        data.items.map((a) =>
          el(
            'tr',
            { 'data-testid': 'audit-row' },
            el('td', {}, time(a.at)),
            el('td', {}, a.actor),
            el('td', {}, a.action),
            el('td', {}, a.entries.map((e) => `${e.id} ${e.outcome}`).join(', ')),
            el('td', {}, el('code', {}, JSON.stringify({ ...a.result, results: undefined }))),
          ),
        ),
      ),
      pager(data.total, limit, offset, (o) => {
        location.hash = `#/audit${query({ offset: o })}`;
      }),
    );
  } catch (error) {
    render(el('h2', {}, 'Audit'), errorBox(error));
  }
}

// ---------- router ----------

async function route() {
  clearInterval(timer);
  timer = null;
  const { parts, params } = parseHash();
  for (const a of document.querySelectorAll('[data-nav]'))
    a.classList.toggle('active', a.dataset.nav === (parts[0] ?? 'overview'));
  if (parts[0] === 'dead-letters' && parts[1]) return deadLetterDetail(parts[1]);
  if (parts[0] === 'dead-letters') return deadLetters(params);
  if (parts[0] === 'sagas' && parts[1]) return sagaDetail(parts[1]);
  if (parts[0] === 'sagas') return sagas(params);
  if (parts[0] === 'audit') return audit(params);
  return overview();
}

async function start() {
  try {
    session = await api('api/session');
  } catch (error) {
    render(errorBox(error));
    return;
  }
  document.getElementById('who').textContent = session.actor;
  window.addEventListener('hashchange', route);
  await route();
}

start();
