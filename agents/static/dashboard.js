// Customer tagger dashboard: plain JS, no build step. Every data call sends the bearer token.
"use strict";
const TIERS = ["A", "B", "C", "D"];
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let token = null;
let feedAbort = null;

function el(tag, attrs = {}, text = null) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

async function api(path) {
  const resp = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  const body = await resp.json().catch(() => null);
  if (resp.status === 401) { logout((body && body.error) || "token refused"); throw new Error("unauthorized"); }
  return { status: resp.status, body };
}

// ---- tier chart (hand-drawn SVG bars) ----
function drawTiers(counts) {
  const svg = $("tiers");
  svg.replaceChildren();
  const max = Math.max(1, ...TIERS.map((t) => counts[t] || 0));
  TIERS.forEach((t, i) => {
    const n = counts[t] || 0, h = Math.round((n / max) * 160), x = 30 + i * 90;
    svg.append(el("svg:rect", { x, y: 180 - h, width: 60, height: h, class: "bar tier-" + t,
                                fill: "currentColor", "data-tier": t, "data-count": n }));
    svg.append(el("svg:text", { x: x + 30, y: 200, "text-anchor": "middle" }, t));
    svg.append(el("svg:text", { x: x + 30, y: 172 - h, "text-anchor": "middle", class: "count", "data-tier": t }, String(n)));
  });
  $("total").textContent = "(" + TIERS.reduce((s, t) => s + (counts[t] || 0), 0) + " with a tier)";
}

async function refreshSummary() {
  const { status, body } = await api("/dashboard/api/summary");
  if (status !== 200) return;
  drawTiers(body.tiers);
  $("ruleset").textContent = body.ruleset_version + (body.ruleset_name ? " (" + body.ruleset_name + ")" : "");
  $("role").textContent = body.role;
}

// ---- live feed: server-sent events read through fetch, so the token goes in a header ----
function feedLine(kind, item) {
  const li = el("li", { class: "feed-item", "data-customer": item.customer_id, "data-kind": kind });
  li.append(el("span", { class: "muted" }, (item.event_time || "").slice(0, 19) + " "));
  li.append(el("strong", {}, item.customer_id + " "));
  if (kind === "churn_alert") {
    li.append(el("span", { class: "level-" + item.level }, "churn " + item.previous_level + "→" + item.level + " "));
    li.append(el("span", { class: "muted" }, (item.reasons || []).join("; ")));
  } else {
    if (item.tier !== item.previous_tier) {
      li.append(el("span", { class: "tier-" + item.tier }, "tier " + (item.previous_tier || "-") + "→" + item.tier + " "));
    }
    for (const t of item.added) li.append(el("span", { class: "added" }, "+" + t + " "));
    for (const t of item.removed) li.append(el("span", { class: "removed" }, "-" + t + " "));
    const why = Object.values(item.reasons || {}).join("; ");
    if (why) li.append(el("span", { class: "muted" }, "(" + why + ")"));
  }
  return li;
}

async function followFeed() {
  feedAbort = new AbortController();
  while (token) {
    try {
      const resp = await fetch("/dashboard/api/feed", { headers: { Authorization: "Bearer " + token },
                                                        signal: feedAbort.signal });
      if (resp.status === 401) { logout("token refused"); return; }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const kind = (frame.match(/^event: (.*)$/m) || [])[1];
          const data = (frame.match(/^data: (.*)$/m) || [])[1];
          if (!kind || !data) continue;
          const feed = $("feed");
          feed.prepend(feedLine(kind, JSON.parse(data)));
          while (feed.children.length > 200) feed.lastChild.remove();
          scheduleSummary();
        }
      }
    } catch (e) {
      if (feedAbort.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 2000));  // reconnect
  }
}

let summaryTimer = null;
function scheduleSummary() {  // a feed message may move the tiers: refresh soon, at most twice a second
  if (summaryTimer) return;
  summaryTimer = setTimeout(() => { summaryTimer = null; refreshSummary().catch(() => {}); }, 500);
}

// ---- customer lookup ----
function spendChart(series) {
  const w = 360, h = 90, max = Math.max(1, ...series.map((p) => p.spend));
  const svg = el("svg:svg", { id: "spend-chart", width: w, height: h + 20, viewBox: `0 0 ${w} ${h + 20}` });
  const step = w / series.length;
  series.forEach((p, i) => {
    const bh = Math.round((Math.max(0, p.spend) / max) * h);
    const bar = el("svg:rect", { x: i * step + 2, y: h - bh, width: step - 4, height: bh, fill: "#1a7fa6" });
    bar.append(el("svg:title", {}, p.month + ": " + p.spend.toFixed(2)));
    svg.append(bar);
    if (i % 3 === 0) svg.append(el("svg:text", { x: i * step, y: h + 14, "font-size": 10 }, p.month));
  });
  return svg;
}

function row(table, name, value) {
  const tr = el("tr");
  tr.append(el("th", {}, name), el("td", {}, value));
  table.append(tr);
}

async function lookup(id) {
  const out = $("customer-result");
  out.replaceChildren(el("p", { class: "muted" }, "…"));
  const { status, body } = await api("/dashboard/api/customers/" + encodeURIComponent(id));
  out.replaceChildren();
  if (status !== 200) { out.append(el("p", { class: "error" }, (body && body.error) || "HTTP " + status)); return; }
  const t = el("table", { id: "customer-table" });
  row(t, "customer", body.customer_id);
  row(t, "tier", body.tier || "-");
  if (body.score !== undefined) row(t, "score", body.score === null ? "-" : String(body.score));
  out.append(t);
  if (body.score_breakdown) {
    out.append(el("h3", {}, "Score breakdown"));
    const b = el("table", { id: "breakdown" });
    for (const [k, v] of Object.entries(body.score_breakdown)) row(b, k, typeof v === "object" ? JSON.stringify(v) : String(v));
    out.append(b);
  }
  out.append(el("h3", {}, "Tags"));
  const tags = el("ul", { id: "tags" });
  const manual = (body.manual && body.manual.tags) || {};
  for (const tag of body.tags) {
    const li = el("li", { "data-tag": tag });
    li.append(el("strong", {}, tag));
    const reason = body.reasons && body.reasons[tag];
    if (reason) li.append(document.createTextNode(": " + reason));
    if (manual[tag]) li.append(el("span", { class: "muted" }, " — manual by " + manual[tag].author
      + (manual[tag].note ? ": " + manual[tag].note : "")));
    tags.append(li);
  }
  out.append(tags);
  if (body.churn !== undefined) {
    const c = body.churn || { level: "none", risk: 0, reasons: [] };
    out.append(el("h3", {}, "Churn risk"));
    out.append(el("p", { id: "churn", class: "level-" + c.level }, c.level + " (" + c.risk + ")"
      + (c.reasons.length ? ": " + c.reasons.join("; ") : "")));
  }
  if (body.spend_by_month) {
    out.append(el("h3", {}, "Spend per month"));
    out.append(spendChart(body.spend_by_month));
  }
}

// ---- token ----
function logout(message) {
  token = null;
  sessionStorage.removeItem("tagger-token");
  if (feedAbort) feedAbort.abort();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  refreshSummary().catch(() => {});
  setInterval(() => { if (token) refreshSummary().catch(() => {}); }, 5000);
  followFeed();
}

(function init() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("tagger-token", fromHash);
    history.replaceState(null, "", location.pathname);  // keep it out of the address bar and history
  }
  token = sessionStorage.getItem("tagger-token");
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("tagger-token", token);
    start();
  });
  $("lookup").addEventListener("submit", (e) => { e.preventDefault(); lookup($("customer-id").value.trim()); });
  $("logout").addEventListener("click", () => logout(""));
  if (token) start(); else logout("");
})();
