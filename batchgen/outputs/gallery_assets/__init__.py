"""The gallery's stylesheet and script, inlined into ``index.html`` (no CDN, no requests)."""
