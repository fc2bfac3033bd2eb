"""Keras interoperability: ``model.to_json()`` files read into jaxcnn models (:mod:`jaxcnn.keras.json`)."""

from __future__ import annotations

from jaxcnn.keras.json import from_keras_dict, from_keras_json

__all__ = ["from_keras_dict", "from_keras_json"]
