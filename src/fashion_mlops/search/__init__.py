"""Sampled searches (`sweep.search: random | tpe`): Optuna draws each trial's settings from `sweep.space`, and a
pruner (`sweep.prune`) stops poor trials after an epoch. `local` runs the trials here, `ray_tune` on Ray Tune;
`space` is what both share: the distributions, the sampler and the pruner settings.
"""
