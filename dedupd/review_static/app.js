// The dedupd review page. Every change is a POST to this page's own server, which asks
// dedupd's service (the daemon, or the database when none runs); nothing here touches files.
// Text from the database (file names) is only ever set as text, never parsed as HTML.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A file name as the page shows it, and the server's messages, which name files: what
// Python's str.isprintable() refuses (controls; format characters, among them the
// bidirectional marks and overrides that reorder a line; private, unassigned and lone
// surrogate code points; line and paragraph separators; spaces other than " ") as escapes,
// as render.shown does for the terminal, so that a name cannot pass itself off as another.
// The name sent back to the server is always the one the server gave, never this.
const UNSAFE = /[\p{C}\p{Zl}\p{Zp}]|(?! )\p{Zs}/u;

const NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

function shown(name) {
  const text = String(name);
  if (!UNSAFE.test(text)) return text;
  return [...text].map((c) => {
    if (c === "\\") return "\\\\";
    if (!UNSAFE.test(c)) return c;
    if (c in NAMED) return NAMED[c];
    const code = c.codePointAt(0);
    const hex = (n) => code.toString(16).padStart(n, "0");
    return code < 0x100 ? `\\x${hex(2)}` : code < 0x10000 ? `\\u${hex(4)}` : `\\U${hex(8)}`;
  }).join("");
}

function size(n) {
  if (n == null) return "-";
  const units = ["B", "KB", "MB", "GB"];
  let value = n, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function when(seconds) {
  return seconds == null ? "-" : new Date(seconds * 1000).toLocaleString();
}

function status(text, isError) {
  const line = document.getElementById("status");
  line.textContent = text;
  line.className = isError ? "error" : "";
}

async function ask(url, options) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function post(url, body) {
  return ask(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

// A photo: its picture (served by id) and what the database knows of it.
function figure(role, src, record, path) {
  const caption = el("figcaption", {}, el("span", { class: "role" }, role), el("br"),
    el("span", { class: "path" }, shown(path || (record && record.path) || "-")));
  if (record) {
    const pixels = record.width ? `${record.width}×${record.height}` : "-";
    caption.append(el("br"), `${pixels} · ${size(record.size)} · ${record.format || "?"}`
      + ` · taken ${record.taken_at || "-"}`);
  }
  return el("figure", {}, el("img", { src, alt: `${role}: ${shown(path || "")}`, loading: "lazy" }),
    caption);
}

function how(kind, distance) {
  // A kind this page does not know (crop, video, ...) is shown by its name.
  const name = kind || "match";
  return distance == null ? name : `${name}, distance ${distance}`;
}

function quarantineItem(e) {
  const pick = el("input", { type: "checkbox", class: "pick", value: String(e.id) });
  const restore = el("button", { type: "button", class: "restore" }, "Restore");
  const purge = el("button", { type: "button", class: "purge danger" }, "Purge now");
  restore.addEventListener("click", () => restoreIds([e.id]));
  purge.addEventListener("click", () => purgeIds([e.id]));
  const keeper = e.keeper_id != null
    ? figure("keeper", `/img/file/${e.keeper_id}`, e.keeper, e.keeper_path)
    : el("p", { class: "empty" }, "no keeper recorded");
  return el("article", { class: "item", "data-action-id": String(e.id) },
    el("label", {}, pick, ` #${e.id} quarantined ${when(e.finished)}`),
    el("div", { class: "pair" },
      figure("quarantined", `/img/action/${e.id}`, e.file, e.src), keeper),
    el("p", { class: "why" }, el("span", { class: "kind" }, how(e.kind, e.distance)),
      ` · rule: ${shown(e.reason || "-")}`),
    restore, " ", purge);
}

function groupItem(g) {
  const members = el("div", { class: "members" },
    figure("keeper", `/img/file/${g.keeper.id}`, g.keeper));
  for (const d of g.duplicates) {
    const quarantine = el("button", { type: "button", class: "quarantine" },
      "Quarantine this copy");
    const distinct = el("button", { type: "button", class: "distinct" }, "Mark distinct");
    quarantine.addEventListener("click", () => act("/api/quarantine",
      { path: d.path, keeper: g.keeper.path }, `quarantined ${shown(d.path)}`));
    // A member matched with another member, not with the keeper (`via`: a crop of a near
    // copy): its match is with that one, and only marking that pair distinct splits it off.
    const matched = d.via || g.keeper.path;
    distinct.addEventListener("click", () => act("/api/distinct",
      { a: matched, b: d.path }, `marked distinct: ${shown(d.path)}`));
    const fig = figure("duplicate", `/img/file/${d.id}`, d);
    fig.append(el("p", { class: "why" }, el("span", { class: "kind" }, how(d.kind, d.distance)),
      d.via ? ` of ${shown(d.via)}` : ""), quarantine, " ", distinct);
    members.append(fig);
  }
  return el("article", { class: "group", "data-keeper-id": String(g.keeper.id) }, members);
}

function filters() {
  const params = new URLSearchParams();
  const root = document.getElementById("root").value;
  const since = document.getElementById("since").value;
  if (root) params.set("root", root);
  if (since) params.set("since", String(Math.max(0, Date.now() - Date.parse(since)) / 1000));
  return params.toString();
}

async function load() {
  const [q, g] = await Promise.all([ask(`/api/quarantine?${filters()}`), ask("/api/groups")]);
  const select = document.getElementById("root");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all roots"),
    ...q.roots.map((r) => el("option", { value: r }, shown(r))));
  select.value = q.roots.includes(chosen) ? chosen : "";
  const list = document.getElementById("quarantine");
  list.replaceChildren(...(q.quarantined.length ? q.quarantined.map(quarantineItem)
    : [el("p", { class: "empty" }, "Nothing in quarantine.")]));
  document.getElementById("quarantine-count").textContent = `(${q.quarantined.length})`;
  const groups = document.getElementById("groups");
  groups.replaceChildren(...(g.groups.length ? g.groups.map(groupItem)
    : [el("p", { class: "empty" }, "No duplicate groups reported.")]));
  document.getElementById("groups-count").textContent = `(${g.groups.length})`;
  document.getElementById("pick-all").checked = false;
}

async function act(url, body, done) {
  try {
    status(done + ": " + describe(await post(url, body)));
  } catch (error) {
    status(`refused: ${shown(error.message)}`, true);
  }
  await reload();
}

function describe(answer) {
  if (answer.results) {
    const failed = answer.results.filter((r) => !("restored" in r));
    return failed.length ? failed.map((r) => `#${r.item}: ${shown(r.error)}`).join("; ") : "ok";
  }
  if (answer.purged) return `${answer.purged.length} purged`;
  return "ok";
}

function restoreIds(ids) {
  return act("/api/restore", { ids }, `restore ${ids.map((i) => "#" + i).join(", ")}`);
}

function purgeIds(ids) {
  if (!window.confirm(`Delete ${ids.length} quarantined photo(s) for good?`)) return;
  return act("/api/purge", { ids }, `purge ${ids.map((i) => "#" + i).join(", ")}`);
}

function selected() {
  return [...document.querySelectorAll("#quarantine .pick:checked")].map((p) => Number(p.value));
}

async function reload() {
  try {
    await load();
  } catch (error) {
    status(`cannot load: ${shown(error.message)}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("root").addEventListener("change", reload);
  document.getElementById("since").addEventListener("change", reload);
  document.getElementById("pick-all").addEventListener("change", (event) => {
    for (const p of document.querySelectorAll("#quarantine .pick")) p.checked = event.target.checked;
  });
  document.getElementById("restore-selected").addEventListener("click", () => {
    const ids = selected();
    if (ids.length) restoreIds(ids); else status("select photos first", true);
  });
  document.getElementById("purge-selected").addEventListener("click", () => {
    const ids = selected();
    if (ids.length) purgeIds(ids); else status("select photos first", true);
  });
  reload().then(() => document.body.setAttribute("data-loaded", "1"));
});
