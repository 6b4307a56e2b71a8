"""Ranking: the paper's rules applied to the lesion table, injection and monitoring sets,
follow-up growth, clinical sidecar and a retrainable learning-to-rank model.

Modules
-------
rules         declarative rule engine (three-valued logic, stage scores, tiers, explanations)
select        ranks, injection set, itRECIST monitoring set, planned volumes (``rank_study``)
sidecar       optional clinical CSV validated by configs/sidecar.schema.yaml
longitudinal  lesion matching with an earlier study, growth, ``rank_patient``
model         pairwise learning to rank on the team's past choices (``hitit train``)
train_cli     ``hitit train`` / ``hitit rank`` argument parsers
"""
