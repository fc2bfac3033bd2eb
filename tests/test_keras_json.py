"""The Keras JSON reader, jaxcnn.keras: its place, functional (graph) models, refusals, fixtures."""

from __future__ import annotations

import jaxcnn
import jaxcnn.config
import jaxcnn.keras


def test_reader_lives_in_jaxcnn_keras_and_is_re_exported():
    assert jaxcnn.keras.from_keras_json.__module__ == "jaxcnn.keras.json"
    assert jaxcnn.from_keras_json is jaxcnn.keras.from_keras_json
    assert jaxcnn.config.from_keras_json is jaxcnn.keras.from_keras_json
    assert jaxcnn.config.from_keras_dict is jaxcnn.keras.from_keras_dict
