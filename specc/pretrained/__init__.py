"""Networks with trained or published weights: a ``specc train`` run folder as a network
(:func:`~specc.pretrained.run.load_run`, ``specc.load_run``), a published checkpoint imported into a
spec (:mod:`~specc.pretrained.importer`, ``specc weights import``) and a run exported as a Hugging Face
folder (:mod:`~specc.pretrained.hf_export`, ``specc weights export``).

This layer builds networks (:mod:`specc.nn`) and moves tensors with :mod:`specc.weights`, the layer
below it; nothing under it imports this package. The root imports nothing: callers import the module
they use.
"""
