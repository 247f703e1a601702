// Building the page. Every text that comes from an event goes in as a text node (or an attribute value), never
// as markup: the page's Content-Security-Policy requires Trusted Types, so an HTML sink would throw anyway.

const SVG = "http://www.w3.org/2000/svg";

function build(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: el("td", {class: "x"}, "text", otherNode). */
export function el(tag, attributes, ...children) {
  return build(document.createElement(tag), attributes, children);
}

/** An SVG element. */
export function svg(tag, attributes, ...children) {
  return build(document.createElementNS(SVG, tag), attributes, children);
}

export function byId(id) {
  return document.getElementById(id);
}

const localFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

/** A <time>: local time shown, UTC on hover. */
export function timeElement(iso) {
  if (!iso) return el("span", {}, "");
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return el("span", {}, iso);
  return el("time", { datetime: iso, title: `${iso.replace(/(\.\d{3})\d*Z$/, "$1Z")} (UTC)` },
    localFormat.format(date));
}
