// The reges web chat: keeps the dialogue in the page and sends all of it to /v1/chat/completions on every turn.
// Text from the user or the server is only ever inserted with textContent, never as HTML.
"use strict";

const TOP_K = 5;
const log = document.getElementById("log");
const form = document.getElementById("composer");
const input = document.getElementById("message");
const send = document.getElementById("send");
let model = "reges";
let messages = [];  // {role, content, item_ids}: the dialogue so far, as the API takes it

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function add(node) {
  log.appendChild(node);
  log.scrollTop = log.scrollHeight;
  return node;
}

function renderRecommendation(rec) {
  const box = el("div", "rec");
  box.appendChild(el("div", "pick", rec.title));
  if (rec.query) box.appendChild(el("div", "query", "Query: " + rec.query));
  const list = el("ol", "candidates");
  for (const c of rec.candidates) {
    const item = el("li", c.item_id === rec.item_id ? "picked" : "", c.title);
    item.appendChild(el("span", "score", c.score.toFixed(3)));
    list.appendChild(item);
  }
  box.appendChild(list);
  const stages = Object.entries(rec.latency_ms).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(" · ");
  box.appendChild(el("div", "latency", stages));
  return box;
}

async function ask(text) {
  messages.push({ role: "user", content: text, item_ids: [] });
  add(el("div", "msg user", text));
  const pending = add(el("div", "msg assistant pending", "…"));
  send.disabled = true;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages, top_k: TOP_K }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    const content = body.choices[0].message.content;
    const rec = body.recommendation;
    messages.push({ role: "assistant", content, item_ids: rec ? [rec.item_id] : [] });
    pending.className = "msg assistant";
    pending.textContent = content;
    if (rec) pending.appendChild(renderRecommendation(rec));
  } catch (err) {
    messages.pop();  // the turn was not answered: leave it out of the dialogue so it can be sent again
    pending.className = "msg error";
    pending.textContent = "Error: " + err.message;
  } finally {
    send.disabled = false;
    input.focus();
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || send.disabled) return;
  input.value = "";
  ask(text);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

document.getElementById("reset").addEventListener("click", () => {
  messages = [];
  while (log.children.length > 1) log.removeChild(log.lastChild);
  input.focus();
});

fetch("/v1/models")
  .then((r) => r.json())
  .then((body) => {
    model = body.data[0].id;
    document.getElementById("model").textContent = "model: " + model;
  })
  .catch(() => {});
input.focus();
