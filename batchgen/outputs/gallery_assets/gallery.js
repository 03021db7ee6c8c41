// batchgen gallery: filters and search over server-rendered cards. Filter state lives in the
// URL fragment (#quality=high&q=owl) so a filtered view can be bookmarked or shared.
"use strict";
(function () {
  const byId = (id) => document.getElementById(id);
  const controls = {
    prompt: byId("f-prompt"),
    size: byId("f-size"),
    quality: byId("f-quality"),
    tag: byId("f-tag"),
    q: byId("q"),
  };
  const shown = byId("shown");
  // Parse each card's data once: 10,000 cards are filtered on every keystroke.
  const cards = Array.from(document.querySelectorAll(".card")).map((el) => ({
    el,
    prompt: el.dataset.promptId,
    size: el.dataset.size,
    quality: el.dataset.quality,
    tags: JSON.parse(el.dataset.tags || "[]"),
    text: el.dataset.search || "",
  }));

  function apply() {
    const want = {
      prompt: controls.prompt.value,
      size: controls.size.value,
      quality: controls.quality.value,
      tag: controls.tag.value,
    };
    const words = controls.q.value.toLowerCase().split(/\s+/).filter(Boolean);
    let n = 0;
    for (const c of cards) {
      const ok =
        (!want.prompt || c.prompt === want.prompt) &&
        (!want.size || c.size === want.size) &&
        (!want.quality || c.quality === want.quality) &&
        (!want.tag || c.tags.includes(want.tag)) &&
        words.every((w) => c.text.includes(w));
      c.el.hidden = !ok;
      if (ok) n += 1;
    }
    shown.textContent = String(n);
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const [key, el] of Object.entries(controls)) {
      // A value that is not among a select's options leaves it empty, which means "all".
      el.value = params.get(key) || "";
    }
  }

  function writeHash() {
    const params = new URLSearchParams();
    for (const [key, el] of Object.entries(controls)) if (el.value) params.set(key, el.value);
    const text = params.toString();
    // Opened from file://, some browsers refuse history entries for an opaque origin; the
    // filters still work then, only the fragment is not updated.
    try {
      history.replaceState(null, "", text ? "#" + text : location.pathname);
    } catch (e) {
      if (!(e instanceof DOMException)) throw e;
    }
  }

  for (const el of Object.values(controls)) {
    el.addEventListener("input", () => {
      apply();
      writeHash();
    });
  }
  window.addEventListener("hashchange", () => {
    readHash();
    apply();
  });
  readHash();
  apply();
})();
