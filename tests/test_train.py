"""Training steps: compiled once per batch shape, losses from logits, exact metrics, dropout keys,
batch statistics, optimizers, bfloat16 compute, the non-finite guard."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from jaxcnn.errors import ConfigError
from jaxcnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from jaxcnn.optimizers import from_config
from jaxcnn.train import Metrics, compile, params_sha256


def small_model(**dense):
    return jaxcnn.Sequential([
        Conv2D(4, 3, padding="same", activation="relu", input_shape=(8, 8, 1)), BatchNormalization(),
        MaxPooling2D(), Flatten(), Dropout(0.25), Dense(10, activation="softmax", **dense)])


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def compilations(caplog, name):
    return sum(f"Compiling jit({name})" in r.getMessage() for r in caplog.records)


def test_each_step_compiles_once_per_batch_shape_over_ten_steps(caplog):
    compiled = compile(small_model(), "adam")
    state = compiled.init(0)
    x, y = data(8)
    caplog.set_level(logging.WARNING)
    with jax.log_compiles():
        for _ in range(10):
            state, _ = compiled.train_step(state, (x, y, np.ones(8, np.float32)))
            compiled.eval_step(state, (x, y, np.ones(8, np.float32)))
        # the last, partial batch of an epoch is padded to the same shape and masked: no compilation
        mask = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)
        for _ in range(3):  # three "epochs" ending in a partial batch
            state, _ = compiled.train_step(state, (x, y, mask))
            compiled.eval_step(state, (x, y, mask))
    assert compilations(caplog, "_train_step") == 1
    assert compilations(caplog, "_eval_step") == 1


def test_the_state_is_donated_to_the_training_step():
    compiled = compile(small_model(), "sgd")
    state = compiled.init(0)
    x, y = data(8)
    new_state, _ = compiled.train_step(state, (x, y))
    assert int(new_state.step) == 1
    with pytest.raises(RuntimeError, match="deleted|donated"):
        np.asarray(jax.tree.leaves(state.params)[0])


def test_loss_is_computed_from_logits_and_stays_finite_where_the_naive_form_overflows():
    model = jaxcnn.Sequential([Dense(3, activation="softmax", input_shape=(2,))])
    compiled = compile(model, "sgd")
    state = compiled.init(0)
    big = {"dense": {"kernel": jnp.array([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]]), "bias": jnp.zeros(3)}}
    state = state.replace(params=big)
    x, y = np.array([[1.0, 0.0]], np.float32), np.array([1], np.int32)  # the true class has logit -1e4
    metrics = compiled.eval_step(state, (x, y))
    assert np.isfinite(float(metrics.loss)) and float(metrics.loss) == pytest.approx(2e4, rel=1e-5)
    probabilities = compiled.predict(state, x)
    naive = -jnp.log(probabilities[0, 1])  # softmax underflows to 0: log(0) = -inf
    assert not np.isfinite(float(naive))
    np.testing.assert_allclose(np.asarray(probabilities).sum(-1), 1.0, rtol=1e-6)


def test_metrics_are_exact_over_an_uneven_final_batch():
    compiled = compile(small_model(), "adam", metrics=["accuracy", "top3_accuracy"])
    state = compiled.init(0)
    x, y = data(20)
    whole = compiled.eval_step(state, (x, y)).compute()
    batches = []
    for start in range(0, 20, 7):  # 7 + 7 + 6, the last padded to 7 and masked
        xb, yb, mask = x[start:start + 7], y[start:start + 7], np.ones(7, np.float32)
        if len(xb) < 7:
            pad = 7 - len(xb)
            mask[len(xb):] = 0
            xb, yb = np.concatenate([xb, np.zeros((pad, 8, 8, 1), np.float32)]), np.concatenate([yb, np.zeros(pad, np.int32)])
        batches.append((xb, yb, mask))
    merged = compiled.evaluate(state, batches)
    assert merged["examples"] == 20
    for key in ("loss", "accuracy", "top3_accuracy"):
        assert merged[key] == pytest.approx(whole[key], rel=1e-5), key


def test_dropout_keys_come_from_fold_in_of_the_step():
    model = jaxcnn.Sequential([Dropout(0.5, input_shape=(64,)), Dense(2, activation="softmax")])
    compiled = compile(model, {"name": "sgd", "learning_rate": 0.0})
    x, y = np.ones((4, 64), np.float32), np.zeros(4, np.int32)
    s0 = compiled.init(0)
    losses = []
    for state in (s0, s0.replace(step=jnp.int32(1))):
        state = jax.tree.map(jnp.copy, state)
        losses.append(float(compiled.train_step(state, (x, y))[1].loss))
    again = float(compiled.train_step(jax.tree.map(jnp.copy, s0), (x, y))[1].loss)
    assert losses[0] == again  # the same step: the same key
    assert losses[0] != losses[1]  # another step: another key


def test_batch_statistics_update_in_training_and_serve_evaluation():
    compiled = compile(small_model(), {"name": "sgd", "learning_rate": 0.0})
    state = compiled.init(0)
    x, y = data(16)
    before = jax.tree.map(np.asarray, state.batch_stats)
    eval_before = np.asarray(compiled.predict(state, x))
    state, _ = compiled.train_step(state, (x, y))
    after = state.batch_stats["batch_normalization"]
    assert not np.allclose(after["mean"], before["batch_normalization"]["mean"])
    assert not np.allclose(np.asarray(compiled.predict(state, x)), eval_before)  # eval uses the moving stats


@pytest.mark.parametrize("config", [
    "adam", {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True},
    {"name": "adamw", "weight_decay": 1e-4}, {"name": "rmsprop", "learning_rate": 1e-3},
    {"name": "lamb"}, {"name": "sgd", "weight_decay": 1e-4, "clip_norm": 1.0},
    {"name": "adam", "schedule": {"name": "cosine"}},
    {"name": "adam", "schedule": {"name": "warmup_cosine", "warmup_steps": 2}},
    {"name": "sgd", "schedule": {"name": "piecewise", "boundaries": [2, 4], "scales": [0.1, 0.1]}},
    {"name": "sgd", "schedule": {"name": "constant"}},
])
def test_optimizers_and_schedules_from_config_train(config):
    compiled = compile(small_model(), config, total_steps=6)
    state = compiled.init(0)
    x, y = data(16)
    first = float(compiled.eval_step(state, (x, y)).compute()["loss"])
    for _ in range(6):
        state, _ = compiled.train_step(state, (x, y))
    assert float(compiled.eval_step(state, (x, y)).compute()["loss"]) < first


def test_schedules_have_the_stated_values():
    lr = from_config({"name": "sgd", "learning_rate": 0.1,
                      "schedule": {"name": "piecewise", "boundaries": [10], "scales": [0.5]}})
    state = lr.init({"w": jnp.ones(())})
    updates, _ = lr.update({"w": jnp.ones(())}, state)
    assert float(updates["w"]) == pytest.approx(-0.1)
    warm = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 6)
    assert float(warm(1)) == pytest.approx(0.05)


@pytest.mark.parametrize("config, message", [
    ("adamm", r"unknown optimizer 'adamm'; did you mean 'adam'\? known: sgd, adam"),
    ({"name": "sgd", "momentom": 0.9}, r"key `optimizer.momentom`: unknown argument of optimizer 'sgd' 'momentom'; did you mean 'momentum'\?"),
    ({"name": "sgd", "nesterov": 1}, r"`nesterov` \(=1\) must be true or false"),
    ({"name": "adam", "learning_rate": "fast"}, r"`learning_rate` \(='fast'\) must be a number"),
    ({"name": "adam", "schedule": {"name": "cosine"}}, r"schedule 'cosine' needs `decay_steps`"),
    ({"name": "adam", "schedule": {"name": "linear"}}, r"unknown schedule 'linear'"),
    ({"name": "adam", "schedule": {"name": "cosine", "warmup": 3}}, r"unknown argument of schedule 'cosine' 'warmup'"),
])
def test_unknown_optimizers_and_arguments_are_refused_by_name(config, message):
    with pytest.raises(ConfigError, match=message):
        from_config(config)


def test_unknown_loss_metric_and_precision_are_refused():
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        compile(small_model(), loss="hinge")
    with pytest.raises(ConfigError, match="unknown metric 'f1'"):
        compile(small_model(), metrics=["f1"])
    with pytest.raises(ConfigError, match="unknown precision 'float16'"):
        compile(small_model(), precision="float16")


def test_other_losses():
    x, y = data(8)
    onehot = np.eye(10, dtype=np.float32)[y]
    for loss, labels in (("categorical_crossentropy", onehot), ("mse", onehot)):
        compiled = compile(small_model(), "adam", loss=loss)
        state = compiled.init(0)
        first = float(compiled.eval_step(state, (x, labels)).compute()["loss"])
        for _ in range(5):
            state, _ = compiled.train_step(state, (x, labels))
        assert float(compiled.eval_step(state, (x, labels)).compute()["loss"]) < first
    binary = jaxcnn.Sequential([Flatten(input_shape=(8, 8, 1)), Dense(1, activation="sigmoid")])
    compiled = compile(binary, "adam", loss="binary_crossentropy")
    state = compiled.init(0)
    metrics = compiled.eval_step(state, (x, (y > 4).astype(np.float32))).compute()
    assert 0 <= metrics["accuracy"] <= 1 and np.isfinite(metrics["loss"])


def test_bfloat16_compute_keeps_float32_parameters():
    x, y = data(16)
    f32 = compile(small_model(), "adam")
    bf16 = compile(small_model(), "adam", precision="bfloat16")
    s32, s16 = f32.init(0), bf16.init(0)
    p32, p16 = np.asarray(f32.predict(s32, x)), np.asarray(bf16.predict(s16, x))
    assert p16.dtype == np.float32
    np.testing.assert_allclose(p16, p32, atol=2e-2)
    s16, _ = bf16.train_step(s16, (x, y))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(s16.params))


def test_a_non_finite_step_is_not_applied_and_is_counted():
    compiled = compile(small_model(), {"name": "sgd", "learning_rate": 1e38})
    state = compiled.init(0)
    x, y = data(16)
    x[0, 0, 0, 0] = np.inf  # one corrupt pixel
    before = params_sha256(state.params)
    state, metrics = compiled.train_step(state, (x, y))
    assert float(metrics.nonfinite) == 1.0
    assert params_sha256(state.params) == before
    rows = compiled.layer_statistics(state, (x, y))
    assert [r["name"] for r in rows][:2] == ["conv2d", "batch_normalization"]
    assert not all(r["activations_finite"] and r["grads_finite"] for r in rows)


def test_params_sha256_is_of_the_bytes_in_tree_order():
    state = compile(small_model(), "adam").init(0)
    again = compile(small_model(), "adam").init(0)
    assert params_sha256(state.params) == params_sha256(again.params)
    assert params_sha256(state.params) != params_sha256(compile(small_model(), "adam").init(1).params)


def test_metrics_merge_and_compute():
    a = Metrics(count=jnp.float32(2), loss=jnp.float32(3), correct=jnp.float32(1), top_k_correct=jnp.float32(2),
                nonfinite=jnp.float32(0))
    total = a.merge(a).compute()
    assert total == {"loss": 1.5, "accuracy": 0.5, "top5_accuracy": 1.0, "examples": 4}


def test_several_unrolled_steps_per_call_equal_single_steps():
    compiled = compile(small_model(), "adam")
    x, y = data(32)
    x, y = x.reshape(4, 8, *x.shape[1:]), y.reshape(4, 8)
    mask = np.ones((4, 8), np.float32)
    mask[-1, 5:] = 0.0  # a padded last batch
    one = compiled.init(0)
    sums = []
    for i in range(4):
        one, metrics = compiled.train_step(one, (x[i], y[i], mask[i]))
        sums.append(metrics)
    many, total = compiled.train_steps(compiled.init(0), (x, y, mask))
    assert int(many.step) == int(one.step) == 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), many.params, one.params)
    assert float(total.count) == 29.0
    np.testing.assert_allclose(float(total.loss), sum(float(m.loss) for m in sums), rtol=1e-5)
