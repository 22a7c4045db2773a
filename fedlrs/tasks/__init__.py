"""The tasks fedlrs federates, each written once for every loop and transport (DESIGN.md section 4; docs/architecture.md).

:mod:`.base`: the contract (:class:`~fedlrs.tasks.base.Task`: settings, phases and their parts,
initial shared state, client step, server step, release). :mod:`.loop`: the one round loop
(:func:`~fedlrs.tasks.loop.run_task`: sample, budget, collect, release, server step, record) and the
in-process batched transport. Tasks: :mod:`.linear` (AMHT-LRS: the engine, and the Flower billboard's
releases and server step), :mod:`.network` (any network method), :mod:`.fedavg` (DP-FedAvg of one
linear model); the recommender's tasks live beside their maths in :mod:`fedlrs.recsys` (which runs them
on this loop). :mod:`fedlrs.task_registry`: name -> task, read by entry points only.
"""
