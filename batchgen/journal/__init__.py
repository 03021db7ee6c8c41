"""The resume journal: one SQLite file per output folder, the only record of what was paid for.

``writer`` (``Journal``: every state change committed before the action it enables),
``opening`` (schema and manifest checks, the writer lock), ``loading`` (planning a manifest's
jobs into it in bounded batches), ``query`` (``JournalReader``, shared with ``batchgen
status``) and ``schema`` (the tables and the pure row types). Uses ``planning`` below it.
"""
