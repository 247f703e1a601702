// The details of one event: every field, its request context, trace and span ids, metadata and, for a change, a
// side-by-side diff of the resource before and after (YAML), with a link to the resource's whole history.

import { sideBySide } from "./diff.js";
import { el, timeElement } from "./dom.js";

function section(title, ...content) {
  if (content.every((node) => !node.textContent)) return null; // nothing to show
  return el("section", { class: "detail-section" }, el("h3", {}, title), ...content);
}

function fields(rows) {
  const list = el("dl", { class: "fields" });
  for (const [name, value] of rows) {
    if (value === undefined || value === null || value === "") continue;
    list.append(el("dt", {}, name), el("dd", {}, value instanceof Node ? value : String(value)));
  }
  return list;
}

function json(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** The side-by-side table of a unified diff. */
export function diffTable(unified) {
  const table = el("table", { class: "diff" },
    el("thead", {}, el("tr", {}, el("th", { colspan: 2, scope: "col" }, "Before"),
      el("th", { colspan: 2, scope: "col" }, "After"))));
  const body = el("tbody");
  for (const row of sideBySide(unified)) {
    if (row.kind === "gap") {
      body.append(el("tr", { class: "gap" }, el("td", { colspan: 4 }, "…")));
      continue;
    }
    const leftClass = row.kind === "change" || row.kind === "removed" ? "removed" : row.kind === "added" ? "empty" : "";
    const rightClass = row.kind === "change" || row.kind === "added" ? "added" : row.kind === "removed" ? "empty" : "";
    body.append(el("tr", { class: row.kind },
      el("td", { class: "number" }, row.leftNumber), el("td", { class: `code ${leftClass}` }, row.left),
      el("td", { class: "number" }, row.rightNumber), el("td", { class: `code ${rightClass}` }, row.right)));
  }
  table.append(body);
  return table;
}

const CHANGE_KIND = { CHANGE_KIND_ADDED: "added", CHANGE_KIND_REMOVED: "removed", CHANGE_KIND_MODIFIED: "modified" };

function changedFields(changes) {
  return el("ul", { class: "changed-fields" }, changes.map((change) =>
    el("li", {}, el("code", {}, change.path), ` ${CHANGE_KIND[change.kind] ?? ""}`)));
}

/** The nodes of GetEvent's answer; `onHistory(resourceType, resourceId)` opens the resource's history. */
export function detailsOf({ event, changes = [], yamlDiff = "" }, onHistory) {
  const actor = event.actor ?? {};
  const resource = event.resource ?? {};
  const parent = event.parentResource ?? {};
  const request = event.request ?? {};
  const nodes = [
    el("p", { class: "summary" }, event.message ?? ""),
    section("Event", fields([
      ["Time", timeElement(event.occurredAt)], ["Time (UTC)", event.occurredAt],
      ["Recorded", event.recordedAt], ["Action", event.action], ["Outcome", event.outcome],
      ["Event id", event.eventId], ["Tenant", event.tenant], ["Cluster", event.clusterId],
      ["Workspace", event.workspaceId], ["Position", event.position], ["Stream revision", event.streamRevision],
    ])),
    section("User", fields([
      ["Id", actor.id], ["Type", actor.type], ["Slug", actor.slug], ["Name", actor.displayName],
      ["Email", actor.email], ["Access token", actor.patName], ["Controller", actor.controllerName],
      ["External identity", actor.externalIdentitySlug],
    ])),
    section("Resource", fields([
      ["Type", resource.type], ["Id", resource.id], ["Name", resource.name], ["FQN", resource.fqn],
      ["Parent type", parent.type], ["Parent id", parent.id], ["Parent name", parent.name],
      ["Parent FQN", parent.fqn],
    ])),
    section("Request", fields([
      ["IP address", request.ipAddress], ["User agent", request.userAgent], ["Method", request.method],
      ["Route", request.route],
    ])),
    section("Trace", fields([["Trace id", event.traceId], ["Span id", event.spanId]])),
    section("Integrity", fields([["Hash", event.hash], ["Previous hash", event.prevHash]])),
  ];
  if (event.metadata && Object.keys(event.metadata).length) nodes.push(section("Metadata", json(event.metadata)));
  if (yamlDiff) {
    nodes.push(section("Change", changedFields(changes), diffTable(yamlDiff)));
  }
  if (resource.id) {
    nodes.push(el("p", {}, el("button", { type: "button", class: "link", id: "open-history",
      onclick: () => onHistory(resource.type ?? "", resource.id) }, "Whole history of this resource")));
  }
  return nodes.filter(Boolean);
}

/** The nodes of a page of ListResourceHistory. */
export function revisionsOf(revisions, onEvent) {
  return revisions.map(({ event, yamlDiff = "" }) => el("article", { class: "revision" },
    el("h3", {}, `Revision ${event.streamRevision ?? "?"} · `, timeElement(event.occurredAt), ` · ${event.action}`,
      ` · ${event.actor?.email || event.actor?.slug || event.actor?.id || ""}`),
    el("p", {}, event.message ?? "", " ",
      el("button", { type: "button", class: "link", onclick: () => onEvent(event.eventId) }, "details")),
    yamlDiff ? diffTable(yamlDiff) : el("p", { class: "note" }, "No change recorded.")));
}
