"""Typed contracts between the stages: what one stage writes and every later stage reads.

One module per hand-off, each a set of pydantic models with one writer:

* :mod:`specc.contracts.preprocess` — the preprocessing a model expects (a union by ``kind``),
  written by the data layer into ``RUN/data.json`` and the ONNX metadata, applied by the runtime;
* :mod:`specc.contracts.run_folder` — the files of a ``specc train`` run folder (``data.json``,
  ``run.json``, the marker and the lock), written by :mod:`specc.train.runner`, read by export,
  eval and ``specc train --from``;
* :mod:`specc.contracts.onnx_metadata` — the ``specc.*`` ``metadata_props`` of an exported model,
  written by :mod:`specc.export.metadata`, read by :mod:`specc.runtime`.

Everything here is torch-free; this package's ``__init__`` imports nothing, so the runtime loads
only the modules it reads.
"""
