"""What fal billed, beside what a folder estimated: `batchgen reconcile`.

``compare`` (pure: the bill lined up with the folder, and its text and JSON) and ``reconcile``
(read the folder's journal, fetch the billing events through ``fal.platform``, record them in
the journal). Uses ``journal``, ``fal`` and ``planning`` below it.
"""
