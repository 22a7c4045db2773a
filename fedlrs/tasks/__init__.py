"""The tasks fedlrs federates, each written once for every loop (DESIGN.md section 4).

:mod:`.linear`: AMHT-LRS's server side (its releases, from the contribution spec, and its
server step), shared by the in-process engine and the Flower billboard. The network methods'
counterparts are :func:`fedlrs.nn.federated.release_parts` and ``FederatedMethod.apply``.
"""
