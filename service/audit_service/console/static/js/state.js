// The view: what the page shows, kept in the URL's query string so a view can be shared as a link (never the
// token). Pure: URL <-> view <-> the API's EventFilter.

const HOUR = 3600;
const DAY = 24 * HOUR;

export const PRESETS = {
  "24h": { interval: HOUR, buckets: 24 },
  "7d": { interval: 6 * HOUR, buckets: 28 },
  "30d": { interval: DAY, buckets: 30 },
};

// Bucket widths of a custom range: the smallest giving at most MAX_BUCKETS bars.
const CUSTOM_INTERVALS = [1, 5, 15, 60, 300, 900, HOUR, 3 * HOUR, 6 * HOUR, DAY, 7 * DAY, 30 * DAY];
const MAX_BUCKETS = 60;

export const CONDITION_FIELDS = [
  ["ACTION", "Action"], ["ACTOR_ID", "User id"], ["ACTOR_SLUG", "User slug"], ["ACTOR_EMAIL", "User email"],
  ["ACTOR_TYPE", "User type"], ["RESOURCE_TYPE", "Resource type"], ["RESOURCE_ID", "Resource id"],
  ["RESOURCE_NAME", "Resource name"], ["RESOURCE_FQN", "Resource FQN"],
  ["PARENT_RESOURCE_TYPE", "Parent resource type"], ["PARENT_RESOURCE_ID", "Parent resource id"],
  ["CLUSTER_ID", "Cluster"], ["WORKSPACE_ID", "Workspace"], ["OUTCOME", "Outcome"], ["TRACE_ID", "Trace id"],
  ["REQUEST_METHOD", "Request method"], ["REQUEST_ROUTE", "Request route"], ["IP_ADDRESS", "IP address"],
];

export const OPERATORS = [
  ["EQUAL", "is equal to"], ["NOT_EQUAL", "is not equal to"], ["IN", "is any of"], ["NOT_IN", "is none of"],
];

const TEXT_FIELDS = ["search", "q", "action", "resource_type", "user", "outcome"];
const OUTCOMES = ["OUTCOME_SUCCESS", "OUTCOME_FAILURE", "OUTCOME_DENIED"];
// The times a google.protobuf.Timestamp can hold (0001-01-01 to 9999-12-31), in ms since the epoch.
const EARLIEST_MS = -62135596800000;
const LATEST_MS = 253402300799000;

export function emptyView() {
  return { preset: "24h", from: "", to: "", search: "", q: "", action: "", resource_type: "", user: "",
    outcome: "", join: "ALL", conditions: [], group: "actor" };
}

/** The view a URL's query string describes (unknown or malformed parts fall back to their defaults). */
export function viewFromQuery(query) {
  const params = new URLSearchParams(query);
  const view = emptyView();
  const preset = params.get("preset");
  // Own keys only: "toString" or "__proto__" are in every object.
  if (Object.hasOwn(PRESETS, preset) || preset === "custom") view.preset = preset;
  for (const name of TEXT_FIELDS) view[name] = params.get(name) ?? "";
  if (!OUTCOMES.includes(view.outcome)) view.outcome = "";
  for (const name of ["from", "to"]) {
    const text = params.get(name) ?? "";
    if (!Number.isNaN(timeOf(text))) view[name] = text;
  }
  if (params.get("join") === "ANY") view.join = "ANY";
  if (params.get("group") === "action") view.group = "action";
  for (const text of params.getAll("cond")) {
    const condition = conditionFromText(text);
    if (condition) view.conditions.push(condition);
  }
  return view;
}

// A condition in the URL: FIELD~OPERATOR~value, with one ~value per value ("~" and "%" escaped as %7E, %25).
function conditionFromText(text) {
  const [field, operator, ...values] = text.split("~").map((part) => part.replaceAll("%7E", "~")
    .replaceAll("%25", "%"));
  if (!CONDITION_FIELDS.some(([name]) => name === field)) return null;
  if (!OPERATORS.some(([name]) => name === operator)) return null;
  return { field, operator, values };
}

function conditionText({ field, operator, values }) {
  return [field, operator, ...values].map((part) => part.replaceAll("%", "%25").replaceAll("~", "%7E"))
    .join("~");
}

/** The query string of a view (without its defaults). */
export function queryOf(view) {
  const params = new URLSearchParams();
  if (view.preset !== "24h") params.set("preset", view.preset);
  if (view.preset === "custom") {
    if (view.from) params.set("from", view.from);
    if (view.to) params.set("to", view.to);
  }
  for (const name of TEXT_FIELDS) if (view[name]) params.set(name, view[name]);
  if (view.conditions.length && view.join === "ANY") params.set("join", "ANY");
  for (const condition of view.conditions) params.append("cond", conditionText(condition));
  if (view.group !== "actor") params.set("group", view.group);
  const text = params.toString();
  return text ? `?${text}` : "";
}

function floorTo(seconds, width) {
  return Math.floor(seconds / width) * width;
}

// A time of the view in ms, or NaN (a default) when it is malformed or one the API cannot take.
function timeOf(text) {
  const ms = Date.parse(text);
  return ms >= EARLIEST_MS && ms <= LATEST_MS ? ms : NaN;
}

/**
 * The view's time range and histogram buckets: {start, end, interval} in seconds since the epoch. A preset ends
 * with the bucket holding `nowMs`, so the hourly count projection can answer it; a custom range is as given.
 */
export function rangeOf(view, nowMs) {
  const now = Math.floor(nowMs / 1000);
  const preset = PRESETS[view.preset];
  if (preset) {
    const end = floorTo(now, preset.interval) + preset.interval;
    return { start: end - preset.interval * preset.buckets, end, interval: preset.interval, open: true };
  }
  const start = timeOf(view.from);
  const end = timeOf(view.to);
  const startSeconds = Number.isNaN(start) ? floorTo(now, HOUR) - 23 * HOUR : Math.floor(start / 1000);
  let endSeconds = Number.isNaN(end) ? floorTo(now, HOUR) + HOUR : Math.ceil(end / 1000);
  if (endSeconds <= startSeconds) endSeconds = startSeconds + 1;
  const span = endSeconds - startSeconds;
  const interval = CUSTOM_INTERVALS.find((width) => span / width <= MAX_BUCKETS) ?? CUSTOM_INTERVALS.at(-1);
  return { start: startSeconds, end: endSeconds, interval, open: false };
}

export function isoOf(seconds) {
  return new Date(seconds * 1000).toISOString().replace(".000Z", "Z");
}

function listOf(text) {
  return text.split(",").map((item) => item.trim()).filter(Boolean);
}

function quoted(value) {
  return `"${value.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;
}

/**
 * The API's EventFilter (protobuf JSON) of a view. A preset's range is open at its end (events up to now and
 * those still arriving); `forTail` leaves the end out of a custom range too.
 */
export function eventFilterOf(view, nowMs, { forTail = false } = {}) {
  const range = rangeOf(view, nowMs);
  const filter = { startTime: isoOf(range.start) };
  if (!range.open && !forTail) filter.endTime = isoOf(range.end);
  if (view.search) filter.search = view.search;
  const actions = listOf(view.action);
  if (actions.length) filter.actions = actions;
  if (view.resource_type) filter.resourceType = view.resource_type;
  if (view.outcome) filter.outcomes = [view.outcome];
  // "User" matches an actor's id, slug or email: the query string's actor: field does exactly that. It goes
  // after the typed query, so positions in an error about the typed query stay right.
  const query = [view.q.trim(), view.user ? `actor:${quoted(view.user.trim())}` : ""].filter(Boolean).join(" ");
  if (query) filter.query = query;
  if (view.conditions.length) {
    filter.conditions = view.conditions.map(({ field, operator, values }) => ({
      field: `CONDITION_FIELD_${field}`, operator: `CONDITION_OPERATOR_${operator}`, values,
    }));
    filter.conditionJoin = `CONDITION_JOIN_${view.join}`;
  }
  return filter;
}
