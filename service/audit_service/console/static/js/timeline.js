// The timeline's rows: time (local, UTC on hover), user, action, resource, outcome, IP address.

import { el, timeElement } from "./dom.js";

const OUTCOME = { OUTCOME_SUCCESS: "success", OUTCOME_FAILURE: "failure", OUTCOME_DENIED: "denied" };

export function actorName(actor = {}) {
  return actor.email || actor.displayName || actor.slug || actor.id || "";
}

function resourceName(resource = {}) {
  const name = resource.name || resource.id || "";
  return resource.type ? `${resource.type}${name ? ` ${name}` : ""}` : name;
}

/** A row; Enter, Space or a click opens the event (`onOpen(eventId)`). */
export function rowOf(event, onOpen) {
  const outcome = OUTCOME[event.outcome] ?? "";
  const open = () => onOpen(event.eventId);
  return el("tr", { tabindex: 0, "data-event-id": event.eventId, "data-position": event.position,
    "aria-label": `${event.action} by ${actorName(event.actor)}`,
    onclick: open,
    onkeydown: (key) => {
      if (key.key === "Enter" || key.key === " ") {
        key.preventDefault();
        open();
      }
    } },
  el("td", {}, timeElement(event.occurredAt)),
  el("td", {}, actorName(event.actor)),
  el("td", {}, el("code", {}, event.action ?? "")),
  el("td", {}, resourceName(event.resource)),
  el("td", { class: `outcome ${outcome}` }, outcome),
  el("td", {}, event.request?.ipAddress ?? ""));
}
