// The review page (batchgen review OUT): one image at a time, marked with keys or buttons.
// Every request carries the page's token (?t=); rows come from the server a window at a time.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("t") || "";
  const $ = (id) => document.getElementById(id);
  const WINDOW = 40;
  const view = { filter: "all", pos: 0, total: 0, start: 0, rows: [] };
  let busy = Promise.resolve();

  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    view.filter = h.get("filter") || "all";
    view.pos = Math.max(0, parseInt(h.get("pos") || "0", 10) || 0);
  }
  function writeHash() {
    const h = new URLSearchParams({ filter: view.filter, pos: String(view.pos) });
    history.replaceState(null, "", "#" + h.toString());
  }
  function url(path, params) {
    return path + "?" + new URLSearchParams({ ...params, t: token }).toString();
  }
  async function api(path, params, body) {
    const init = body === undefined ? {} : {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
    };
    const r = await fetch(url(path, params || {}), init);
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r.json();
  }
  function showState(s) {
    for (const k of ["picked", "rejected", "unmarked"]) $(k).textContent = s.counts[k].toLocaleString();
    $("reading").hidden = !s.reading;
    for (const f of ["blank", "near"]) {
      document.querySelector('#filter option[value="' + f + '"]').hidden = !s.filters[f];
    }
  }
  async function fetchWindow() {
    const w = await api("api/rows", {
      filter: view.filter, start: String(Math.max(0, view.pos - 5)), count: String(WINDOW),
    });
    view.total = w.total; view.start = w.start; view.rows = w.rows;
    if (view.pos >= view.total) view.pos = Math.max(0, view.total - 1);
  }
  function current() {
    return view.rows[view.pos - view.start];
  }
  function render() {
    const r = current();
    $("empty").hidden = !!r;
    document.querySelector("figure").hidden = !r;
    $("where").textContent = view.total
      ? (view.pos + 1).toLocaleString() + " of " + view.total.toLocaleString()
      : "0 of 0";
    $("filter").value = view.filter;
    writeHash();
    document.body.dataset.pos = String(view.pos);
    document.body.dataset.file = r ? r.file_name : "";
    document.body.dataset.mark = r && r.mark ? r.mark : "";
    if (!r) { document.body.dataset.ready = "1"; return; }
    const img = $("image");
    const src = url("image", { f: r.file_name });
    if (img.getAttribute("src") !== src) img.src = src;
    img.alt = r.prompt;
    $("prompt").textContent = r.prompt;
    $("size").textContent = r.width && r.height ? r.size + " (" + r.width + "×" + r.height + ")" : r.size;
    $("quality").textContent = r.quality || "?";
    $("cost").textContent = typeof r.cost === "number" ? "$" + r.cost.toFixed(3) : "cost ?";
    $("file").textContent = r.file_name;
    const badge = $("badge");
    badge.textContent = r.mark || (r.blank ? "blank" : "");
    badge.className = "badge " + (r.mark || (r.blank ? "blank" : ""));
    const next = view.rows[view.pos - view.start + 1];
    if (next) new Image().src = url("image", { f: next.file_name });
    document.body.dataset.ready = "1";
  }
  async function go(pos) {
    view.pos = Math.max(0, Math.min(pos, Math.max(0, view.total - 1)));
    if (!current()) await fetchWindow();
    render();
  }
  function keeps(mark) {
    if (view.filter === "unmarked") return !mark;
    if (view.filter === "picked" || view.filter === "rejected") return mark === view.filter;
    return true;
  }
  async function mark(value) {
    const r = current();
    if (!r) return;
    const s = await api("api/mark", {}, { file_name: r.file_name, job_id: r.job_id, mark: value });
    showState(s);
    if (keeps(value)) view.pos += 1;
    await fetchWindow();
    render();
  }
  function queue(fn) {
    busy = busy.then(fn).catch((e) => { console.error(String(e)); });
    return busy;
  }
  async function poll() {
    try { showState(await api("api/state")); } catch (e) { /* the server stopped */ }
  }
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === "SELECT") return;
    const act = {
      ArrowLeft: () => go(view.pos - 1), ArrowRight: () => go(view.pos + 1),
      p: () => mark("picked"), x: () => mark("rejected"), u: () => mark(null),
    }[e.key];
    if (act) { e.preventDefault(); queue(act); }
  });
  $("prev").addEventListener("click", () => queue(() => go(view.pos - 1)));
  $("next").addEventListener("click", () => queue(() => go(view.pos + 1)));
  $("pick").addEventListener("click", () => queue(() => mark("picked")));
  $("reject").addEventListener("click", () => queue(() => mark("rejected")));
  $("clear").addEventListener("click", () => queue(() => mark(null)));
  $("filter").addEventListener("change", (e) => queue(async () => {
    view.filter = e.target.value; view.pos = 0; view.rows = [];
    await fetchWindow(); render();
  }));
  $("image").addEventListener("load", () => {
    if (!document.body.dataset.firstImage) {
      document.body.dataset.firstImage = String(Math.round(performance.now()));
    }
  });
  window.addEventListener("hashchange", () => queue(async () => {
    readHash(); view.rows = [];
    await fetchWindow(); render();
  }));
  readHash();
  queue(async () => {
    const [s] = await Promise.all([api("api/state"), fetchWindow()]);
    showState(s); render();
  });
  setInterval(() => queue(async () => {
    await poll();
    const before = view.total;
    await fetchWindow();
    if (view.total !== before || !current()) render();
  }), 3000);
})();
