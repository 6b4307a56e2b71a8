"""Follow-up across timepoints (itRECIST): registration to the baseline CT, lesion tracks,
responses per timepoint and the next cycle's plan.

Modules
-------
response      pure itRECIST / iRECIST logic (sums of diameters, iUPD / iCPD, best response)
registration  follow-up CT -> baseline CT (rigid, then affine) on low-resolution references
matching      lesions of a follow-up matched to the baseline tracks in the baseline frame
timepoints    a patient's studies ordered, baseline chosen, categories locked at baseline
tracking      one study's follow-up step: tracks, responses and the files it writes
"""
