/**
 * @file tidings.js: the browser client of a tidings hub.
 *
 * An ES module with no dependencies and no build step. The hub serves it at
 * `GET /static/tidings.js` (and an embedded app at `<prefix>/static/tidings.js`):
 *
 *     import { createProgressStream, subscribe } from "/static/tidings.js";
 *
 *     const stream = createProgressStream(taskId, {
 *       onProgress: (p) => (bar.value = p.progress),
 *       onFileUpdate: (f) => showFile(f.file_id, f.status),
 *       onComplete: (done) => showResult(done.result),
 *       onError: (error) => showError(error.message),
 *     });
 *
 *     const chat = subscribe(["chat/general"], {
 *       chat_message: (data) => addLine(data.text),
 *     });
 *
 * Decisions worth knowing (docs/browser.md has the whole story):
 *
 * - **Where the hub is.** By default the hub is the directory above the `/static/` this
 *   file was loaded from, so `<hub>/static/tidings.js` talks to `<hub>`, on any origin and
 *   under any prefix. `configure({ baseUrl })` (or the `baseUrl` option of a call) points
 *   it elsewhere, e.g. `/api/v1/status`.
 * - **One connection per stream.** A second `createProgressStream` for a task in the same
 *   page shares the first one's hub stream: it gets a controller of its own (its handlers
 *   get the current state at once, and its `close()` stops only them); the stream closes
 *   when the last of them closes. Tabs of
 *   one origin share connections (SPEC §9): one tab, the leader, elected with a Web Lock,
 *   holds each stream once and rebroadcasts its events over a BroadcastChannel; when it
 *   closes, the next tab takes over and resumes from the last event id, so nothing is
 *   lost. Where those APIs are missing (or with `share: false`) each tab connects itself.
 * - **Transports.** `EventSource` by default. It cannot deliver an event type nobody
 *   listens for, so a subscription with a catch-all handler (`"*"`) and no `types` list
 *   reads the stream with `fetch()` and a WHATWG-exact parser instead; `transport:
 *   "fetch"` does that always (and sends the token as an `Authorization` header, not in the
 *   URL).
 * - **Reconnects.** A stream that ends or breaks after working (a node draining, a
 *   maximum age) is reopened after about the hub's `retry` (0.5 to 1.5 times it, at
 *   random), not by the browser's EventSource after exactly `retry`: so the clients of a
 *   draining node come back spread out. When a connection is refused (a 429, a 503 while
 *   a node drains, a proxy error) the client asks the same URL once with `fetch()` to
 *   learn why: a refusal (400, 401, 403, 404) ends the stream with `onError`; anything
 *   else is retried after an exponential backoff with full jitter
 *   (`random(0, min(max, initial × 2ⁿ))`), and never sooner than a `Retry-After`.
 * - **Resume.** The last event id (and, for a task, its state) is kept in sessionStorage,
 *   so a page reload shows the bar where it was at once and resumes with `last_event_id`:
 *   each missed event arrives once, none twice.
 * - **Order.** Task events carry `sequence`; an event whose sequence is not newer than the
 *   last one seen is dropped (a snapshot's `file_update`s restate the sequence of its
 *   `task_progress` and are kept).
 *
 * @module tidings
 */

/** `readyState()` while connecting or waiting to reconnect. */
export const CONNECTING = 0;
/** `readyState()` while the stream is open. */
export const OPEN = 1;
/** `readyState()` once closed: by `close()`, after a task's last event, or refused. */
export const CLOSED = 2;

/** Event types that end a task stream. */
const END_TYPES = new Set(["task_completed", "task_failed", "task_cancelled", "task_deleted"]);
/** Every type a task stream sends. */
const TASK_TYPES = ["task_progress", "file_update", ...END_TYPES, "auth_expired"];
/** Types the hub itself sends on topic streams. */
const HUB_TYPES = ["message", "gap", "auth_expired", "disconnect"];
/** Statuses that retrying cannot change: the request itself is refused. */
const REFUSED = new Set([400, 401, 403, 404, 405, 410, 413, 414, 422, 431]);
/** Recent events a leader keeps per topic stream, for a tab that joins with an id. */
const RECENT_EVENTS = 500;
/** Delay before state is written to sessionStorage (writes are coalesced). */
const SAVE_DELAY_MS = 200;
/** The hub's default `--retry`, in ms: what a stream that ended waits (about) when the
 * transport hides the hub's own `retry:` field (EventSource does). */
const HUB_RETRY_MS = 3000;

/** A stream open this long resets its backoff. */
const HEALTHY_MS = 10000;

/** Marks an event dropped as out of order. */
const DROPPED = Symbol("dropped");

/**
 * An error reported to `onError`: a task that failed, was cancelled or deleted, or a
 * stream the hub refused.
 */
export class TidingsError extends Error {
  /**
   * @param {string} code machine-readable: `task_failed`, `task_cancelled`,
   *   `task_deleted`, or the hub's error code (`task_not_found`, `unauthenticated`,
   *   `forbidden`, `token_expired`, ...)
   * @param {string} message for people
   * @param {{status?: number, data?: any}} [extra] the HTTP status of a refusal; the event
   *   payload of a task event
   */
  constructor(code, message, { status = 0, data = undefined } = {}) {
    super(message);
    this.name = "TidingsError";
    /** @type {string} */
    this.code = code;
    /** @type {number} */
    this.status = status;
    /** @type {any} */
    this.data = data;
  }
}

/**
 * @typedef {object} Options
 * @property {string} [baseUrl] the hub's root URL, e.g. `"/api/v1/status"` or
 *   `"https://hub.example.com"` (default: where this file was served from)
 * @property {string | (() => string | Promise<string>)} [token] a bearer token, or a
 *   function returning one (called for every connection, so an expired token is
 *   refreshed). With EventSource it is sent as `?token=` (the hub must run with
 *   `--allow-query-token`); with fetch as an `Authorization` header. Leave it out to rely
 *   on the `tidings_token` cookie.
 * @property {boolean} [withCredentials] send cookies to a hub on another origin
 * @property {"auto" | "eventsource" | "fetch"} [transport] see the module notes
 * @property {boolean} [share] share connections between tabs (default `true`)
 * @property {boolean} [persist] keep resume state in sessionStorage (default `true`)
 * @property {{initial?: number, max?: number}} [backoff] reconnect delays in ms
 *   (default `{initial: 1000, max: 30000}`)
 * @property {boolean} [times] ask the hub for each event's publish time (`?time=1`): the
 *   fetch transport gives it to handlers as `event.time` (Unix ms); EventSource cannot
 *   read it (default `false`)
 */

/** @type {Required<Options>} */
const defaults = {
  baseUrl: scriptRoot(),
  token: undefined,
  withCredentials: false,
  transport: "auto",
  share: true,
  persist: true,
  backoff: { initial: 1000, max: 30000 },
  times: false,
};

/**
 * Change the defaults of every later call.
 *
 * @example
 * configure({ baseUrl: "/api/v1/status", token: () => auth.currentToken() });
 *
 * @param {Options} options
 * @returns {Options} the defaults now in force
 * @throws {TypeError} for an unknown option
 */
export function configure(options = {}) {
  for (const [name, value] of Object.entries(options)) {
    if (!Object.hasOwn(defaults, name)) throw new TypeError(`tidings: unknown option ${name}`);
    defaults[name] = name === "backoff" ? { ...defaults.backoff, ...value } : value;
  }
  return { ...defaults, backoff: { ...defaults.backoff } };
}

/** The hub root implied by this file's URL: the part before `/static/`, or `""`. */
function scriptRoot() {
  try {
    const url = new URL(import.meta.url);
    const at = url.pathname.lastIndexOf("/static/");
    if (at >= 0 && (url.protocol === "http:" || url.protocol === "https:")) {
      return url.origin + url.pathname.slice(0, at);
    }
  } catch {
    // Not loaded from a URL (bundled): the page's origin is the hub.
  }
  return "";
}

function settingsOf(options) {
  const merged = {
    ...defaults,
    ...options,
    backoff: { ...defaults.backoff, ...(options.backoff || {}) },
  };
  const base = String(merged.baseUrl ?? "");
  const here = globalThis.location ? globalThis.location.href : undefined;
  merged.root = new URL(base.endsWith("/") ? base : `${base}/`, here).href.replace(/\/+$/, "");
  return merged;
}

// -- small helpers ----------------------------------------------------------------------

function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (error) {
    // One failing handler must not stop the stream, nor hide the failure.
    (globalThis.reportError || console.error)(error);
  }
}

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return data; // a raw text payload (a publisher of another kind)
  }
}

let lastId = 0;
function uniqueId() {
  lastId += 1;
  return `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}${lastId}`;
}

function session() {
  try {
    return globalThis.sessionStorage || null;
  } catch {
    return null; // storage disabled: resume falls back to a fresh state
  }
}

/**
 * Coalesced writes of one sessionStorage entry; flushed when the page is hidden.
 */
class Saver {
  constructor(key, snapshot) {
    this.key = key;
    this.snapshot = snapshot;
    this.timer = 0;
  }

  load() {
    try {
      const text = session()?.getItem(this.key);
      return text ? JSON.parse(text) : null;
    } catch {
      return null;
    }
  }

  schedule() {
    if (this.timer) return;
    this.timer = setTimeout(() => this.flush(), SAVE_DELAY_MS);
    pendingSavers.add(this);
  }

  flush() {
    clearTimeout(this.timer);
    this.timer = 0;
    pendingSavers.delete(this);
    this.write(this.snapshot());
  }

  clear() {
    clearTimeout(this.timer);
    this.timer = 0;
    pendingSavers.delete(this);
    this.write(null);
  }

  write(value) {
    try {
      if (value === null) session()?.removeItem(this.key);
      else session()?.setItem(this.key, JSON.stringify(value));
    } catch {
      // Full or disabled: a reload then starts from a fresh state, which is still right.
    }
  }
}

const pendingSavers = new Set();
globalThis.addEventListener?.("pagehide", () => {
  for (const saver of [...pendingSavers]) saver.flush();
});

// -- the wire ----------------------------------------------------------------------------

/**
 * An incremental `text/event-stream` parser, exact to the WHATWG HTML "server-sent events"
 * section (the fetch transport uses it; EventSource has the browser's own).
 *
 * Feed it decoded text in chunks of any size; it calls `onEvent(type, data, lastEventId,
 * time)` for each event and `onRetry(ms)` for each valid `retry:` field. `time` is the
 * event's `time:` field, which a tidings hub writes (the publish time, in Unix
 * milliseconds), or `null`: a field outside the standard, which EventSource ignores.
 */
export class EventStreamParser {
  /**
   * @param {(type: string, data: string, lastEventId: string, time: number | null) => void} onEvent
   * @param {(ms: number) => void} [onRetry]
   */
  constructor(onEvent, onRetry = () => {}) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.rest = "";
    this.afterCR = false;
    this.type = "";
    this.data = [];
    this.lastEventId = "";
    this.time = null;
  }

  /** @param {string} text */
  feed(text) {
    let chunk = this.rest + text;
    if (this.afterCR && chunk.startsWith("\n")) chunk = chunk.slice(1); // CR LF split across chunks
    this.afterCR = false;
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(chunk.slice(start, i));
      if (c === 13) {
        if (i + 1 === chunk.length) this.afterCR = true;
        else if (chunk.charCodeAt(i + 1) === 10) i += 1;
      }
      start = i + 1;
    }
    this.rest = chunk.slice(start);
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return; // a comment (keep-alive)
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
    }
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value;
    } else if (field === "retry") {
      if (/^[0-9]+$/.test(value)) this.onRetry(Number(value));
    } else if (field === "time") {
      if (/^[0-9]+$/.test(value)) this.time = Number(value);
    }
  }

  dispatch() {
    const time = this.time;
    this.time = null; // of one event, like its type (the id is kept, per the standard)
    if (this.data.length === 0) {
      this.type = "";
      return;
    }
    const data = this.data.join("\n");
    const type = this.type || "message";
    this.data = [];
    this.type = "";
    this.onEvent(type, data, this.lastEventId, time);
  }
}

/** Why a request failed: `{status, code, message, retryAfter}` from the hub's error body. */
async function failureOf(response) {
  const failure = {
    status: response.status,
    code: `http_${response.status}`,
    message: `HTTP ${response.status}`,
    retryAfter: Number(response.headers.get("retry-after")) || 0,
  };
  if (response.status === 200) {
    failure.code = "not_an_event_stream";
    failure.message = "the answer is not an event stream";
    return failure;
  }
  try {
    const body = await response.json();
    if (body && body.error) {
      failure.code = body.error.code || failure.code;
      failure.message = body.error.message || failure.message;
    }
  } catch {
    // Not the hub's JSON (a proxy's page): keep the status.
  }
  return failure;
}

function networkFailure(error) {
  return { status: 0, code: "network_error", message: String(error?.message || error) };
}

function isStream(response) {
  const type = response.headers.get("content-type") || "";
  return response.status === 200 && type.startsWith("text/event-stream");
}

function credentialsOf(withCredentials) {
  return withCredentials ? "include" : "same-origin";
}

/** One EventSource; returns its stopper. */
function connectEventSource(url, types, withCredentials, sink) {
  const source = new EventSource(url, { withCredentials });
  const onEvent = (event) => sink.event(event.type, event.data, event.lastEventId, null);
  for (const type of types) source.addEventListener(type, onEvent);
  source.onopen = () => sink.open();
  source.onerror = () => {
    if (source.readyState === CLOSED) {
      sink.failed(null); // it gave up: find out why
    } else {
      // The stream ended or broke, and the browser would reconnect after exactly `retry`
      // ms, all its clients at once: reconnect ourselves instead, with jitter.
      source.close();
      sink.ended();
    }
  };
  return () => source.close();
}

/** One fetch() stream; returns its stopper. */
function connectFetch(url, headers, withCredentials, sink) {
  const abort = new AbortController();
  const run = async () => {
    const response = await fetch(url, {
      headers,
      credentials: credentialsOf(withCredentials),
      cache: "no-store",
      signal: abort.signal,
    });
    if (!isStream(response)) {
      sink.failed(await failureOf(response));
      return;
    }
    sink.open();
    const parser = new EventStreamParser(
      (type, data, id, time) => sink.event(type, data, id, time),
      (ms) => sink.retry(ms),
    );
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(value);
    }
    sink.ended();
  };
  run().catch((error) => {
    if (!abort.signal.aborted) sink.failed(networkFailure(error));
  });
  return () => abort.abort();
}

/** After an EventSource gave up: the same request once with fetch(), to learn why. */
async function probe(url, withCredentials) {
  const abort = new AbortController();
  try {
    const response = await fetch(url, {
      credentials: credentialsOf(withCredentials),
      cache: "no-store",
      signal: abort.signal,
    });
    return isStream(response) ? null : await failureOf(response);
  } catch (error) {
    return networkFailure(error);
  } finally {
    abort.abort(); // a stream that opens is not read: the EventSource comes back instead
  }
}

// -- one reconnecting stream ----------------------------------------------------------------

const waiting = new Set();
globalThis.addEventListener?.("online", () => {
  for (const stream of [...waiting]) stream.connectNow();
});

/**
 * One logical stream: a transport, reopened after failures with backoff, resumed from
 * its last event id. Reports to `listener.event(type, data, id, time)`, `listener.state(s)`,
 * `listener.fatal(error)` and `listener.reconnect()`.
 */
class Stream {
  constructor(spec, listener) {
    this.spec = spec;
    this.listener = listener;
    this.lastEventId = spec.lastEventId || "";
    this.state = CONNECTING;
    this.attempts = 0;
    this.retryMs = 0;
    this.openedAt = 0;
    this.generation = 0;
    this.timer = 0;
    this.stop = null;
    this.closed = false;
  }

  start() {
    this.connect();
  }

  close() {
    this.closed = true;
    this.halt();
    this.setState(CLOSED);
  }

  halt() {
    this.generation += 1;
    clearTimeout(this.timer);
    this.timer = 0;
    waiting.delete(this);
    if (this.stop) this.stop();
    this.stop = null;
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.listener.state(state);
  }

  connectNow() {
    if (this.timer) this.connect();
  }

  async connect() {
    this.halt();
    const generation = this.generation;
    const live = () => generation === this.generation && !this.closed;
    this.setState(CONNECTING);
    let token = this.spec.token;
    if (typeof token === "function") {
      try {
        token = await token();
      } catch (error) {
        if (live()) this.failed({ status: 0, code: "token_error", message: String(error) });
        return;
      }
      if (!live()) return;
    }
    const sink = {
      open: () => {
        if (!live()) return;
        this.openedAt = Date.now();
        this.setState(OPEN);
      },
      event: (type, data, id, time) => {
        if (!live()) return;
        if (id) this.lastEventId = id;
        if (type === "auth_expired" && typeof this.spec.token === "function") {
          // The hub ends the stream at the token's expiry: resume at once with a new one.
          this.connect();
          return;
        }
        this.listener.event(type, data, id, time);
      },
      retry: (ms) => {
        this.retryMs = ms;
      },
      failed: (failure) => {
        if (live()) this.failed(failure);
      },
      ended: () => {
        if (live()) this.failed({ status: 200, code: "ended", message: "the stream ended", ended: true });
      },
    };
    const url = new URL(this.spec.url);
    if (this.spec.transport === "eventsource") {
      // EventSource cannot set Last-Event-ID on a new connection: the hub reads the query.
      if (this.lastEventId) url.searchParams.set("last_event_id", this.lastEventId);
      if (token) url.searchParams.set("token", token);
      this.url = url.href;
      this.stop = connectEventSource(url.href, this.spec.types, this.spec.withCredentials, sink);
    } else {
      const headers = { Accept: "text/event-stream" };
      if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
      if (token) headers.Authorization = `Bearer ${token}`;
      this.stop = connectFetch(url.href, headers, this.spec.withCredentials, sink);
    }
  }

  async failed(failure) {
    if (this.stop) this.stop();
    this.stop = null;
    this.setState(CONNECTING);
    const generation = this.generation;
    if (failure === null) {
      failure = await probe(this.url, this.spec.withCredentials);
      if (generation !== this.generation || this.closed) return;
    }
    if (failure && failure.status === 204) {
      // A task stream resumed past its last event: ask again without the id, and the
      // stream's first event is the task's final state.
      if (this.lastEventId) {
        this.lastEventId = "";
        this.schedule(0);
        return;
      }
      failure = { status: 204, code: "stream_over", message: "the stream is over" };
    }
    if (failure && (REFUSED.has(failure.status) || failure.status === 204 || failure.code === "not_an_event_stream")) {
      this.closed = true;
      this.setState(CLOSED);
      this.listener.fatal(new TidingsError(failure.code, failure.message, { status: failure.status }));
      return;
    }
    this.schedule(this.delay(failure));
  }

  /** Full-jitter exponential backoff; never sooner than a Retry-After. */
  delay(failure) {
    if (this.openedAt && Date.now() - this.openedAt >= HEALTHY_MS) this.attempts = 0;
    this.openedAt = 0;
    const { initial, max } = this.spec.backoff;
    let delay;
    if (failure && failure.ended && this.attempts === 0) {
      // A stream that ended after working (a node draining, a maximum age): back after
      // about `retry` (0.5 to 1.5 times it), each client at its own moment.
      // EventSource keeps `retry:` to itself: then the hub's default is assumed.
      delay = Math.max(initial, this.retryMs || HUB_RETRY_MS) * (0.5 + Math.random());
      this.attempts += 1;
    } else {
      const base = failure && failure.ended ? Math.max(initial, this.retryMs) : initial;
      const ceiling = Math.min(max, base * 2 ** this.attempts);
      this.attempts += 1;
      delay = Math.random() * ceiling;
    }
    if (failure && failure.retryAfter) delay = Math.max(delay, failure.retryAfter * 1000);
    return delay;
  }

  schedule(delay) {
    this.setState(CONNECTING);
    this.listener.reconnect();
    this.timer = setTimeout(() => this.connect(), delay);
    waiting.add(this);
  }
}

// -- task state --------------------------------------------------------------------------

/**
 * A task's state as the events that carry it, and the order check on `sequence`.
 */
class TaskState {
  constructor(saved = null) {
    this.sequence = -1;
    this.id = "";
    this.snapshot = null;
    this.progress = null;
    this.files = new Map();
    this.end = null;
    if (saved) {
      this.sequence = saved.sequence;
      this.id = saved.id;
      this.progress = saved.progress;
      this.end = saved.end;
      for (const frame of saved.files) this.files.set(parse(frame.data).file_id, frame);
    }
  }

  /** The payload of an accepted event, or DROPPED when it is not newer than the state. */
  accept(type, data, id) {
    const payload = parse(data);
    const sequence = payload && typeof payload.sequence === "number" ? payload.sequence : null;
    if (sequence !== null) {
      // A snapshot restates one sequence: a task_progress, then a file_update per file,
      // all with its sequence and id. Any other event repeating a sequence is old news.
      const restated =
        type === "file_update" && sequence === this.sequence && this.snapshot !== null && id === this.snapshot;
      if (sequence < this.sequence || (sequence === this.sequence && !restated)) return DROPPED;
      if (sequence > this.sequence) this.snapshot = type === "task_progress" ? id : null;
      this.sequence = sequence;
      this.id = id;
    }
    const frame = { type, data, id };
    if (type === "task_progress") this.progress = frame;
    else if (type === "file_update") this.files.set(payload.file_id, frame);
    else if (END_TYPES.has(type)) this.end = frame;
    return payload;
  }

  /** The state as events: the end event alone, or the progress and one per file. */
  frames() {
    if (this.end) return [this.end];
    return this.progress ? [this.progress, ...this.files.values()] : [...this.files.values()];
  }

  toJSON() {
    return {
      sequence: this.sequence,
      id: this.id,
      progress: this.progress,
      files: [...this.files.values()],
      end: this.end,
    };
  }
}

// -- pools: the streams a tab holds ---------------------------------------------------------

/**
 * One stream held by a pool, with its subscribers (local sinks, or other tabs').
 */
class Shared {
  constructor(pool, key, spec) {
    this.pool = pool;
    this.key = key;
    this.kind = spec.kind;
    this.sinks = new Map();
    this.remotes = 0;
    this.recent = [];
    this.resumeFrom = spec.lastEventId || "";
    this.latest = this.resumeFrom;
    this.task = spec.kind === "task" ? new TaskState(spec.state) : null;
    this.stream = new Stream(spec, {
      event: (type, data, id, time) => this.event(type, data, id, time),
      state: (state) => this.each((sink) => sink.state(state), { t: "state", key, state }),
      fatal: (error) => this.fatal(error),
      reconnect: () => this.each((sink) => sink.reconnect(), { t: "reconnect", key }),
    });
  }

  /** Run `local` for this tab's sinks, and post `message` once if other tabs listen. */
  each(local, message) {
    for (const sink of this.sinks.values()) if (!sink.remote) local(sink);
    if (this.remotes > 0) this.pool.post(message);
  }

  event(type, data, id, time) {
    if (this.task) {
      this.task.accept(type, data, id);
    } else if (id) {
      this.recent.push({ type, data, id, time });
      if (this.recent.length > RECENT_EVENTS) {
        this.recent.shift();
        this.resumeFrom = ""; // the buffer no longer reaches back to it
      }
    }
    if (id) this.latest = id;
    const message = { t: "event", key: this.key, type, data, id, time };
    this.each((sink) => sink.event(type, data, id, time), message);
    if (this.task && END_TYPES.has(type)) this.stream.close(); // else EventSource would reconnect
  }

  fatal(error) {
    const { code, message, status } = error;
    this.each((sink) => sink.fatal(error), { t: "fatal", key: this.key, code, message, status });
    this.pool.drop(this);
  }

  /** Whether a subscriber resuming from `id` can be served from this stream. */
  places(id) {
    if (this.task || !id || id === this.latest || id === this.resumeFrom) return true;
    return this.recent.some((event) => event.id === id);
  }

  /** What a joining subscriber gets first: the task's state, or the events after its id. */
  catchUp(id) {
    if (this.task) return this.task.frames();
    if (!id || id === this.latest) return [];
    const at = this.recent.findIndex((event) => event.id === id);
    return at >= 0 ? this.recent.slice(at + 1) : this.recent.slice();
  }
}

/**
 * The streams one tab holds, each once, for any number of subscribers. Without sharing a
 * tab has its own pool; with sharing only the leader tab's pool holds streams, for every
 * tab.
 */
class Pool {
  constructor(post = null) {
    this.post = post;
    this.streams = new Map();
    this.members = new Map();
  }

  /** Add subscriber `id` (a sink) to the stream `spec` describes; returns the key used. */
  add(id, spec, sink) {
    const current = this.members.get(id);
    if (current && (current.key === spec.key || current.key === `${spec.key}#${id}`)) {
      // Announced again (a new leader's sync): same stream, catch up from where it is.
      if (sink.remote !== current.sinks.get(id)?.remote) current.remotes += sink.remote ? 1 : -1;
      current.sinks.set(id, sink);
      sink.joined(current.key, current.stream.state, current.catchUp(spec.lastEventId));
      return current.key;
    }
    this.remove(id);
    let key = spec.key;
    let shared = this.streams.get(key);
    if (shared && !shared.places(spec.lastEventId)) {
      // Resuming from an id this stream cannot place: a stream of its own, which the hub
      // replays exactly.
      key = `${spec.key}#${id}`;
      shared = this.streams.get(key);
    }
    const fresh = !shared;
    if (fresh) {
      shared = new Shared(this, key, spec);
      this.streams.set(key, shared);
    }
    shared.sinks.set(id, sink);
    if (sink.remote) shared.remotes += 1;
    this.members.set(id, shared);
    sink.joined(key, shared.stream.state, fresh ? [] : shared.catchUp(spec.lastEventId));
    if (fresh) shared.stream.start();
    return key;
  }

  remove(id) {
    const shared = this.members.get(id);
    if (!shared) return;
    this.members.delete(id);
    const sink = shared.sinks.get(id);
    shared.sinks.delete(id);
    if (sink && sink.remote) shared.remotes -= 1;
    if (shared.sinks.size === 0) this.drop(shared);
  }

  /** Remove every subscriber of another tab (that tab is gone). */
  removeTab(tab) {
    for (const [id, shared] of [...this.members]) {
      const sink = shared.sinks.get(id);
      if (sink && sink.remote && sink.tab === tab) this.remove(id);
    }
  }

  drop(shared) {
    if (this.streams.get(shared.key) !== shared) return;
    this.streams.delete(shared.key);
    for (const id of shared.sinks.keys()) this.members.delete(id);
    shared.stream.close();
  }
}

/** A tab's link to the hub at one root: opens and closes subscriptions. */
class DirectLink {
  constructor() {
    this.pool = new Pool();
  }

  open(describe, sink) {
    const id = uniqueId();
    this.pool.add(id, describe(), sink);
    return id;
  }

  close(id) {
    this.pool.remove(id);
  }
}

/**
 * Shares streams between the tabs of one origin (SPEC §9).
 *
 * Every tab holds a Web Lock named after itself for its whole life, then queues for the
 * leader lock. The tab holding the leader lock holds the streams: other tabs post `open`
 * and `close` over a BroadcastChannel, and the leader posts each event once, keyed by
 * stream. The leader also queues for each follower's own lock: it is granted when that
 * tab is gone, and its subscriptions are dropped. When the leader goes, its lock passes
 * to the next tab, which opens the streams again from the last event ids (a task's from
 * its state) and asks every tab to announce its subscriptions (`sync`).
 */
class SharedLink {
  constructor(root) {
    this.root = root;
    this.tab = uniqueId();
    this.subs = new Map();
    this.pool = null;
    this.direct = new DirectLink();
    this.watched = new Set();
    this.channel = new BroadcastChannel(`tidings:${root}`);
    this.channel.onmessage = (event) => this.receive(event.data);
    this.ready = new Promise((granted) => {
      navigator.locks.request(`tidings:tab:${this.tab}`, () => {
        granted();
        return new Promise(() => {}); // held until the tab goes away
      });
    }).then(() => {
      navigator.locks.request(`tidings:leader:${root}`, () => {
        this.lead();
        return new Promise(() => {});
      });
    });
  }

  post(message) {
    this.channel.postMessage(message);
  }

  lead() {
    this.pool = new Pool((message) => this.post(message));
    for (const sub of this.subs.values()) if (!sub.private) this.pool.add(sub.id, sub.describe(), sub.sink);
    this.post({ t: "sync" });
  }

  open(describe, sink) {
    const spec = describe();
    if (typeof spec.token === "function") {
      // A token function cannot cross to another tab: this stream is the tab's own.
      return this.openPrivate(describe, sink);
    }
    const sub = { id: uniqueId(), key: spec.key, describe, sink, joined: false, private: false };
    this.subs.set(sub.id, sub);
    if (this.pool) this.pool.add(sub.id, spec, sink);
    else this.ready.then(() => this.announce(sub));
    return sub.id;
  }

  openPrivate(describe, sink) {
    const id = this.direct.open(describe, sink);
    this.subs.set(id, { id, private: true });
    return id;
  }

  announce(sub) {
    if (this.subs.get(sub.id) !== sub) return;
    if (this.pool) this.pool.add(sub.id, sub.describe(), sub.sink);
    else this.post({ t: "open", tab: this.tab, id: sub.id, spec: sub.describe() });
  }

  close(id) {
    const sub = this.subs.get(id);
    if (!sub) return;
    this.subs.delete(id);
    if (sub.private) this.direct.close(id);
    else if (this.pool) this.pool.remove(id);
    else this.post({ t: "close", tab: this.tab, id });
  }

  /** Learn when another tab is gone: its lock is granted to us then. */
  watch(tab) {
    if (this.watched.has(tab)) return;
    this.watched.add(tab);
    navigator.locks.request(`tidings:tab:${tab}`, () => {
      this.watched.delete(tab);
      this.pool?.removeTab(tab);
    });
  }

  remoteSink(tab, id) {
    const post = (message) => this.post({ ...message, tab, id });
    return {
      remote: true,
      tab,
      joined: (key, state, events) => post({ t: "joined", key, state, events }),
    };
  }

  receive(message) {
    if (!message || typeof message !== "object") return;
    const pool = this.pool;
    switch (message.t) {
      case "sync":
        if (pool) return;
        for (const sub of this.subs.values()) {
          if (sub.private) continue;
          sub.joined = false;
          sub.sink.state(CONNECTING);
          this.announce(sub);
        }
        return;
      case "open":
        if (!pool) return;
        this.watch(message.tab);
        pool.add(message.id, message.spec, this.remoteSink(message.tab, message.id));
        return;
      case "close":
        if (pool) pool.remove(message.id);
        return;
      case "joined": {
        const sub = message.tab === this.tab ? this.subs.get(message.id) : null;
        if (!sub || sub.private || pool) return;
        sub.key = message.key;
        sub.joined = true;
        sub.sink.joined(message.key, message.state, message.events);
        return;
      }
      default:
        if (pool) return; // the leader's own sinks were called directly
        for (const sub of this.subs.values()) {
          if (!sub.joined || sub.key !== message.key) continue;
          const sink = sub.sink;
          if (message.t === "event") {
            sink.event(message.type, message.data, message.id, message.time ?? null);
          } else if (message.t === "state") {
            sink.state(message.state);
          } else if (message.t === "reconnect") {
            sink.reconnect();
          } else if (message.t === "fatal") {
            sink.fatal(new TidingsError(message.code, message.message, { status: message.status }));
          }
        }
    }
  }
}

const links = new Map();

function sharingAvailable() {
  return (
    typeof BroadcastChannel === "function" &&
    typeof navigator !== "undefined" &&
    navigator.locks &&
    typeof navigator.locks.request === "function"
  );
}

function linkFor(settings) {
  const shared = Boolean(settings.share) && sharingAvailable();
  const name = `${shared ? "shared" : "direct"} ${settings.root}`;
  let link = links.get(name);
  if (!link) {
    link = shared ? new SharedLink(settings.root) : new DirectLink();
    links.set(name, link);
  }
  return link;
}

/**
 * A subscriber's end of a stream: what the pool calls. `joined` comes first, with the
 * stream's state and the events to catch up on.
 */
function sinkOf(target) {
  return {
    joined: (key, state, events) => {
      target.streamState(state);
      for (const event of events) target.event(event.type, event.data, event.id, event.time ?? null);
    },
    event: (type, data, id, time) => target.event(type, data, id, time),
    state: (state) => target.streamState(state),
    fatal: (error) => target.fatal(error),
    reconnect: () => target.reconnected(),
  };
}

// -- task progress ---------------------------------------------------------------------------

/**
 * @typedef {object} ProgressHandlers
 * @property {(progress: object) => void} [onProgress] each `task_progress`: `{task_id,
 *   status, progress, current, total, total_files, message, rate, eta, sequence}`
 * @property {(file: object) => void} [onFileUpdate] each `file_update`: `{task_id, file_id,
 *   filename, status, progress, message, sequence}`
 * @property {(done: object) => void} [onComplete] `task_completed`: `{task_id, job_id,
 *   result, processing_time, sequence}`
 * @property {(error: TidingsError) => void} [onError] the task failed (`code`
 *   `task_failed`, the payload in `data`), was cancelled (`task_cancelled`, unless
 *   `onCancel` is given) or deleted, or the hub refused the stream (`task_not_found`,
 *   `unauthenticated`, ...). The stream is closed after it.
 * @property {(cancelled: object) => void} [onCancel] `task_cancelled`: `{task_id, reason,
 *   sequence}`
 * @property {(kind: string, data: object, type: string) => void} [onTaskUpdate] every task
 *   event: kind `progress`, `file`, `completed`, `failed`, `cancelled` or `deleted`
 * @property {(readyState: number) => void} [onStateChange] the stream connects, opens or
 *   closes
 */

/**
 * @typedef {object} ProgressStream
 * @property {string} taskId
 * @property {() => void} close stop this call's handlers; the hub stream closes with the
 *   last call of the page that watches the task
 * @property {() => number} readyState `CONNECTING` (0), `OPEN` (1) or `CLOSED` (2)
 * @property {() => string} lastEventId the id of the last event taken
 * @property {() => {received: number, delivered: number, dropped: number, reconnects: number}} stats
 * @property {() => {progress: object | null, files: object[], end: {type: string, data: object} | null}} state
 *   the task as last seen
 */

const progressStreams = new Map();

/**
 * Watch a task: `GET {baseUrl}/tasks/{taskId}/stream`.
 *
 * The first events are the task's state (its progress, then one file update per file),
 * so a late joiner never shows an empty bar; then each change as it happens; then
 * `onComplete` or `onError`, after which the stream closes itself. A second call for the
 * same task while it is open shares the same hub stream (its handlers get the current state
 * at once); each call has its own controller, and closing one leaves the others open.
 *
 * @param {string} taskId
 * @param {ProgressHandlers} [handlers]
 * @param {Options & {lastEventId?: string}} [options] `lastEventId` resumes after that id
 *   (default: the one kept in sessionStorage)
 * @returns {ProgressStream}
 */
export function createProgressStream(taskId, handlers = {}, options = {}) {
  if (typeof taskId !== "string" || taskId === "") {
    throw new TypeError("tidings: createProgressStream needs a task id");
  }
  const settings = settingsOf(options);
  const key = `${settings.root} ${taskId}`;
  const existing = progressStreams.get(key);
  if (existing) return existing.attach(handlers);
  const task = new TaskWatch(taskId, settings, key);
  progressStreams.set(key, task);
  const controller = task.attach(handlers);
  task.start(options.lastEventId);
  return controller;
}

class TaskWatch {
  constructor(taskId, settings, key) {
    this.taskId = taskId;
    this.settings = settings;
    this.key = key;
    this.handlerSets = [];
    this.started = false;
    this.closed = false;
    this.stateOfStream = CONNECTING;
    this.counts = { received: 0, delivered: 0, dropped: 0, reconnects: 0 };
    this.saver = new Saver(`tidings:task:${settings.root}:${taskId}`, () => this.state.toJSON());
    this.state = new TaskState(settings.persist ? this.saver.load() : null);
    this.link = null;
    this.subId = null;
  }

  /** A caller's own controller over this watch: its handlers, its `close()`. */
  attach(handlers) {
    // An object of this call's own (the handlers are read through it), so the same
    // handlers given twice are still two callers.
    const set = Object.create(handlers || {});
    this.handlerSets.push(set);
    if (this.started) queueMicrotask(() => this.replay([set]));
    return Object.freeze({
      taskId: this.taskId,
      close: () => this.detach(set),
      readyState: () => (this.closed || !this.handlerSets.includes(set) ? CLOSED : this.stateOfStream),
      lastEventId: () => this.state.id,
      stats: () => ({ ...this.counts }),
      state: () => ({
        progress: this.state.progress ? parse(this.state.progress.data) : null,
        files: [...this.state.files.values()].map((frame) => parse(frame.data)),
        end: this.state.end ? { type: this.state.end.type, data: parse(this.state.end.data) } : null,
      }),
    });
  }

  /** One caller closes: its handlers hear nothing more; the last one closes the stream. */
  detach(set) {
    const at = this.handlerSets.indexOf(set);
    if (this.closed || at < 0) return;
    if (this.handlerSets.length === 1) {
      this.close();
      return;
    }
    this.handlerSets.splice(at, 1);
    if (this.stateOfStream !== CLOSED) call(set.onStateChange, CLOSED);
  }

  start(lastEventId) {
    this.started = true;
    if (this.state.frames().length > 0) {
      const sets = [...this.handlerSets];
      queueMicrotask(() => this.replay(sets));
    }
    if (this.state.end) {
      // Restored after the task ended (the page went away right after its last event).
      queueMicrotask(() => this.finish(true));
      return;
    }
    this.resumeId = lastEventId || "";
    const settings = this.settings;
    const token = tokenKey(settings.token);
    const timed = settings.times ? "?time=1" : "";
    const url = `${settings.root}/tasks/${encodeURIComponent(this.taskId)}/stream${timed}`;
    const transport = settings.transport === "fetch" ? "fetch" : "eventsource";
    const describe = () => ({
      kind: "task",
      key: [url, transport, token, settings.withCredentials].join(" "),
      url,
      transport,
      types: TASK_TYPES,
      token: settings.token,
      withCredentials: Boolean(settings.withCredentials),
      backoff: settings.backoff,
      lastEventId: this.resumeId || this.state.id,
      state: this.state.toJSON(),
    });
    this.link = linkFor(settings);
    this.subId = this.link.open(describe, sinkOf(this));
  }

  /** Give handler sets that joined late the state as it is now. */
  replay(sets) {
    if (this.closed) return;
    const open = sets.filter((set) => this.handlerSets.includes(set));
    for (const frame of this.state.frames()) {
      const payload = parse(frame.data);
      for (const set of open) deliver(set, frame.type, payload);
    }
  }

  event(type, data, id) {
    if (this.closed) return;
    this.counts.received += 1;
    this.resumeId = ""; // an explicit lastEventId only places the first connection
    const payload = this.state.accept(type, data, id);
    if (payload === DROPPED) {
      this.counts.dropped += 1;
      return;
    }
    this.counts.delivered += 1;
    if (this.settings.persist) this.saver.schedule();
    for (const set of [...this.handlerSets]) {
      if (this.handlerSets.includes(set)) deliver(set, type, payload); // not if closed by another
    }
    if (END_TYPES.has(type)) this.finish(true);
  }

  streamState(state) {
    if (this.closed || state === this.stateOfStream) return;
    this.stateOfStream = state;
    for (const set of [...this.handlerSets]) call(set.onStateChange, state);
  }

  reconnected() {
    this.counts.reconnects += 1;
  }

  fatal(error) {
    if (this.closed) return;
    for (const set of [...this.handlerSets]) call(set.onError, error);
    this.finish(true);
  }

  /** Closed for good; `forget` drops the saved state (the task is over or refused). */
  finish(forget) {
    if (this.closed) return;
    this.closed = true;
    progressStreams.delete(this.key);
    if (this.link && this.subId !== null) this.link.close(this.subId);
    if (forget) this.saver.clear();
    else if (this.settings.persist) this.saver.flush();
    if (this.stateOfStream === CLOSED) return; // already told (a refused stream)
    this.stateOfStream = CLOSED;
    for (const set of [...this.handlerSets]) call(set.onStateChange, CLOSED);
  }

  close() {
    this.finish(false);
  }
}

function tokenKey(token) {
  if (typeof token === "function") return `fn:${uniqueId()}`; // never shared
  return token ? `token:${token}` : "";
}

function deliver(set, type, payload) {
  let kind;
  if (type === "task_progress") {
    kind = "progress";
    call(set.onProgress, payload);
  } else if (type === "file_update") {
    kind = "file";
    call(set.onFileUpdate, payload);
  } else if (type === "task_completed") {
    kind = "completed";
    call(set.onComplete, payload);
  } else if (type === "task_failed") {
    kind = "failed";
    call(set.onError, new TidingsError("task_failed", payload.error || "the task failed", { data: payload }));
  } else if (type === "task_cancelled") {
    kind = "cancelled";
    if (typeof set.onCancel === "function") call(set.onCancel, payload);
    else call(set.onError, new TidingsError("task_cancelled", payload.reason || "the task was cancelled", { data: payload }));
  } else if (type === "task_deleted") {
    kind = "deleted";
    call(set.onError, new TidingsError("task_deleted", payload.reason || "the task was deleted", { data: payload }));
  } else {
    return;
  }
  call(set.onTaskUpdate, kind, payload, type);
}

// -- topics -----------------------------------------------------------------------------------

/**
 * @typedef {object} TopicEvent
 * @property {string} type the SSE event type
 * @property {string} id the event id
 * @property {any} data the payload, parsed from JSON (the raw text if it is not JSON)
 * @property {number | null} time when the hub took the publish, in Unix milliseconds (its
 *   `time:` field); `null` over EventSource, which does not expose it, and for the
 *   hub's own events (`gap`)
 */

/**
 * @typedef {object} Subscription
 * @property {() => void} close
 * @property {() => number} readyState `CONNECTING` (0), `OPEN` (1) or `CLOSED` (2)
 * @property {() => string} lastEventId the id of the last event received
 */

/**
 * Subscribe to topics: `GET {baseUrl}/events?topic=...`.
 *
 * `handlers` maps event types to functions called with `(data, event)`; `"*"` is called
 * for every event. The hub's own types arrive the same way: `gap` (history could not
 * cover a resume; refetch state) and `auth_expired`.
 *
 * @example
 * subscribe(["chat/general", "users/42/**"], {
 *   chat_message: (data) => addLine(data.text),
 *   gap: () => reloadMessages(),
 * });
 *
 * @param {string | string[]} topics topics or patterns (`*`, a final `**`); at most 32
 * @param {Record<string, (data: any, event: TopicEvent) => void>} [handlers]
 * @param {Options & {lastEventId?: string, types?: string[],
 *   onStateChange?: (readyState: number) => void,
 *   onError?: (error: TidingsError) => void}} [options]
 *   `lastEventId` resumes after that id (default: the one kept in sessionStorage for
 *   these topics); `types` lists more types for EventSource to listen for; `onError`
 *   hears of a refused stream (bad topic, 401, 403), which is then closed.
 * @returns {Subscription}
 */
export function subscribe(topics, handlers = {}, options = {}) {
  const list = typeof topics === "string" ? [topics] : [...topics];
  if (list.length === 0 || list.some((topic) => typeof topic !== "string" || topic === "")) {
    throw new TypeError("tidings: subscribe needs one or more topics");
  }
  return new TopicWatch(list, handlers || {}, settingsOf(options), options).controller;
}

class TopicWatch {
  constructor(topics, handlers, settings, options) {
    this.handlers = handlers;
    this.options = options;
    this.settings = settings;
    this.closed = false;
    this.stateOfStream = CONNECTING;
    const sorted = [...topics].sort();
    this.saver = new Saver(`tidings:events:${settings.root}:${sorted.join(" ")}`, () => this.lastId);
    this.lastId = options.lastEventId || (settings.persist ? this.saver.load() : null) || "";
    let transport = settings.transport;
    if (transport === "auto") transport = "*" in handlers && !options.types ? "fetch" : "eventsource";
    const types = [
      ...new Set([...Object.keys(handlers).filter((type) => type !== "*"), ...HUB_TYPES, ...(options.types || [])]),
    ].sort();
    const timed = settings.times ? "&time=1" : "";
    const query = topics.map((topic) => `topic=${encodeURIComponent(topic)}`).join("&") + timed;
    const url = `${settings.root}/events?${query}`;
    const token = tokenKey(settings.token);
    const describe = () => ({
      kind: "topics",
      key: [url, transport, types.join(","), token, settings.withCredentials].join(" "),
      url,
      transport,
      types,
      token: settings.token,
      withCredentials: Boolean(settings.withCredentials),
      backoff: settings.backoff,
      lastEventId: this.lastId,
    });
    this.link = linkFor(settings);
    this.subId = this.link.open(describe, sinkOf(this));
    this.controller = Object.freeze({
      close: () => this.close(),
      readyState: () => (this.closed ? CLOSED : this.stateOfStream),
      lastEventId: () => this.lastId,
    });
  }

  event(type, data, id, time) {
    if (this.closed || (id && id === this.lastId)) return;
    if (id) {
      this.lastId = id;
      if (this.settings.persist) this.saver.schedule();
    }
    const payload = parse(data);
    const event = Object.freeze({ type, id, data: payload, time: time ?? null });
    call(this.handlers[type], payload, event);
    call(this.handlers["*"], payload, event);
  }

  streamState(state) {
    if (this.closed || state === this.stateOfStream) return;
    this.stateOfStream = state;
    call(this.options.onStateChange, state);
  }

  reconnected() {}

  fatal(error) {
    if (this.closed) return;
    call(this.options.onError, error);
    this.close();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.link.close(this.subId);
    if (this.settings.persist && this.lastId) this.saver.flush();
    if (this.stateOfStream === CLOSED) return; // already told (a refused stream)
    this.stateOfStream = CLOSED;
    call(this.options.onStateChange, CLOSED);
  }
}
