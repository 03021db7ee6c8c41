"""What a run leaves behind: verified images, the index, the gallery, exports, the report.

``download`` (one image: stream, hash, verify, rename), ``downloader`` (the run's download
pool), ``index`` (``metadata.jsonl`` and ``failures.jsonl``), ``gallery`` (``index.html`` and
its assets), ``export`` (parquet, CSV, webdataset), ``rebuild`` (the index anew from the
journal) and ``status`` (the ``batchgen status`` report). Uses ``planning`` and ``journal``.
"""
