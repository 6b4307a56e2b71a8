"""Review app of issue 14: radiologists look at a study, decide per lesion and sign off.

Modules
-------
store   decisions store: ``RESULTS/review/decisions.csv`` (the format ``hitit train`` reads) and
        the append-only ``RESULTS/review/audit.jsonl``, under a file lock
cache   per-study image cache the study job writes and the viewer reads
app     the Flask app (token-protected, bound to 127.0.0.1 by default)
cli     ``hitit review RESULTS``
"""
