"""The gallery's stylesheet (inlined into ``index.html``) and script (copied to
``.gallery/gallery.js``): no CDN, no requests."""
