"""Manifests: a YAML, CSV or JSONL file read into a strict, validated ``Manifest``, or every
problem at once with file, line and field (``ManifestError``, exit code 2).

    manifest = load_manifest(Path("manifests/demo.yaml"))
    for spec in plan(manifest):      # lazy; identical jobs collapsed
        ...

Split by concern: ``source`` (files, decoding, YAML lines), ``yamldoc`` (the YAML schema),
``yamlfile`` (the checks between its parts), ``tabular`` (CSV, JSONL), ``prompts`` (one
prompt's rules), ``fields`` (one field value's rules), ``local`` and ``files`` (local reference
files and globs), ``templates`` (placeholders), ``model`` (the result and its expansion),
``load`` (the entry point).
Uses ``planning`` below it; nothing above.
"""

from batchgen.manifest.load import load_manifest
from batchgen.manifest.model import Manifest, PromptEntry, plan

__all__ = ["Manifest", "PromptEntry", "load_manifest", "plan"]
