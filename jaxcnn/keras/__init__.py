"""Keras interoperability: ``model.to_json()`` files read into jaxcnn models.

:mod:`jaxcnn.keras.json` reads Sequential models and each layer's arguments;
:mod:`jaxcnn.keras.functional` reads functional (graph) and nested models into a
:class:`~jaxcnn.keras.functional.KerasGraph` of nodes for ``jaxcnn.graph.Model.from_nodes``.
"""

from __future__ import annotations

from jaxcnn.keras.functional import KerasGraph, KerasNode, keras_graph
from jaxcnn.keras.json import from_keras_dict, from_keras_json

__all__ = ["KerasGraph", "KerasNode", "from_keras_dict", "from_keras_json", "keras_graph"]
