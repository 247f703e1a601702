// The filter form <-> the view (state.js).

import { el } from "./dom.js";
import { CONDITION_FIELDS, emptyView, OPERATORS } from "./state.js";

const MULTIPLE = new Set(["IN", "NOT_IN"]);

function localInput(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 19);
}

function utcOf(localValue) {
  const date = new Date(localValue);
  return localValue && !Number.isNaN(date.getTime()) ? date.toISOString().replace(".000Z", "Z") : "";
}

function select(name, options, value, label) {
  return el("select", { name, "aria-label": label },
    options.map(([optionValue, text]) => el("option", { value: optionValue, selected: optionValue === value }, text)));
}

function conditionRow(condition) {
  const values = MULTIPLE.has(condition.operator) ? condition.values.join(", ") : condition.values[0] ?? "";
  const row = el("li", { class: "condition" },
    select("cond-field", CONDITION_FIELDS, condition.field, "Condition field"),
    select("cond-operator", OPERATORS, condition.operator, "Condition operator"),
    el("input", { type: "text", name: "cond-value", value: values, "aria-label": "Condition value",
      spellcheck: "false", placeholder: "value (several: comma-separated with is any of / is none of)" }));
  row.append(el("button", { type: "button", class: "remove", "aria-label": "Remove condition",
    onclick: () => row.remove() }, "Remove"));
  return row;
}

export function addCondition(list) {
  const row = conditionRow({ field: "ACTION", operator: "EQUAL", values: [""] });
  list.append(row);
  row.querySelector("select").focus();
}

/** Fills the form with a view. */
export function writeForm(form, view) {
  const fields = form.elements;
  fields.preset.value = view.preset;
  fields.from.value = localInput(view.from);
  fields.to.value = localInput(view.to);
  for (const name of ["search", "q", "action", "resource_type", "user", "outcome", "join"]) {
    fields[name].value = view[name];
  }
  form.classList.toggle("custom", view.preset === "custom");
  form.querySelector("#condition-list").replaceChildren(...view.conditions.map(conditionRow));
}

/** The view the form describes (with the graph's grouping, which is not part of the form). */
export function readForm(form, group) {
  const fields = form.elements;
  const view = emptyView();
  view.preset = fields.preset.value;
  if (view.preset === "custom") {
    view.from = utcOf(fields.from.value);
    view.to = utcOf(fields.to.value);
  }
  for (const name of ["search", "q", "action", "resource_type", "user", "outcome", "join"]) {
    view[name] = fields[name].value.trim();
  }
  view.join = view.join === "ANY" ? "ANY" : "ALL";
  view.group = group;
  for (const row of form.querySelectorAll("#condition-list li")) {
    const operator = row.querySelector("[name=cond-operator]").value;
    const text = row.querySelector("[name=cond-value]").value;
    const values = MULTIPLE.has(operator) ? text.split(",").map((value) => value.trim()) : [text.trim()];
    view.conditions.push({ field: row.querySelector("[name=cond-field]").value, operator, values });
  }
  return view;
}
