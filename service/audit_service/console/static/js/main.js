// The Audit Logs page: wiring of the filters, the graph, the timeline, the details, export and live mode.

import { ConnectError } from "./connect.js";
import { detailsOf, revisionsOf } from "./details.js";
import { byId, el } from "./dom.js";
import { addCondition, readForm, writeForm } from "./filters.js";
import { drawGraph } from "./graph.js";
import { LiveTail } from "./live.js";
import { api, describe, signIn, signOut, takeTokenFromFragment, token } from "./session.js";
import { eventFilterOf, isoOf, queryOf, rangeOf, viewFromQuery } from "./state.js";
import { rowOf } from "./timeline.js";

const PAGE_SIZE = 50;
const MAX_ROWS = 500; // live mode keeps the newest MAX_ROWS rows: the page stays light at any event rate
const GROUP_BY = { actor: "GROUP_BY_ACTOR", action: "GROUP_BY_ACTION" };

const form = byId("filters");
const tbody = byId("events").tBodies[0];
let view = viewFromQuery(location.search);
let pages = [""]; // page tokens of the pages seen: pages.at(-1) is the current one
let nextToken = "";
let listed = []; // events of the current page
let liveEvents = []; // events received live, newest first
let loading = null;
let historyPage = null;

function showError(error) {
  const box = byId("error");
  if (!error) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  if (error.code === "unauthenticated" && token()) {
    showSignIn(describe(error)); // the sign-in says why
    return;
  }
  box.replaceChildren(describe(error));
  box.hidden = false;
}

function showSignIn(reason) {
  live.stop();
  byId("console").hidden = true;
  byId("caller").hidden = true;
  byId("sign-out").hidden = true;
  byId("sign-in").hidden = false;
  byId("sign-in-reason").replaceChildren(reason);
  byId("token").focus();
}

async function start() {
  takeTokenFromFragment();
  writeForm(form, view);
  byId("group-by").value = view.group;
  // With a token the view loads while GetCaller says who the caller is (a refused token fails both: the sign-in
  // says why); without one, GetCaller first tells whether the service wants a token at all.
  const loaded = token() ? load() : null;
  let caller;
  try {
    caller = await api.call("GetCaller", {});
  } catch (error) {
    loading?.abort();
    if (error.code === "unauthenticated") {
      showSignIn(token() ? describe(error) : "This service requires a bearer token.");
    } else {
      showError(error);
    }
    return;
  }
  byId("sign-in").hidden = true;
  byId("console").hidden = false;
  const callerText = caller.authenticated
    ? `${caller.subject} · tenant ${caller.tenant} · ${caller.admin ? "admin" : "member"}`
    : "authentication disabled: every tenant is visible";
  byId("caller").replaceChildren(callerText);
  byId("caller").hidden = false;
  byId("sign-out").hidden = !caller.authenticated;
  byId("scope-note").replaceChildren(caller.authenticated && !caller.admin
    ? "You see the events you performed (members see only their own)." : "");
  await (loaded ?? load());
}

function setView(next, { push = true } = {}) {
  view = next;
  const url = location.pathname + queryOf(view);
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  writeForm(form, view);
  byId("group-by").value = view.group;
  pages = [""];
  liveEvents = [];
  return load();
}

async function load() {
  loading?.abort();
  loading = new AbortController();
  const signal = loading.signal;
  showError(null);
  document.body.classList.add("busy");
  try {
    await Promise.all([loadTimeline(signal), loadGraph(signal)]);
  } catch (error) {
    if (!signal.aborted) {
      // Nothing of the previous view stays under the error: the rows and bars shown always match the filters.
      listed = [];
      liveEvents = [];
      renderRows();
      byId("chart").replaceChildren();
      byId("legend").replaceChildren();
      byId("total").replaceChildren();
      showError(error);
    }
  } finally {
    if (!signal.aborted) document.body.classList.remove("busy");
  }
  if (live.running) live.start(eventFilterOf(view, Date.now(), { forTail: true }));
}

async function loadTimeline(signal) {
  const request = { filter: eventFilterOf(view, Date.now()), pageSize: PAGE_SIZE };
  if (pages.at(-1)) request.pageToken = pages.at(-1);
  const response = await api.call("ListEvents", request, signal);
  if (signal.aborted) return;
  listed = response.events ?? [];
  nextToken = response.nextPageToken ?? "";
  renderRows();
  byId("older").disabled = !nextToken;
  byId("newer").disabled = pages.length <= 1;
  byId("timeline-title").dataset.loaded = String(Date.now());
  performance.mark("timeline-rendered"); // User Timing: what bench/console_render.py measures
}

let shown = new Set(); // event ids of the rows in the table

function renderRows() {
  shown = new Set();
  const rows = [];
  const events = pages.length === 1 ? [...liveEvents, ...listed] : listed;
  for (const event of events) {
    if (shown.has(event.eventId) || rows.length >= MAX_ROWS) continue;
    shown.add(event.eventId);
    rows.push(rowOf(event, openEvent));
  }
  tbody.replaceChildren(...rows);
  byId("empty").hidden = rows.length > 0;
}

/** Puts live events (newest first) at the top and drops the oldest rows beyond MAX_ROWS: a few rows of DOM work
 * per frame, whatever the event rate. */
function prependRows(events) {
  const rows = [];
  for (const event of events) {
    if (shown.has(event.eventId)) continue;
    shown.add(event.eventId);
    rows.push(rowOf(event, openEvent));
  }
  tbody.prepend(...rows.slice(0, MAX_ROWS));
  while (tbody.rows.length > MAX_ROWS) {
    shown.delete(tbody.lastElementChild.dataset.eventId);
    tbody.lastElementChild.remove();
  }
  byId("empty").hidden = tbody.rows.length > 0;
}

async function loadGraph(signal) {
  const range = rangeOf(view, Date.now());
  const filter = { ...eventFilterOf(view, Date.now()), startTime: isoOf(range.start), endTime: isoOf(range.end) };
  const response = await api.call("CountEvents",
    { filter, interval: `${range.interval}s`, groupBy: GROUP_BY[view.group] }, signal);
  if (signal.aborted) return;
  byId("total").replaceChildren(`${Number(response.total ?? 0).toLocaleString()} events in the graph's range`);
  drawGraph(byId("chart"), byId("legend"), response, range, {
    onBucket: (startSeconds, endSeconds) => setView({ ...view, preset: "custom", from: isoOf(startSeconds),
      to: isoOf(endSeconds) }),
    onSeries: (key) => setView(view.group === "action" ? { ...view, action: key } : { ...view, user: key }),
  });
  byId("chart").dataset.loaded = String(Date.now());
  performance.mark("graph-rendered");
}

async function openEvent(eventId) {
  try {
    const response = await api.call("GetEvent", { eventId });
    byId("details-title").replaceChildren(`${response.event.action} · ${response.event.eventId}`);
    byId("details-body").replaceChildren(...detailsOf(response, openHistory));
    const dialog = byId("details");
    if (!dialog.open) dialog.showModal();
  } catch (error) {
    showError(error);
  }
}

async function openHistory(resourceType, resourceId, pageToken = "") {
  const event = listed.find((item) => item.resource?.id === resourceId) ?? liveEvents.find((item) =>
    item.resource?.id === resourceId);
  const request = { resourceType, resourceId, pageSize: 20, order: "ORDER_NEWEST_FIRST", pageToken };
  if (event?.tenant) request.tenant = event.tenant;
  try {
    const response = await api.call("ListResourceHistory", request);
    const body = byId("history-body");
    const revisions = revisionsOf(response.revisions ?? [], (id) => {
      byId("history").close();
      openEvent(id);
    });
    if (pageToken) body.append(...revisions);
    else {
      byId("history-title").replaceChildren(`History of ${resourceType || "resource"} ${resourceId}`);
      body.replaceChildren(...revisions);
    }
    historyPage = response.nextPageToken ? { resourceType, resourceId, pageToken: response.nextPageToken } : null;
    byId("history-more").hidden = !historyPage;
    byId("details").close();
    if (!byId("history").open) byId("history").showModal();
  } catch (error) {
    showError(error);
  }
}

function exportAs(format) {
  const exportForm = byId("export-form");
  exportForm.elements.token.value = token();
  exportForm.elements.request.value = JSON.stringify({ filter: eventFilterOf(view, Date.now()), format });
  showError(null);
  exportForm.submit();
  exportForm.elements.token.value = "";
}

// The export frame loads only when the service answered with an error instead of a file.
byId("export-frame").addEventListener("load", () => {
  const text = byId("export-frame").contentDocument?.body?.textContent ?? "";
  if (!text) return;
  let error;
  try {
    const json = JSON.parse(text);
    error = new ConnectError(json.code, `export failed: ${json.message}`);
  } catch {
    error = new ConnectError("unknown", `export failed: ${text.slice(0, 300)}`);
  }
  showError(error);
});

const live = new LiveTail((request, signal) => api.stream("TailEvents", request, signal), {
  onEvents(events) {
    const newestFirst = events.reverse();
    liveEvents = [...newestFirst, ...liveEvents].slice(0, MAX_ROWS);
    if (pages.length === 1) prependRows(newestFirst);
  },
  onStatus(text, state) {
    byId("live-status").replaceChildren(text);
    byId("live-status").dataset.state = state;
    // The tail streams what is committed after it started: the first page, listed again once it has, holds
    // everything before, so nothing committed between the last listing and the tail's start is missing.
    if (state === "live" && pages.length === 1) {
      loadTimeline(new AbortController().signal).catch(showError);
    }
  },
  onError(error) {
    setLive(false);
    showError(error);
  },
});

function setLive(on) {
  byId("live").setAttribute("aria-pressed", String(on));
  if (on) {
    live.start(eventFilterOf(view, Date.now(), { forTail: true }));
    if (pages.length > 1) {
      pages = [""];
      load();
    }
  } else {
    live.stop();
    byId("live-status").replaceChildren("");
    byId("live-status").dataset.state = "off";
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  setView(readForm(form, view.group));
});
form.elements.preset.addEventListener("change", () => form.classList.toggle("custom",
  form.elements.preset.value === "custom"));
byId("reset").addEventListener("click", () => setView(viewFromQuery("")));
byId("add-condition").addEventListener("click", () => addCondition(byId("condition-list")));
byId("group-by").addEventListener("change", () => setView({ ...view, group: byId("group-by").value }));
byId("older").addEventListener("click", () => {
  pages.push(nextToken);
  load();
});
byId("newer").addEventListener("click", () => {
  pages.pop();
  load();
});
byId("export-csv").addEventListener("click", () => exportAs("EXPORT_FORMAT_CSV"));
byId("export-ndjson").addEventListener("click", () => exportAs("EXPORT_FORMAT_NDJSON"));
byId("live").addEventListener("click", () => setLive(!live.running));
byId("close-details").addEventListener("click", () => byId("details").close());
byId("close-history").addEventListener("click", () => byId("history").close());
byId("history-more").addEventListener("click", () => historyPage && openHistory(historyPage.resourceType,
  historyPage.resourceId, historyPage.pageToken));
byId("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn(byId("token").value);
  byId("token").value = "";
  start();
});
byId("sign-out").addEventListener("click", () => {
  signOut();
  showSignIn("Signed out.");
});
window.addEventListener("popstate", () => {
  view = viewFromQuery(location.search);
  writeForm(form, view);
  byId("group-by").value = view.group;
  pages = [""];
  liveEvents = [];
  load();
});

start();
