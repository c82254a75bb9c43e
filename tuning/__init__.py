"""KerasTuner search over HARR's loss weights, WTA parameters and optimisation.

`tuning.hypermodel.HarrHyperModel` is the search space and a trial's training;
`python -m tuning.search` runs a search alone or as KerasTuner's distributed
chief/worker job. Nothing is imported here, so `--help` stays instant.
"""
