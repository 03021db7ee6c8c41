"""Planning: the vocabulary every later stage speaks, with no I/O.

``jobs`` (``JobSpec``, the content-derived ``job_id``, ``JobState`` and its transitions),
``gptimage`` (what the known endpoints accept), ``pricing`` (fal's published prices),
``paths`` (where each image of a job lands) and ``summary`` (the plan summary ``batchgen plan``
prints). The bottom stage: it imports nothing of batchgen but ``errors``.

Named ``planning`` rather than ``plan`` because ``batchgen.plan`` is a public function; a
subpackage of that name would replace it on the package once imported.
"""
