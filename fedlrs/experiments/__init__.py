"""The experiments behind the README's tables (``fedlrs experiment NAME``), above the methods they run.

:mod:`.runner`: the one runner core (threads, timing, ``table.md``, plots, ``results.json``);
:mod:`.config`: configs, seeds and folder, epsilon sweep, delta; :mod:`.tables`: rows over
seeds, tables, plots. The runners, each a body run by the core: :mod:`.linear` (AMHT-LRS:
sample complexity, privacy, real data; :mod:`.fedrep_protocol`), :mod:`.nn` (+ :mod:`.nn_setup`;
LRS-NN and its baselines), :mod:`.recsys` (ratings), :mod:`.personalized` (Personalized
Regression's simulation study). :mod:`.cli` and :mod:`.personalized_cli` are their commands.
"""
