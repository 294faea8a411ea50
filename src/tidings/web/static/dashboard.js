/**
 * @file The tidings dashboard (`GET /`): hub counters with a chart of events per second,
 * tasks with their progress, one task's files, and a live event feed.
 *
 * Built on tidings.js like any other page. It reads what the viewer may read: with auth
 * on, the token given in the page (kept in sessionStorage) or the `tidings_token` cookie
 * decides; the hub filters `/tasks` by principal, answers `/stats` to admins only and
 * refuses topics the token does not grant. Everything is written with `textContent`,
 * never parsed as HTML: event data is untrusted.
 */

import { CONNECTING, OPEN, createProgressStream, subscribe } from "./tidings.js";

/** The hub: the directory this page is served from (`/`, or an app's prefix). */
const ROOT = new URL(".", location.href).href.replace(/\/+$/, "");
const TOKEN_KEY = "tidings:dashboard:token";
const TOPICS_KEY = "tidings:dashboard:topics";
const STATS_EVERY_MS = 1000;
const STATS_REFUSED_MS = 30000;
const TASKS_EVERY_MS = 2000;
const TASK_LIMIT = 30;
const FEED_LIMIT = 200;
const CHART_POINTS = 60;
const ACTIVE = new Set(["pending", "running"]);
const FILE_ICONS = { pending: "○", processing: "◐", completed: "✓", failed: "✕" };

const $ = (id) => document.getElementById(id);

const view = {
  token: readSession(TOKEN_KEY) || "",
  generation: 0,
  tasks: new Map(),
  taskItems: new Map(),
  selected: null,
  pinned: false,
  watch: null,
  announced: { id: null, status: null, step: -1 },
  feed: null,
  topics: [],
  paused: false,
  held: 0,
  rows: [],
  samples: [],
  last: null,
  statsOk: true,
  frame: 0,
};

// -- helpers ------------------------------------------------------------------------------

function readSession(key) {
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

function writeSession(key, value) {
  try {
    if (value) sessionStorage.setItem(key, value);
    else sessionStorage.removeItem(key);
  } catch {
    // Storage disabled: the page still works, it just forgets on reload.
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

function count(value) {
  return typeof value === "number" ? integer.format(value) : "–";
}

const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

/** A counter card: 1.4M rather than a number too wide for it; the exact one on hover. */
function showCount(id, value) {
  const card = $(id);
  card.textContent = typeof value === "number" && value >= 100_000 ? compact.format(value) : count(value);
  card.title = count(value);
}

function rate(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return `${value >= 100 ? integer.format(value) : decimal.format(value)}/s`;
}

function duration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(s / 3600);
  return h < 48 ? `${h}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m` : `${Math.floor(h / 24)}d`;
}

function percent(task) {
  const value = Number(task.progress) || 0;
  return Math.max(0, Math.min(100, value));
}

function titleOf(task) {
  return task.title || task.task_id;
}

/** The claims of a JWT, read without checking it: only to choose default topics. */
function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")), (c) =>
      c.charCodeAt(0),
    );
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function defaultTopics() {
  const claims = view.token ? claimsOf(view.token) : null;
  if (!claims) return ["**"];
  const topics = [];
  if (typeof claims.sub === "string") topics.push(`users/${claims.sub}/**`);
  const granted = claims.tidings && Array.isArray(claims.tidings.subscribe) ? claims.tidings.subscribe : [];
  topics.push(...granted.filter((topic) => typeof topic === "string"));
  const unique = [...new Set(topics)].slice(0, 32);
  return unique.length ? unique : ["**"];
}

function announce(text) {
  const region = $("announcer");
  region.textContent = "";
  // A new text node in a later task, so screen readers announce a repeated text too.
  setTimeout(() => (region.textContent = text), 50);
}

function streamOptions() {
  // With a token, streams go over fetch() so it travels in a header, never in a URL.
  return view.token ? { baseUrl: ROOT, token: view.token, transport: "fetch" } : { baseUrl: ROOT };
}

// -- the hub's JSON API --------------------------------------------------------------------

async function api(path) {
  const headers = view.token ? { Authorization: `Bearer ${view.token}` } : {};
  const response = await fetch(ROOT + path, { headers, cache: "no-store", credentials: "same-origin" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401) {
    askForToken(body && body.error ? body.error.message : "");
  }
  return { status: response.status, body };
}

function askForToken(reason) {
  stop();
  clearView();
  const form = $("auth");
  form.hidden = false;
  $("auth-note").textContent = view.token
    ? `The hub refused this token${reason ? `: ${reason}` : ""}. Paste another one.`
    : "This hub requires a token. Paste one (e.g. from `tidings token`) to sign in.";
  $("auth-note").classList.add("error");
  setStatus("closed", "Signed out");
  $("token").focus();
}

/** Forget what the last token showed: a signed-out screen (a token that expired, or
 * Sign out on a shared screen) keeps no counters, tasks or events of it. */
function clearView() {
  view.tasks.clear();
  view.selected = null;
  view.pinned = false;
  view.rows = [];
  view.samples = [];
  view.last = null;
  for (const card of document.querySelectorAll("[id^='stat-']")) card.textContent = "–";
  $("stats-note").hidden = true;
  $("feed").replaceChildren();
  $("feed-status").classList.remove("error");
  $("feed-status").textContent = "Signed out: sign in to see events.";
  tasksNote("Signed out: sign in to see tasks.");
  render();
  drawChart();
}

/** The note over an empty task list: `text`, or the page's own (`null`). */
function tasksNote(text) {
  const note = $("tasks-note");
  view.tasksNote ??= [...note.childNodes].map((node) => node.cloneNode(true));
  if (text === null) note.replaceChildren(...view.tasksNote.map((node) => node.cloneNode(true)));
  else note.textContent = text;
}

function showSignedIn() {
  const form = $("auth");
  const claims = view.token ? claimsOf(view.token) : null;
  form.hidden = !view.token;
  $("forget").hidden = !view.token;
  $("auth-note").classList.remove("error");
  $("auth-note").textContent = claims && claims.sub ? `Signed in as ${claims.sub}.` : "";
  $("token").value = "";
  $("token").placeholder = view.token ? "paste another token" : "paste a JWT";
}

// -- start and stop -----------------------------------------------------------------------

function start() {
  view.generation += 1;
  const generation = view.generation;
  showSignedIn();
  view.tasks.clear();
  renderTasks();
  const saved = readSession(TOPICS_KEY);
  view.topics = saved ? saved.split(" ") : defaultTopics();
  $("feed-topics").value = view.topics.join(" ");
  pollStats(generation);
  pollTasks(generation);
  openFeed();
}

function stop() {
  view.generation += 1;
  if (view.feed) view.feed.close();
  view.feed = null;
  if (view.watch) view.watch.close();
  view.watch = null;
}

function live(generation) {
  return generation === view.generation;
}

// -- counters and the chart ----------------------------------------------------------------

async function pollStats(generation) {
  if (!live(generation)) return;
  let next = STATS_EVERY_MS;
  try {
    const { status, body } = await api("/stats");
    if (!live(generation)) return;
    if (status === 200) {
      showStats(body);
    } else if (status === 403) {
      statsNote("Hub counters are for admins: sign in with an admin token to see them.");
      next = STATS_REFUSED_MS; // it will not change until another token is given
    } else if (status !== 401) {
      statsNote(`The hub answered ${status} to /stats.`);
    }
    if (view.feed && view.feed.readyState() === OPEN) setStatus("open", "Live");
  } catch {
    if (!live(generation)) return;
    setStatus("closed", "Hub unreachable");
  }
  if (live(generation)) setTimeout(() => pollStats(generation), next);
}

function statsNote(text) {
  const note = $("stats-note");
  note.hidden = false;
  note.textContent = text;
  view.statsOk = false;
}

function showStats(stats) {
  if (!view.statsOk) {
    $("stats-note").hidden = true;
    view.statsOk = true;
  }
  const now = performance.now();
  const published = stats.events.published;
  const delivered = stats.events.delivered;
  showCount("stat-connections", stats.connections.total);
  showCount("stat-published", published);
  showCount("stat-delivered", delivered);
  showCount("stat-dropped", stats.events.dropped);
  $("stat-dropped").title += `; ${count(stats.events.slow_disconnects)} slow clients disconnected`;
  showCount("stat-tasks", stats.tasks.active);
  $("stat-uptime").textContent = duration(stats.uptime_seconds);
  const last = view.last;
  if (last && now > last.at && published >= last.published) {
    const seconds = (now - last.at) / 1000;
    view.samples.push({
      published: (published - last.published) / seconds,
      delivered: Math.max(0, delivered - last.delivered) / seconds,
    });
    if (view.samples.length > CHART_POINTS) view.samples.shift();
    $("stat-rate").textContent = rate(view.samples.at(-1).published);
  }
  view.last = { at: now, published, delivered };
  drawChart();
}

function niceCeiling(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const samples = view.samples;
  const peak = Math.max(0, ...samples.map((s) => Math.max(s.published, s.delivered)));
  const top = niceCeiling(peak);
  const left = 44;
  const plotTop = 8;
  const plotBottom = height - 6;
  const plotWidth = width - left - 4;
  const y = (value) => plotBottom - (value / top) * (plotBottom - plotTop);
  ctx.font = `11px ${css.getPropertyValue("--mono")}`;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.lineWidth = 1;
  for (const fraction of [0, 0.5, 1]) {
    const value = top * fraction;
    const at = Math.round(y(value)) + 0.5;
    ctx.strokeStyle = color("--line");
    ctx.beginPath();
    ctx.moveTo(left, at);
    ctx.lineTo(width - 4, at);
    ctx.stroke();
    ctx.fillStyle = color("--muted");
    ctx.fillText((Number.isInteger(value) ? integer : decimal).format(value), left - 6, at);
  }
  const step = plotWidth / (CHART_POINTS - 1);
  const offset = CHART_POINTS - samples.length;
  for (const [name, key] of [["--delivered", "delivered"], ["--published", "published"]]) {
    if (samples.length < 2) break;
    ctx.strokeStyle = color(name);
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.beginPath();
    samples.forEach((sample, i) => {
      const x = left + (offset + i) * step;
      if (i === 0) ctx.moveTo(x, y(sample[key]));
      else ctx.lineTo(x, y(sample[key]));
    });
    ctx.stroke();
  }
  const now = samples.at(-1);
  canvas.setAttribute(
    "aria-label",
    now
      ? `Events per second over the last minute: now ${rate(now.published)} published and ` +
          `${rate(now.delivered)} delivered; peak ${rate(peak)}.`
      : "Events per second: no data yet",
  );
}

// -- tasks --------------------------------------------------------------------------------

async function pollTasks(generation) {
  if (!live(generation)) return;
  try {
    const { status, body } = await api(`/tasks?limit=${TASK_LIMIT}`);
    if (!live(generation)) return;
    if (status === 200) {
      tasksNote(null);
      mergeTasks(body.tasks);
    } else if (status !== 401) tasksNote(`The hub answered ${status} to /tasks.`);
  } catch {
    // Unreachable: the status pill says so; try again on the next round.
  }
  if (live(generation)) setTimeout(() => pollTasks(generation), TASKS_EVERY_MS);
}

function mergeTasks(list) {
  const listed = new Set();
  for (const task of list) {
    listed.add(task.task_id);
    mergeTask(task);
  }
  for (const id of [...view.tasks.keys()]) {
    if (!listed.has(id) && id !== view.selected) view.tasks.delete(id);
  }
  render();
}

/** Fold a task event (from the feed or the selected task's stream) into the task. */
function applyTaskEvent(type, data) {
  if (!data || typeof data.task_id !== "string") return;
  let task = view.tasks.get(data.task_id);
  if (!task) {
    if (type === "task_deleted") return;
    task = { task_id: data.task_id, status: "running", progress: 0, files: {}, sequence: -1 };
    view.tasks.set(data.task_id, task);
    fetchTask(data.task_id, view.generation);
  }
  if (typeof data.sequence === "number") {
    if (data.sequence < task.sequence) return;
    task.sequence = data.sequence;
  }
  if (type === "task_progress") {
    for (const field of ["status", "progress", "current", "total", "message", "rate", "eta"]) {
      if (field in data) task[field] = data[field];
    }
  } else if (type === "file_update") {
    task.files = { ...task.files };
    task.files[data.file_id] = {
      file_id: data.file_id,
      filename: data.filename,
      status: data.status,
      progress: data.progress,
      message: data.message,
    };
  } else if (type === "task_completed") {
    Object.assign(task, { status: "completed", result: data.result, eta: 0 });
  } else if (type === "task_failed") {
    Object.assign(task, { status: "failed", error: data.error, details: data.details });
  } else if (type === "task_cancelled") {
    Object.assign(task, { status: "cancelled", error: data.reason });
  } else if (type === "task_deleted") {
    view.tasks.delete(data.task_id);
  } else {
    return;
  }
  if (!ACTIVE.has(task.status) && !task.finished_at) task.finished_at = Date.now() / 1000;
  render();
}

/** A task first seen through an event: its JSON (title, times) at once, not at the next poll. */
async function fetchTask(id, generation) {
  try {
    const { status, body } = await api(`/tasks/${encodeURIComponent(id)}`);
    if (status === 200 && live(generation)) mergeTask(body);
  } catch {
    // The next poll brings it.
  }
}

function mergeTask(task) {
  const known = view.tasks.get(task.task_id);
  if (!known || (task.sequence ?? 0) >= (known.sequence ?? -1)) {
    view.tasks.set(task.task_id, task);
  } else {
    // Events made it first: keep their state, take what only the JSON has.
    for (const field of ["title", "created_at", "started_at", "owner", "metadata"]) {
      if (known[field] === undefined) known[field] = task[field];
    }
  }
  render();
}

function sortedTasks() {
  return [...view.tasks.values()].sort((a, b) => {
    const active = Number(ACTIVE.has(b.status)) - Number(ACTIVE.has(a.status));
    return active || (b.created_at || 0) - (a.created_at || 0);
  });
}

function render() {
  if (view.frame) return;
  view.frame = requestAnimationFrame(() => {
    view.frame = 0;
    renderTasks();
    renderDetail();
    flushFeed();
  });
}

function renderTasks() {
  const tasks = sortedTasks();
  const list = $("task-list");
  $("tasks-note").hidden = tasks.length > 0;
  $("tasks-count").textContent = tasks.length ? `(${tasks.length})` : "";
  const keep = new Set(tasks.map((task) => task.task_id));
  for (const [id, item] of view.taskItems) {
    if (!keep.has(id)) {
      item.root.remove();
      view.taskItems.delete(id);
    }
  }
  tasks.forEach((task, index) => {
    let item = view.taskItems.get(task.task_id);
    if (!item) {
      item = taskItem(task.task_id);
      view.taskItems.set(task.task_id, item);
    }
    if (list.children[index] !== item.root) list.insertBefore(item.root, list.children[index] || null);
    updateTaskItem(item, task);
  });
  if (!view.pinned) autoSelect(tasks);
}

function taskItem(id) {
  const root = element("li");
  const button = element("button", "task");
  button.type = "button";
  button.addEventListener("click", () => select(id, true));
  const head = element("span", "task-head");
  const title = element("span", "task-title");
  const badge = element("span", "badge");
  head.append(title, badge);
  const bar = element("span", "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  const fill = element("span", "fill");
  bar.append(fill);
  const meta = element("span", "task-meta");
  const pct = element("span", "task-percent");
  const done = element("span");
  const speed = element("span");
  const eta = element("span");
  const message = element("span", "message");
  meta.append(pct, done, speed, eta, message);
  button.append(head, bar, meta);
  root.append(button);
  return { root, button, title, badge, bar, fill, pct, done, speed, eta, message };
}

function updateTaskItem(item, task) {
  const value = percent(task);
  const shown = `${Math.floor(value)}%`;
  item.button.setAttribute("aria-current", String(task.task_id === view.selected));
  item.title.textContent = titleOf(task);
  item.title.title = task.task_id;
  item.badge.textContent = task.status;
  item.badge.dataset.status = task.status;
  item.bar.dataset.status = task.status;
  item.bar.setAttribute("aria-valuenow", String(Math.round(value)));
  item.bar.setAttribute("aria-label", `${titleOf(task)} progress`);
  item.bar.setAttribute("aria-valuetext", `${shown}${task.message ? `, ${task.message}` : ""}`);
  item.fill.style.width = `${value}%`;
  item.pct.textContent = shown;
  item.done.textContent = typeof task.total === "number" ? `${count(task.current ?? 0)} / ${count(task.total)}` : "";
  const running = task.status === "running";
  item.speed.textContent = running && task.rate ? rate(task.rate) : "";
  item.eta.textContent = running && typeof task.eta === "number" ? `ETA ${duration(task.eta)}` : "";
  item.message.textContent = task.status === "failed" || task.status === "cancelled" ? task.error || "" : task.message || "";
}

function autoSelect(tasks) {
  const current = view.tasks.get(view.selected);
  if (current && ACTIVE.has(current.status)) return;
  const next = tasks.find((task) => ACTIVE.has(task.status) && Object.keys(task.files || {}).length) ||
    tasks.find((task) => ACTIVE.has(task.status)) ||
    (current ? null : tasks[0]);
  if (next && next.task_id !== view.selected) select(next.task_id, false);
}

function select(id, byUser) {
  if (byUser) view.pinned = true;
  if (view.selected === id && view.watch) return;
  view.selected = id;
  if (view.watch) view.watch.close();
  view.watch = createProgressStream(
    id,
    {
      onTaskUpdate: (kind, data, type) => applyTaskEvent(type, data),
      onError: (error) => {
        if (error.code === "task_failed" || error.code === "task_cancelled") return; // shown as state
        const task = view.tasks.get(id);
        if (task && error.code === "task_not_found") view.tasks.delete(id);
        render();
      },
    },
    streamOptions(),
  );
  render();
}

function renderDetail() {
  const task = view.tasks.get(view.selected);
  $("detail").hidden = !task;
  $("detail-empty").hidden = Boolean(task);
  if (!task) return;
  const value = percent(task);
  $("detail-name").textContent = titleOf(task);
  $("detail-id").textContent = task.task_id;
  const badge = $("detail-status");
  badge.textContent = task.status;
  badge.dataset.status = task.status;
  const bar = $("detail-bar");
  bar.dataset.status = task.status;
  bar.setAttribute("aria-valuenow", String(Math.round(value)));
  bar.setAttribute("aria-valuetext", `${Math.floor(value)}%${task.message ? `, ${task.message}` : ""}`);
  bar.querySelector(".fill").style.width = `${value}%`;
  $("detail-percent").textContent = `${Math.floor(value)}%`;
  $("detail-message").textContent = task.message || "";
  $("detail-count").textContent =
    typeof task.total === "number" ? `${count(task.current ?? 0)} / ${count(task.total)}` : count(task.current);
  const running = task.status === "running";
  $("detail-rate").textContent = running ? rate(task.rate) : "–";
  $("detail-eta").textContent = running ? duration(task.eta) : "–";
  const started = task.started_at || task.created_at;
  const ended = ACTIVE.has(task.status) ? Date.now() / 1000 : task.finished_at;
  $("detail-elapsed").textContent = started && ended ? duration(ended - started) : "–";
  const outcome = $("detail-outcome");
  outcome.hidden = ACTIVE.has(task.status);
  outcome.dataset.status = task.status;
  if (task.status === "completed") {
    outcome.textContent = task.result === undefined || task.result === null
      ? "Completed."
      : `Completed: ${JSON.stringify(task.result)}`;
  } else if (task.status === "failed") {
    outcome.textContent = `Failed: ${task.error || "no reason given"}`;
  } else if (task.status === "cancelled") {
    outcome.textContent = `Cancelled${task.error ? `: ${task.error}` : "."}`;
  }
  renderFiles(task);
  announceProgress(task, value);
}

function renderFiles(task) {
  const files = Object.values(task.files || {});
  const list = $("files");
  $("files-empty").hidden = files.length > 0;
  const counts = { pending: 0, processing: 0, completed: 0, failed: 0 };
  for (const file of files) counts[file.status] = (counts[file.status] || 0) + 1;
  $("files-summary").textContent = files.length
    ? `${counts.completed} of ${files.length} done${counts.failed ? `, ${counts.failed} failed` : ""}`
    : "";
  if (list.dataset.task !== task.task_id) {
    list.replaceChildren();
    list.dataset.task = task.task_id;
  }
  const cells = new Map([...list.children].map((cell) => [cell.dataset.id, cell]));
  for (const file of files) {
    let cell = cells.get(file.file_id);
    if (!cell) {
      cell = element("li", "file");
      cell.dataset.id = file.file_id;
      cell.append(element("span", "icon"), element("span", "name"));
      cell.firstChild.setAttribute("aria-hidden", "true");
      list.append(cell);
    }
    const name = file.filename || file.file_id;
    cell.dataset.status = file.status;
    cell.firstChild.textContent = FILE_ICONS[file.status] || "•";
    cell.lastChild.textContent = name;
    cell.title = `${name}: ${file.status}${file.message ? ` (${file.message})` : ""}`;
    cell.setAttribute("aria-label", cell.title);
  }
}

function announceProgress(task, value) {
  const last = view.announced;
  const step = Math.floor(value / 25);
  if (last.id !== task.task_id) {
    view.announced = { id: task.task_id, status: task.status, step };
    return;
  }
  if (last.status !== task.status) {
    announce(`${titleOf(task)}: ${task.status}`);
  } else if (step > last.step && task.status === "running") {
    announce(`${titleOf(task)}: ${Math.floor(value)}%`);
  }
  view.announced = { id: task.task_id, status: task.status, step };
}

/** Once a second: what moves without events (elapsed time). */
function tick() {
  const task = view.tasks.get(view.selected);
  if (task && ACTIVE.has(task.status)) render();
}

// -- the live feed ------------------------------------------------------------------------

function openFeed() {
  if (view.feed) view.feed.close();
  const topics = view.topics;
  $("feed-status").classList.remove("error");
  $("feed-status").textContent = "Connecting…";
  view.feed = subscribe(topics, { "*": onFeedEvent }, {
    ...streamOptions(),
    times: true, // each row shows when the event was published (the hub's time: field)
    onStateChange: (state) => {
      if (state === OPEN) {
        setStatus("open", "Live");
        $("feed-status").textContent = `Streaming ${topics.join(" ")}`;
      } else if (state === CONNECTING) {
        setStatus("connecting", "Reconnecting…");
        $("feed-status").textContent = "Reconnecting…";
      }
    },
    onError: (error) => {
      if (error.status === 401) {
        askForToken(error.message);
        return;
      }
      setStatus("closed", "Feed refused");
      $("feed-status").classList.add("error");
      $("feed-status").textContent = `The hub refused these topics: ${error.message}`;
    },
  });
}

function onFeedEvent(data, event) {
  applyTaskEvent(event.type, data);
  if (view.paused) {
    view.held += 1;
    $("pause").textContent = `Resume (${count(view.held)} new)`;
    return;
  }
  // When it was published (the hub's `time:` field), not when it arrived: a resumed feed
  // replays what it missed, and those events are older than their arrival.
  view.rows.push({ event, received: Date.now() });
  if (view.rows.length > FEED_LIMIT) view.rows.shift();
  render();
}

const clock = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hourCycle: "h23",
});

/** The `<time>` of a feed row: the event's publish time, or (when the hub sent none, as
 * for its own `gap` events) the time it arrived, said so in its tooltip. */
function timeOf(event, received) {
  const published = typeof event.time === "number";
  const at = new Date(published ? event.time : received);
  const node = element("time", "", clock.format(at));
  node.dateTime = at.toISOString();
  node.title = published ? `published ${at.toISOString()}` : `received ${at.toISOString()} (no publish time)`;
  return node;
}

function kindOf(type) {
  if (/(_failed|_error|^error)$/.test(type) || type === "task_deleted") return "bad";
  if (/(_completed|_complete)$/.test(type)) return "ok";
  if (type === "gap" || type === "auth_expired" || type === "task_cancelled") return "warn";
  if (type.startsWith("task_") || type === "file_update") return "task";
  return "other";
}

/** A task event in words (the JSON is in the row's tooltip); `null` for other events. */
function summary(type, data) {
  if (!data || typeof data !== "object" || typeof data.task_id !== "string") return null;
  const task = view.tasks.get(data.task_id);
  const name = task && task.title ? task.title : data.task_id.slice(0, 12);
  if (type === "task_progress") {
    return `${name} · ${Math.floor(Number(data.progress) || 0)}%${data.message ? ` · ${data.message}` : ""}`;
  }
  if (type === "file_update") {
    return `${name} · ${data.filename || data.file_id} ${data.status}${data.message ? ` · ${data.message}` : ""}`;
  }
  if (type === "task_completed") return `${name} · ${JSON.stringify(data.result ?? null)}`;
  if (type === "task_failed") return `${name} · ${data.error}`;
  if (type === "task_cancelled" || type === "task_deleted") return `${name} · ${data.reason ?? ""}`;
  return null;
}

function flushFeed() {
  if (!view.rows.length) return;
  const list = $("feed");
  const fragment = document.createDocumentFragment();
  for (const { event, received } of view.rows.reverse()) {
    const row = element("li", "event fresh");
    row.dataset.kind = kindOf(event.type);
    const time = timeOf(event, received);
    const type = element("span", "type", event.type);
    const json = typeof event.data === "string" ? event.data : JSON.stringify(event.data);
    let text = summary(event.type, event.data) ?? json;
    if (text.length > 300) text = `${text.slice(0, 300)}…`;
    const data = element("span", "data", text);
    data.title = `id ${event.id}\n${json.length > 2000 ? `${json.slice(0, 2000)}…` : json}`;
    row.append(time, type, data);
    fragment.append(row);
  }
  view.rows = [];
  list.prepend(fragment);
  while (list.children.length > FEED_LIMIT) list.lastChild.remove();
}

function setStatus(state, text) {
  const pill = $("status");
  pill.dataset.state = state;
  pill.textContent = text;
}

// -- wiring ------------------------------------------------------------------------------------

function wire() {
  $("hub-url").textContent = ROOT;
  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    view.token = token;
    writeSession(TOKEN_KEY, token);
    writeSession(TOPICS_KEY, "");
    stop();
    start();
  });
  $("forget").addEventListener("click", () => {
    view.token = "";
    writeSession(TOKEN_KEY, "");
    writeSession(TOPICS_KEY, "");
    stop();
    start();
  });
  $("feed-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const topics = $("feed-topics").value.split(/[\s,]+/).filter(Boolean).slice(0, 32);
    if (!topics.length) return;
    view.topics = topics;
    writeSession(TOPICS_KEY, topics.join(" "));
    openFeed();
  });
  $("pause").addEventListener("click", () => {
    view.paused = !view.paused;
    const button = $("pause");
    button.setAttribute("aria-pressed", String(view.paused));
    button.textContent = view.paused ? "Resume" : "Pause";
    if (!view.paused) view.held = 0;
  });
  $("clear").addEventListener("click", () => {
    $("feed").replaceChildren();
    view.rows = [];
  });
  new ResizeObserver(() => drawChart()).observe($("chart"));
  setInterval(tick, 1000);
}

wire();
start();
