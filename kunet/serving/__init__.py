"""Serving kunet exports with TensorFlow Serving: signature names, clients, and TensorFlow Serving's own rules.

* :mod:`kunet.serving.export` — ``kunet export``: versioned SavedModels (tiling and normalisation in the graph).
* :mod:`kunet.serving.signatures` — the exported signatures (names, tensors, what they mean) and the bounds the
  serving graph enforces; ``kunet export``, the clients and the checks all read this one table.
* :mod:`kunet.serving.client` — REST (standard library) and gRPC (``tensorflow-serving-api``) clients.
* :mod:`kunet.serving.rules` — how TensorFlow Serving turns requests into tensors and tensors into responses,
  and how its batching merges and splits them, as its sources define it; used by ``kunet export --check``
  and the tests, because the ``tensorflow_model_server`` binary cannot run where kunet is developed.
* :mod:`kunet.serving.standin` — a local stand-in that answers REST and gRPC Predict requests on an export by
  those rules, so the clients can be tested over real sockets. It is a test fixture, not a production server.
"""
