// batchgen gallery: pages of cards drawn from script chunks under .gallery/, with filters and
// sorts over every row. The first page needs one records chunk, whatever the folder holds;
// the summary chunks (a few dozen bytes a row) load in the background so that a filter or a
// sort covers the whole set, and the status says how much of it is covered until then.
// Every user string reaches the page through textContent or a DOM property, never as HTML.
// The view lives in the URL fragment (#quality=high&q=owl&sort=-cost&page=3) so it can be
// bookmarked or shared.
"use strict";
(function () {
  const body = document.body;
  const N = Number(body.dataset.rows) || 0;
  const C = Number(body.dataset.chunkRows) || 1000;
  const NF = Number(body.dataset.failures) || 0;
  const FC = Number(body.dataset.failureChunks) || 0;
  const CHUNKS = Math.ceil(N / C);
  const IN_FLIGHT = 4; // summary chunks loading at once
  const KEEP = 48; // records chunks kept after their page was left (a sorted page may need many)
  const byId = (id) => document.getElementById(id);
  const controls = {
    prompt: byId("f-prompt"),
    size: byId("f-size"),
    quality: byId("f-quality"),
    tag: byId("f-tag"),
    flag: byId("f-flag"),
    q: byId("q"),
    sort: byId("sort"),
  };
  const shown = byId("shown");
  const status = byId("status");
  const pagers = Array.from(document.querySelectorAll("main > nav.pager:not(#failure-pager)"));
  const state = { page: 0, per: 100 };

  // ---- chunks: scripts that call these (fetch() cannot read file:// in Chromium) ----------
  const records = new Map(); // chunk -> rows, oldest first
  const failureRows = new Map();
  const loading = new Map(); // src -> Promise
  const summaries = [];
  let summarised = 0;
  // The sort columns, one slot a row, made when the first summary chunk arrives: at a million
  // rows they are 32 MB the first screen does not need (allocating and filling them took
  // 20-30 ms before the first card). A slot is read only once its chunk has written it (the
  // selection walks the loaded chunks), so the arrays need no NaN fill.
  let cost = null;
  let time = null;
  let area = null;
  let text = null; // search text per row, shared with its chunk's dictionary
  let takeKey = null; // prompt id, request, take: the takes of one request side by side
  // Near-duplicate groups (.gallery/dups.js): row -> group, only for rows in a group.
  const dupOf = new Map();

  window.batchgenGallery = {
    records(k, rows) {
      records.set(k, rows);
    },
    failures(k, rows) {
      failureRows.set(k, rows);
    },
    dups(d) {
      for (let i = 0; i < d.rows.length; i++) if (d.rows[i] < N) dupOf.set(d.rows[i], d.group[i]);
    },
    summary(k, s) {
      const start = k * C;
      // A refresh may have added rows to the last chunk since this page was written.
      const n = Math.max(0, Math.min(s.n, N - start));
      const c = s.cols;
      if (!cost) {
        cost = new Float64Array(N);
        time = new Float64Array(N);
        area = new Float64Array(N);
        text = new Array(N);
        takeKey = new Array(N);
      }
      for (let i = 0; i < n; i++) {
        const g = start + i;
        cost[g] = c.cost[i] ?? NaN; // unknown: NaN, sorted last
        time[g] = c.time[i] ?? NaN;
        area[g] = c.area[i] ?? NaN;
        text[g] = s.dict.text[c.text[i]];
        takeKey[g] = c.take ? s.dict.take[c.take[i]] : "";
      }
      if (!summaries[k]) summarised += 1;
      summaries[k] = { n, start, dict: s.dict, cols: c };
    },
  };

  const pad = (k) => String(k).padStart(6, "0");
  const src = (kind, k) => ".gallery/" + kind + "-" + pad(k) + ".js";

  function load(url) {
    let p = loading.get(url);
    if (!p) {
      p = new Promise((resolve, reject) => {
        const el = document.createElement("script");
        el.src = url;
        el.onload = () => {
          el.remove();
          resolve();
        };
        el.onerror = () => {
          el.remove();
          loading.delete(url);
          reject(new Error("cannot load " + url + ": rebuild with `batchgen gallery`"));
        };
        document.head.appendChild(el);
      });
      loading.set(url, p);
    }
    return p;
  }

  async function needRecords(rows) {
    const wanted = new Set(rows.map((g) => Math.floor(g / C)));
    await Promise.all(Array.from(wanted, (k) => (records.has(k) ? null : load(src("r", k)))));
    for (const k of records.keys()) {
      if (records.size <= KEEP + wanted.size) break;
      if (!wanted.has(k)) {
        records.delete(k);
        loading.delete(src("r", k));
      }
    }
  }

  // ---- which rows, in which order ------------------------------------------------------
  function wanted() {
    const w = { sort: controls.sort.value };
    for (const key of ["prompt", "size", "quality", "tag", "flag"]) w[key] = controls[key].value;
    w.words = controls.q.value.toLowerCase().split(/\s+/).filter(Boolean);
    return w;
  }

  const plain = (w) =>
    !w.prompt && !w.size && !w.quality && !w.tag && !w.flag && !w.words.length && !w.sort;

  function select(w) {
    const out = [];
    const dup = w.flag === "dup";
    const same = (values, want) => values.map((v) => !want || v === want);
    for (const s of summaries) {
      if (!s) continue;
      // Decide once per distinct value of the chunk, then look each row up.
      const okPrompt = same(s.dict.prompt, w.prompt);
      const okSize = same(s.dict.size, w.size);
      const okQuality = same(s.dict.quality, w.quality);
      const okTags = s.dict.tags.map((list) => !w.tag || list.includes(w.tag));
      const okText = s.dict.text.map((t) => w.words.every((word) => t.includes(word)));
      const c = s.cols;
      const blank = w.flag === "blank";
      for (let i = 0; i < s.n; i++) {
        if (
          (!blank || c.blank[i] === 1) &&
          (!dup || dupOf.has(s.start + i)) &&
          okPrompt[c.prompt[i]] &&
          okSize[c.size[i]] &&
          okQuality[c.quality[i]] &&
          okTags[c.tags[i]] &&
          okText[c.text[i]]
        ) {
          out.push(s.start + i);
        }
      }
    }
    // Near duplicates side by side: by group (groups in the order of their first row).
    if (dup && !w.sort) return out.sort((a, b) => dupOf.get(a) - dupOf.get(b) || a - b);
    return order(out, w.sort);
  }

  function order(rows, key) {
    const desc = key.startsWith("-");
    const name = desc ? key.slice(1) : key;
    const sign = desc ? -1 : 1;
    const strings = { prompt: text, take: takeKey }[name];
    if (strings) {
      // Ties keep the written order (the sort is stable and the rows come in that order).
      const t = strings;
      return rows.sort((a, b) => (t[a] < t[b] ? -sign : t[a] > t[b] ? sign : 0));
    }
    const col = { time: time, cost: cost, size: area }[name];
    if (!col) return rows;
    return rows.sort((a, b) => {
      const x = col[a];
      const y = col[b];
      if (Number.isNaN(x) || Number.isNaN(y)) return Number.isNaN(x) - Number.isNaN(y); // unknown last
      return sign * (x - y);
    });
  }

  // ---- drawing: DOM nodes only ---------------------------------------------------------
  const href = (name) => name.split("/").map(encodeURIComponent).join("/");

  function el(tag, cls, content) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content !== undefined) e.textContent = content;
    return e;
  }

  function money(x) {
    return x >= 0.1 || x === 0 ? "$" + x.toFixed(2) : "$" + x.toFixed(3);
  }

  function card(r, g) {
    const [file, thumb, w, h, prompt, pid, n, quality, , tags, price, refs, take, replaces, blank, mark] = r;
    const art = el("article", "card");
    if (mark) art.dataset.mark = mark; // picked or rejected (batchgen review), read-only here
    art.dataset.promptId = pid;
    art.dataset.file = file;
    const a = el("a", "thumb");
    a.href = href(file);
    if (thumb) {
      const img = el("img");
      img.src = href(".thumbs/" + thumb.slice(0, 2) + "/" + thumb + ".jpg");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = prompt.slice(0, 200);
      const scale = 480 / Math.max(w || 1, h || 1, 1);
      img.width = Math.round((w || 1) * scale);
      img.height = Math.round((h || 1) * scale);
      a.append(img);
    } else {
      a.append(el("span", "missing", "image missing"));
    }
    if (mark) a.append(el("span", "mark " + mark, mark));
    const meta = el("div", "meta");
    meta.append(el("span", "", (w ?? "?") + "\u00d7" + (h ?? "?")), el("span", "", quality));
    if (typeof price === "number") meta.append(el("span", "cost", money(price)));
    // take: which of a repeat's requests (the index's variant); #: the image of that request
    const which = el("span", "", pid + (typeof take === "number" ? " take " + take : "") + " #" + n);
    which.title = "prompt id, take (variant: which of its repeats), # (image of the request)";
    meta.append(which);
    if (replaces) {
      // a run --replace-rejected take: the rejected image it was made to replace
      const rep = el("span", "replaces", "replaces " + replaces.split("/").pop());
      rep.title = "a new take made for the rejected image " + replaces;
      meta.append(rep);
    }
    if (blank) meta.append(el("span", "flag", "blank"));
    if (dupOf.has(g)) {
      const d = el("span", "flag", "near duplicate #" + (dupOf.get(g) + 1));
      d.title = "near-duplicate group (perceptual hashes a few bits apart)";
      meta.append(d);
    }
    for (const t of tags) meta.append(el("span", "tag", t));
    for (const [label, title] of refs) {
      const s = el("span", "ref", label);
      s.title = title;
      meta.append(s);
    }
    const text = el("div", "body");
    text.append(el("p", "prompt", prompt), meta);
    art.append(a, text);
    return art;
  }

  // A task after the next frame was rendered: requestAnimationFrame runs just before a frame's
  // style, layout and paint, and a task it queues runs after them.
  const nextFrame = () =>
    new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));

  // data-first-screen (bench/gallery.py): when the first page of cards was on screen, that is
  // after the frame that laid out and painted them, not when their DOM was built (the style,
  // layout and paint of 100 cards take a few dozen ms more). Element Timing would give the
  // paint itself, but headless Chromium reported it for only some loads. The summaries start
  // loading meanwhile: were they held back until this frame, the load event would no longer
  // wait for them (nor would `chromium --dump-dom`), and the frame came no sooner.
  let firstScreen = false;
  let view = null; // { key, rows } for a filtered or sorted view
  let drawing = 0;

  async function draw() {
    const ticket = ++drawing;
    const w = wanted();
    let total;
    let rows;
    if (plain(w)) {
      total = N;
      const first = state.page * state.per;
      rows = [];
      for (let g = first; g < Math.min(N, first + state.per); g++) rows.push(g);
    } else {
      const key = JSON.stringify([w, summarised]);
      if (!view || view.key !== key) view = { key, rows: select(w) };
      total = view.rows.length;
      rows = view.rows.slice(state.page * state.per, (state.page + 1) * state.per);
    }
    const pages = Math.max(1, Math.ceil(total / state.per));
    const partial = !plain(w) && summarised < CHUNKS;
    // Past the last page: go to the last one, but only once every row is known (page 3 of a
    // filtered view may be empty only because its rows have not been loaded yet).
    if (state.page >= pages && !partial) {
      state.page = pages - 1;
      return draw();
    }
    try {
      await needRecords(rows);
    } catch (e) {
      status.textContent = String(e.message || e);
      return;
    }
    if (ticket !== drawing) return; // a newer view was asked for meanwhile
    const grid = byId("cards");
    grid.replaceChildren(
      ...rows
        .map((g) => [records.get(Math.floor(g / C))[g % C], g])
        .filter(([r]) => r)
        .map(([r, g]) => card(r, g)),
    );
    shown.textContent = total.toLocaleString("en");
    status.textContent = partial
      ? "(searching " + Math.min(N, summarised * C).toLocaleString("en") + " of " +
        N.toLocaleString("en") + " images\u2026)"
      : "";
    for (const p of pagers) {
      p.hidden = pages < 2;
      p.querySelector(".where").textContent = "page " + (state.page + 1) + " of " + pages;
      p.querySelector('[data-go="-1"]').disabled = state.page === 0;
      p.querySelector('[data-go="1"]').disabled = state.page >= pages - 1;
    }
    if (!firstScreen) {
      firstScreen = true;
      nextFrame().then(() => (body.dataset.firstScreen = String(Math.round(performance.now()))));
    }
    // When every row was searchable (bench/gallery.py).
    if (summarised >= CHUNKS && body.dataset.state !== "complete") {
      body.dataset.state = "complete";
      body.dataset.completeMs = String(Math.round(performance.now()));
    }
  }

  // ---- the summaries, in the background ------------------------------------------------
  let redrawAt = 0;
  async function loadSummaries() {
    try {
      await load(".gallery/dups.js"); // before the summaries: a filtered view counts on it
    } catch (e) {
      status.textContent = String(e.message || e);
    }
    let next = 0;
    async function worker() {
      while (next < CHUNKS) {
        const k = next++;
        try {
          await load(src("s", k));
        } catch (e) {
          status.textContent = String(e.message || e);
          return;
        }
        // Redraw a filtered view now and then as more of the set is covered.
        if (!plain(wanted()) && performance.now() - redrawAt > 300) {
          redrawAt = performance.now();
          draw();
        }
      }
    }
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    draw();
  }

  // ---- failures: a chunk a page --------------------------------------------------------
  let failurePage = 0;
  async function drawFailures() {
    if (!NF) return;
    const k = failurePage;
    try {
      await load(src("f", k));
    } catch (e) {
      byId("failure-list").textContent = String(e.message || e);
      return;
    }
    const table = el("table", "failures");
    const head = el("tr");
    for (const h of ["prompt id", "prompt", "size", "quality", "class", "message", "attempts", "job"])
      head.append(el("th", "", h));
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    for (const [pid, prompt, size, quality, cls, message, attempts, job] of failureRows.get(k)) {
      const tr = el("tr");
      const code = el("td");
      code.append(el("code", "", job));
      tr.append(el("td", "", pid), el("td", "", prompt), el("td", "", size), el("td", "", quality),
        el("td", "class", cls), el("td", "", message), el("td", "", String(attempts ?? "")), code);
      table.tBodies[0].append(tr);
    }
    byId("failure-list").replaceChildren(table);
    const p = byId("failure-pager");
    p.hidden = FC < 2;
    p.querySelector(".where").textContent = "page " + (k + 1) + " of " + FC;
    p.querySelector('[data-go="-1"]').disabled = k === 0;
    p.querySelector('[data-go="1"]').disabled = k >= FC - 1;
  }

  // ---- the fragment --------------------------------------------------------------------
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const [key, e] of Object.entries(controls)) {
      const value = params.get(key) || "";
      // A facet past the listed ones (a huge folder lists the first 1,000) still filters.
      if (value && e.tagName === "SELECT" && key !== "sort" &&
          !Array.from(e.options).some((o) => o.value === value)) {
        e.append(new Option(value, value));
      }
      e.value = value;
    }
    state.page = Math.max(0, (Number(params.get("page")) || 1) - 1);
    state.per = Math.min(1000, Math.max(1, Number(params.get("per")) || 100));
  }

  function writeHash() {
    const params = new URLSearchParams();
    for (const [key, e] of Object.entries(controls)) if (e.value) params.set(key, e.value);
    if (state.page) params.set("page", String(state.page + 1));
    if (state.per !== 100) params.set("per", String(state.per));
    const t = params.toString();
    // Opened from file://, some browsers refuse history entries for an opaque origin; the
    // view still changes then, only the fragment is not updated.
    try {
      history.replaceState(null, "", t ? "#" + t : location.pathname);
    } catch (e) {
      if (!(e instanceof DOMException)) throw e;
    }
  }

  let typing = 0;
  for (const e of Object.values(controls)) {
    e.addEventListener("input", () => {
      state.page = 0;
      writeHash();
      // Typing in the search box at a million rows: wait for a pause before searching.
      clearTimeout(typing);
      typing = setTimeout(draw, e === controls.q && N > 100000 ? 250 : 0);
    });
  }
  for (const p of pagers) {
    for (const b of p.querySelectorAll("button")) {
      b.addEventListener("click", () => {
        state.page += Number(b.dataset.go);
        writeHash();
        draw();
        window.scrollTo(0, 0);
      });
    }
  }
  for (const b of byId("failure-pager").querySelectorAll("button")) {
    b.addEventListener("click", () => {
      failurePage = Math.min(FC - 1, Math.max(0, failurePage + Number(b.dataset.go)));
      drawFailures();
    });
  }
  window.addEventListener("hashchange", () => {
    readHash();
    draw();
  });
  readHash();
  draw().then(() => Promise.all([loadSummaries(), drawFailures()]));
})();
