"""Training steps: compiled once per batch shape, losses from logits, exact metrics, dropout keys,
batch statistics, optimizers, bfloat16 compute, the non-finite guard; each loss on each head against
Keras's figures, pairs and metrics refused at compile, labels in the fit loop, arrays checked where
they enter."""

from __future__ import annotations

import inspect
import logging
import pathlib
import re
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
import jaxcnn.onednn
from jaxcnn.errors import ConfigError, InputError
from jaxcnn.fit import train_and_evaluate
from jaxcnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from jaxcnn.optimizers import OPTIMIZERS, from_config, schedule_from_config
from jaxcnn.train import Metrics, class_labels, compile, params_sha256

from test_fit import write_config


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
    """The logits path (train.py's table, S): beyond Keras's clipping (p < 1e-7) it keeps the true
    crossentropy, 2e4 here, where Keras on JAX reports -log(1e-7) = 16.12 with a zero gradient."""
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


@pytest.mark.parametrize("config, message", [
    ("adamm", r"unknown optimizer 'adamm'; did you mean 'adam'\? known: sgd, adam"),
    ({"name": "sgd", "momentom": 0.9}, r"key `train\.optimizer\.momentom`: unknown argument of optimizer 'sgd' 'momentom'; did you mean 'momentum'\?"),
    ({"name": "sgd", "nesterov": 1}, r"key `train\.optimizer\.nesterov`: must be true or false, got an integer \(1\)"),
    ({"name": "adam", "learning_rate": "fast"}, r"key `train\.optimizer\.learning_rate`: must be a finite number, got a string \('fast'\)"),
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
    yes = (y > 4).astype(np.float32)
    first = compiled.eval_step(state, (x, yes)).compute()
    for _ in range(5):
        state, _ = compiled.train_step(state, (x, yes))
    assert compiled.eval_step(state, (x, yes)).compute()["loss"] < first["loss"]
    p = np.asarray(compiled.predict(state, x))[:, 0]  # binary accuracy: p > 0.5 is the label
    assert compiled.eval_step(state, (x, yes)).compute()["accuracy"] == pytest.approx(np.mean((p > 0.5) == yes))


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


# ---------------------------------------------------------------------------------------------
# Optimizers, schedules and bfloat16 (issue 11): each option is seen in the update it produces,
# each argument's type is checked against the optax signature, bfloat16 is seen in the HLO.

GRADS = {"w": jnp.array([3.0, -4.0]), "b": jnp.array([0.5])}  # global norm sqrt(9 + 16 + 0.25)
PARAMS = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([-1.0])}


def updates(transformation, steps=3):
    """The updates of ``steps`` steps on the fixed gradient GRADS at parameters PARAMS."""
    state = transformation.init(PARAMS)
    out = []
    for _ in range(steps):
        update, state = transformation.update(GRADS, state, PARAMS)
        out.append(np.concatenate([np.asarray(update["b"]), np.asarray(update["w"])]))
    return np.stack(out)


@pytest.mark.parametrize("config, with_option, without", [
    ({"name": "sgd", "learning_rate": 0.1, "weight_decay": 0.5},
     optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.1)), optax.sgd(0.1)),
    ({"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.5},
     optax.adamw(0.1, weight_decay=0.5), optax.adamw(0.1)),  # adamw's own, not its default 1e-4
    ({"name": "sgd", "learning_rate": 0.1, "clip_norm": 1.0},
     optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)), optax.sgd(0.1)),
    ({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True},
     optax.sgd(0.1, momentum=0.9, nesterov=True), optax.sgd(0.1, momentum=0.9)),
    ({"name": "sgd", "learning_rate": 0.1, "schedule": {"name": "piecewise", "boundaries": [1, 2], "scales": [0.5, 0.1]}},
     optax.sgd(optax.piecewise_constant_schedule(0.1, {1: 0.5, 2: 0.1})), optax.sgd(0.1)),
    ({"name": "rmsprop", "learning_rate": 0.1, "momentum": 0.9},
     optax.rmsprop(0.1, momentum=0.9), optax.rmsprop(0.1)),
    ({"name": "sgd", "learning_rate": 0.1, "schedule": {"name": "exponential", "decay_rate": 0.5, "transition_steps": 1}},
     optax.sgd(optax.exponential_decay(0.1, 1, 0.5)), optax.sgd(0.1)),
], ids=["weight_decay-added", "weight_decay-own", "clip_norm", "nesterov", "scales", "momentum", "exponential"])
def test_each_option_changes_the_update_as_optax_does(config, with_option, without):
    got = updates(from_config(config))
    np.testing.assert_allclose(got, updates(with_option), rtol=1e-6)
    assert not np.allclose(got, updates(without), rtol=1e-3)


@pytest.mark.parametrize("config, message", [
    ({"name": "sgd", "momentum": "0.9"}, r"key `train\.optimizer\.momentum`: must be a finite number, got a string \('0\.9'\)"),
    ({"name": "adam", "b1": True}, r"key `train\.optimizer\.b1`: must be a finite number, got a boolean \(True\)"),
    ({"name": "rmsprop", "centered": "yes"}, r"key `train\.optimizer\.centered`: must be true or false, got a string \('yes'\)"),
    ({"name": "adafactor", "min_dim_size_to_factor": 1.5}, r"key `train\.optimizer\.min_dim_size_to_factor`: must be an integer, got a float \(1\.5\)"),
    ({"name": "adam", "mu_dtype": "bfloat17"}, r"key `train\.optimizer\.mu_dtype`: must be a dtype name"),
    ({"name": "lars", "trust_ratio_mask": "all"}, r"key `train\.optimizer\.trust_ratio_mask`: must be true or false \(a mask tree or function cannot be written in a config\), got a string"),
    ({"name": "sgd", "clip_norm": "1"}, r"key `train\.optimizer\.clip_norm`: must be a finite number, got a string \('1'\)"),
    ({"name": "sgd", "clip_norm": 0.0}, r"key `train\.optimizer\.clip_norm`: must be positive, got a float \(0\.0\)"),
    ({"name": "sgd", "weight_decay": "1e-4"}, r"key `train\.optimizer\.weight_decay`: must be a finite number, got a string"),
    ({"name": "sgd", "schedule": "cosine"}, r"key `train\.optimizer\.schedule`: must be a table \(\[train\.optimizer\.schedule\]\), got a string"),
    ({"name": "sgd", "schedule": {"name": "exponential", "staircase": "false"}},
     r"key `train\.optimizer\.schedule\.staircase`: must be true or false, got a string \('false'\)"),
    ({"name": "sgd", "schedule": {"name": "exponential", "transition_steps": 0}},
     r"key `train\.optimizer\.schedule\.transition_steps`: must be positive, got an integer \(0\)"),
    ({"name": "sgd", "schedule": {"name": "warmup_cosine", "warmup_steps": 2.0}},
     r"key `train\.optimizer\.schedule\.warmup_steps`: must be an integer, got a float \(2\.0\)"),
    ({"name": "sgd", "schedule": {"name": "cosine", "alpha": "0"}},
     r"key `train\.optimizer\.schedule\.alpha`: must be a finite number, got a string \('0'\)"),
    ({"name": "sgd", "schedule": {"name": "piecewise", "boundaries": [2], "scales": ["0.1"]}},
     r"key `train\.optimizer\.schedule\.scales`: must be a finite number, got a string \('0\.1'\)"),
    ({"name": "sgd", "schedule": {"name": "piecewise", "boundaries": [4, 2], "scales": [0.1, 0.1]}},
     r"key `train\.optimizer\.schedule\.boundaries`: must be strictly increasing step numbers, got \[4, 2\]"),
    ({"name": "sgd", "schedule": {"name": "piecewise", "boundaries": [2], "scales": []}},
     r"key `train\.optimizer\.schedule`: `boundaries` \(1 steps\) and `scales` \(0 factors\) must be lists of the same length"),
    ({"name": "sgd", "schedule": {"name": 3}}, r"key `train\.optimizer\.schedule\.name`: unknown schedule '3'"),
])
def test_argument_types_are_checked_against_the_optax_signature(config, message):
    with pytest.raises(ConfigError, match=message):
        from_config(config, total_steps=20)


def settable_defaults():
    """(optimizer, argument, optax's default) for every number, integer or boolean argument."""
    for name in OPTIMIZERS:
        for key, parameter in inspect.signature(getattr(optax, name)).parameters.items():
            default = parameter.default
            if key != "learning_rate" and type(default) in (bool, int, float):
                yield name, key, default


@pytest.mark.parametrize("name, key, default", list(settable_defaults()))
def test_every_optimizer_argument_takes_its_optax_default_from_a_config(name, key, default):
    expected = getattr(optax, name)(learning_rate=0.1, **{key: default})
    got = from_config({"name": name, "learning_rate": 0.1, key: default})
    np.testing.assert_allclose(updates(got, steps=2), updates(expected, steps=2), rtol=1e-6)


def test_a_warmup_longer_than_the_run_says_how_to_fix_it():
    config = {"name": "adam", "schedule": {"name": "warmup_cosine", "warmup_steps": 40}}
    with pytest.raises(ConfigError, match=r"^key `train\.optimizer\.schedule`: warmup_steps \(=40\) must be smaller "
                                          r"than the run's 20 steps: lower warmup_steps or use warmup_fraction"):
        from_config(config, total_steps=20)
    with pytest.raises(ConfigError, match=r"warmup_steps \(=40\) must be smaller than `decay_steps` \(=40\)"):
        from_config({"name": "adam", "schedule": {**config["schedule"], "decay_steps": 40}})


@pytest.mark.parametrize("schedule, message", [
    ({"name": "cosine", "decay_steps": 0}, r"key `train\.optimizer\.schedule`: the schedule needs at least 1 decay step"),
    ({"name": "warmup_cosine", "warmup_fraction": 1.0}, r"key `train\.optimizer\.schedule\.warmup_fraction`: must be a fraction of the schedule in \[0, 1\), got a float \(1\.0\)"),
    ({"name": "warmup_cosine", "warmup_fraction": "0.1"}, r"key `train\.optimizer\.schedule\.warmup_fraction`: must be a finite number, got a string"),
    ({"name": "warmup_cosine", "warmup_fraction": 0.1, "warmup_steps": 2}, r"key `train\.optimizer\.schedule`: give either warmup_steps or warmup_fraction, not both"),
    ({"name": "warmup_cosine", "warmup_steps": -1}, r"key `train\.optimizer\.schedule\.warmup_steps`: must not be negative"),
    ({"name": "cosine", "warmup_fraction": 0.1}, r"unknown argument of schedule 'cosine' 'warmup_fraction'"),
])
def test_a_schedule_that_cannot_fit_is_refused_under_its_key(schedule, message):
    with pytest.raises(ConfigError, match=message):
        schedule_from_config(schedule, 0.1, total_steps=20)


def schedule_values(schedule, steps):
    return np.array([float(schedule(step)) for step in range(steps + 1)])


@pytest.mark.parametrize("total_steps, warmup", [(8, 2), (20, 5), (3, 0), (1, 0)])
def test_warmup_fraction_is_a_share_of_the_run_rounded_down(total_steps, warmup):
    got = schedule_from_config({"name": "warmup_cosine", "warmup_fraction": 0.25}, 0.1, total_steps=total_steps)
    expected = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup, total_steps)
    np.testing.assert_allclose(schedule_values(got, total_steps), schedule_values(expected, total_steps), atol=1e-7)


def test_the_main_jobs_schedule_fits_any_epoch_count_and_keeps_its_30_epoch_warmup():
    path = pathlib.Path(__file__).parent.parent / "configs" / "digits_cnn.toml"
    table = tomllib.loads(path.read_text())["train"]["optimizer"]
    steps_per_epoch = 20  # 1,258 training examples in batches of 64
    for epochs in (1, 2, 3, 30, 100):
        from_config(table, total_steps=epochs * steps_per_epoch)
    # at its default 30 epochs (600 steps), 40 warmup steps as when the config said warmup_steps = 40
    lr = schedule_from_config(table["schedule"], table["learning_rate"], total_steps=600)
    expected = optax.warmup_cosine_decay_schedule(0.0, table["learning_rate"], 40, 600)
    np.testing.assert_allclose(schedule_values(lr, 600), schedule_values(expected, 600), atol=1e-9)


def hlo_ops(text, op):
    """The result element types of every ``op`` (dot_general, convolution) in StableHLO ``text``."""
    return re.findall(rf"stablehlo\.{op} .*-> tensor<[0-9x]*x(\w+)>", text)


def main_signature(text):
    return re.search(r"func\.func public @main\((.*?)\) ->", text).group(1)


@pytest.mark.parametrize("precision, compute", [("bfloat16", "bf16"), ("float32", "f32")])
def test_bfloat16_is_the_type_of_every_matmul_and_convolution_and_parameters_stay_float32(precision, compute):
    """Where the whole step computes in bfloat16 (no oneDNN: GPU, TPU, an export, a mesh, a CPU without
    the extension or without native bfloat16)."""
    compiled = compile(small_model(), "adam", precision=precision)
    if compiled.module.lowering.onednn:  # the lowerings XLA has, as an export traces them
        from jaxcnn.export import without_onednn

        compiled = without_onednn(compiled)
    assert compiled.compute_dtype == jnp.dtype(compute.replace("bf16", "bfloat16").replace("f32", "float32"))
    state = compiled.init(0)
    x, y = data(16)
    for text in (compiled.train_step.lower(state, (x, y, np.ones(16, np.float32))).as_text(),
                 compiled.predict.lower(state, x).as_text()):
        products = hlo_ops(text, "dot_general") + hlo_ops(text, "convolution")
        assert products and set(products) == {compute}, products
        arguments = main_signature(text)
        assert "f32" in arguments and "bf16" not in arguments  # parameters, optimizer state and images
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}


@pytest.mark.skipif(not (jaxcnn.onednn.available() and jaxcnn.onednn.info()["bfloat16"]),
                    reason="oneDNN's native bfloat16 kernels")
def test_bfloat16_on_a_cpu_with_native_kernels_is_the_convolutions_in_onednn_and_the_rest_float32():
    model = jaxcnn.Sequential([
        Conv2D(16, 3, padding="same", activation="relu", input_shape=(8, 8, 1)), Conv2D(16, 3, padding="same"),
        BatchNormalization(), MaxPooling2D(), Flatten(), Dense(10, activation="softmax")])
    compiled = compile(model, "adam", precision="bfloat16")
    assert compiled.module.lowering.bfloat16_convolutions and compiled.compute_dtype == jnp.float32
    state = compiled.init(0)
    x, y = data(16)
    text = compiled.train_step.lower(state, (x, y, np.ones(16, np.float32))).as_text()
    calls = re.findall(r'custom_call @jaxcnn_onednn_conv_(\w+)\(.*?bf16 = (true|false)', text)
    # the 1-channel input convolution's weight gradient stays float32 (jaxcnn.onednn: bfloat16 weight
    # gradients from 16 input channels); the image needs no gradient
    assert sorted(calls) == [("bwd_data", "true"), ("bwd_weights", "false"), ("bwd_weights", "true"),
                             ("fwd", "true"), ("fwd", "true")]
    assert set(hlo_ops(text, "dot_general")) == {"f32"} and "xbf16>" not in text  # no bfloat16 array in XLA's part
    fp32 = compile(model, "adam")
    s16, m16 = compiled.train_step(compiled.init(0), (x, y))
    s32, m32 = fp32.train_step(fp32.init(0), (x, y))
    np.testing.assert_allclose(float(m16.loss), float(m32.loss), rtol=2e-2)


def test_predict_and_unrolled_steps_compile_once_per_shape(caplog):
    """README: steps are jitted once per batch shape; predict_batched runs fixed-size batches (no new
    compilation however many images)."""
    compiled = compile(small_model(), "adam")
    state = compiled.init(0)
    x, y = data(32)
    stacked = (x.reshape(4, 8, 8, 8, 1), y.reshape(4, 8), np.ones((4, 8), np.float32))
    caplog.set_level(logging.WARNING)
    with jax.log_compiles():
        for seed in range(4):
            images = np.random.default_rng(seed).normal(size=(8, 8, 8, 1)).astype(np.float32)
            compiled.predict(state, images)
            state, _ = compiled.train_steps(state, stacked)
        for count in (8, 13, 16, 30):  # fixed batches of 8, the last padded
            compiled.predict_batched(state, x[:count], batch_size=8)
    assert compilations(caplog, "_predict") == 1
    assert compilations(caplog, "_train_steps") == 1
    assert int(state.step) == 16


# ---- losses x heads x labels (issue 11): Keras's values, computed by hand ---------------------------
def head(activation, z, loss, metrics=()):
    """``Dense(len(z), activation)`` on 2 inputs with a zero kernel: its pre-activation output is ``z``."""
    model = jaxcnn.Sequential([Dense(len(z), activation=activation, input_shape=(2,))])
    compiled = compile(model, "sgd", loss=loss, metrics=metrics)
    params = {"dense": {"kernel": jnp.zeros((2, len(z))), "bias": jnp.asarray(z, jnp.float32)}}
    return compiled, compiled.init(0).replace(params=params)


ONE = np.ones((1, 2), np.float32)


@pytest.mark.parametrize("activation, z, loss, labels, keras", [
    # lse(1, 2, 3) = 3 + log(1 + e^-1 + e^-2) = 3.407606; -log softmax(z)[0] = 3.407606 - 1
    pytest.param("softmax", [1, 2, 3], "sparse_categorical_crossentropy", [0], 2.407606, id="softmax-sparse"),
    # a linear head's outputs are logits (Keras's from_logits=True): the same figure
    pytest.param(None, [1, 2, 3], "sparse_categorical_crossentropy", [0], 2.407606, id="linear-sparse"),
    # -sum(y log softmax(z)) = lse - sum(y z) = 3.407606 - (0.2 + 0.6 + 1.5) = 1.107606
    pytest.param("softmax", [1, 2, 3], "categorical_crossentropy", [[0.2, 0.3, 0.5]], 1.107606, id="softmax-cce"),
    pytest.param(None, [1, 2, 3], "categorical_crossentropy", [[0.2, 0.3, 0.5]], 1.107606, id="linear-cce"),
    # the case. Keras: binary crossentropy of the softmax probabilities p = (1/3, 1/3, 1/3):
    # mean(-log(1/3), -log(1 - 1/3), -log(1 - 1/3)) = (1.098612 + 2 * 0.405465) / 3 = 0.636514
    # (a sigmoid on the pre-softmax logits would give log 2 = 0.693147)
    pytest.param("softmax", [0, 0, 0], "binary_crossentropy", [[1, 0, 0]], 0.636514, id="softmax-bce"),
    # Keras's clipping: p = (1, e^-100, e^-100) -> clip to [1e-7, 1 - 1e-7]; in float32 1 - 1e-7 is
    # 1 - 2^-23, so the terms are -log(2^-23 * 1.0) = 15.942385 (label 0 on p = 1 - 1e-7),
    # -log(1e-7) = 16.118095 (label 1 on p = 1e-7) and -log(1 - 1e-7) = 1.19e-7: mean 10.686826
    pytest.param("softmax", [100, 0, 0], "binary_crossentropy", [[0, 1, 0]], 10.686826, id="softmax-bce-clipped"),
    # -log sigmoid(0) = log 2 = 0.693147; -log(1 - sigmoid(2)) = softplus(2) = 2 + log(1 + e^-2) = 2.126928;
    # mean over the 2 outputs: 1.410038
    pytest.param("sigmoid", [0, 2], "binary_crossentropy", [[1, 0]], 1.410038, id="sigmoid-bce"),
    pytest.param(None, [0, 2], "binary_crossentropy", [[1, 0]], 1.410038, id="linear-bce"),
    # one output, labels (batch,) as Keras accepts them: -log sigmoid(2) = log(1 + e^-2) = 0.126928
    pytest.param("sigmoid", [2], "binary_crossentropy", [1], 0.126928, id="sigmoid-bce-1-unit"),
    # mean((p - y)^2) on p = (1/3, 1/3, 1/3), y = (1, 0, 0): (4/9 + 1/9 + 1/9) / 3 = 2/9
    pytest.param("softmax", [0, 0, 0], "mean_squared_error", [[1, 0, 0]], 0.222222, id="softmax-mse"),
    # on the sigmoid's outputs: (sigmoid(0) - 1)^2 = 0.25, sigmoid(2)^2 = 0.880797^2 = 0.775803: mean 0.512902
    pytest.param("sigmoid", [0, 2], "mean_squared_error", [[1, 0]], 0.512902, id="sigmoid-mse"),
    pytest.param("relu", [-1, 2], "mean_squared_error", [[1, 0]], 2.5, id="relu-mse"),  # (1 + 4) / 2
])
def test_each_loss_and_head_gives_keras_figure(activation, z, loss, labels, keras):
    compiled, state = head(activation, z, loss)
    dtype = np.int32 if loss == "sparse_categorical_crossentropy" else np.float32
    metrics = compiled.eval_step(state, (ONE, np.asarray(labels, dtype))).compute()
    assert metrics["loss"] == pytest.approx(keras, rel=1e-5)
    state, metrics = compiled.train_step(state, (ONE, np.asarray(labels, dtype)))
    assert float(metrics.loss) == pytest.approx(keras, rel=1e-5) and float(metrics.nonfinite) == 0.0


def test_binary_accuracy_thresholds_the_probabilities_as_keras():
    # softmax(3, 2, -5) = (0.7310, 0.2689, 0.0002): only the first is above 0.5, as the label says
    # (thresholding the logits at 0 would call the second one too)
    compiled, state = head("softmax", [3, 2, -5], "binary_crossentropy")
    assert compiled.eval_step(state, (ONE, np.array([[1, 0, 0]], np.float32))).compute()["accuracy"] == 1.0


@pytest.mark.parametrize("layers, loss, message", [
    ([Dense(3, activation="sigmoid", input_shape=(2,))], "sparse_categorical_crossentropy",
     (r"^layer 0 'dense' \(Dense\): key `loss`: sparse_categorical_crossentropy needs one distribution over "
      r"the classes .* not sigmoid's independent probabilities")),
    ([Dense(3, activation="sigmoid", input_shape=(2,))], "categorical_crossentropy",
     r"^layer 0 'dense' \(Dense\): key `loss`: categorical_crossentropy needs one distribution"),
    ([Dense(1, input_shape=(2,))], "categorical_crossentropy",
     (r"^layer 0 'dense' \(Dense\): key `loss`: categorical_crossentropy needs at least 2 classes, but the "
      r"output has 1 unit")),
    ([Dense(1, activation="sigmoid", input_shape=(2,))], "sparse_categorical_crossentropy",
     r"needs at least 2 classes"),
    ([Dense(1, activation="softmax", input_shape=(2,))], "binary_crossentropy",
     r"^layer 0 'dense' \(Dense\): key `loss`: a softmax over 1 unit always outputs 1.0"),
    ([Dense(3, activation="relu", input_shape=(2,))], "binary_crossentropy",
     (r"^layer 0 'dense' \(Dense\): key `loss`: binary_crossentropy needs the last layer to end in softmax or "
      r"sigmoid \(probabilities\) or in no activation \(logits\), not 'relu'")),
    ([Dense(3, activation="tanh", input_shape=(2,))], "sparse_categorical_crossentropy", r"not 'tanh'"),
    ([Dense(3, activation="softmax", input_shape=(2,)), Dropout(0.5)], "categorical_crossentropy",
     (r"^layer 0 'dense' \(Dense\): key `loss`: categorical_crossentropy needs the softmax to be the model's "
      r"last layer, but layer 1 'dropout' \(Dropout\) follows it")),
])
def test_a_loss_the_head_cannot_feed_is_refused_at_compile_naming_the_layer(layers, loss, message):
    with pytest.raises(ConfigError, match=message):
        compile(jaxcnn.Sequential(layers), "sgd", loss=loss)


def test_without_a_loss_compile_takes_the_heads_own():
    assert compile(jaxcnn.Sequential([Dense(3, activation="softmax", input_shape=(2,))])).loss == \
        "sparse_categorical_crossentropy"
    assert compile(jaxcnn.Sequential([Dense(1, activation="sigmoid", input_shape=(2,))])).loss == \
        "binary_crossentropy"
    assert compile(jaxcnn.Sequential([Dense(1, input_shape=(2,))])).loss == "mean_squared_error"
    # a softmax that is not last: no crossentropy fits, so no refusal for a model only served
    assert compile(jaxcnn.Sequential([Dense(3, activation="softmax", input_shape=(2,)), Dropout(0.5)])).loss == \
        "mean_squared_error"


@pytest.mark.parametrize("units, activation, loss, metrics, message", [
    (3, None, "mse", ["accuracy"], r"key `metrics`: metric 'accuracy' does not apply to mean_squared_error"),
    (10, None, "mean_squared_error", ["top3_accuracy"], r"metric 'top3_accuracy' does not apply to mean_squared"),
    (1, "sigmoid", "binary_crossentropy", ["top_k_accuracy"],
     r"metric 'top_k_accuracy' ranks classes, so it needs a categorical loss, not binary_crossentropy"),
    (5, "softmax", "sparse_categorical_crossentropy", ["top_k_accuracy"],
     r"metric 'top_k_accuracy' needs more than 5 classes, but the model's output has 5"),
    (3, "softmax", "categorical_crossentropy", ["accuracy", "top3_accuracy"], r"needs more than 3 classes"),
    (10, "softmax", "sparse_categorical_crossentropy", ["top0_accuracy"], r"k \(=0\) must be at least 1"),
])
def test_metrics_that_cannot_apply_are_refused_at_compile(units, activation, loss, metrics, message):
    model = jaxcnn.Sequential([Dense(units, activation=activation, input_shape=(2,))])
    with pytest.raises(ConfigError, match=message):
        compile(model, "sgd", loss=loss, metrics=metrics)


def test_only_the_metrics_that_apply_are_reported():
    compiled, state = head(None, [0.5, 2, 1], "mse")
    assert compiled.eval_step(state, (ONE, np.zeros((1, 3), np.float32))).compute().keys() == {"loss", "examples"}
    compiled, state = head("softmax", [1, 2, 3], "sparse_categorical_crossentropy")  # 3 classes: no top-5
    assert compiled.eval_step(state, (ONE, np.array([0]))).compute().keys() == {"loss", "accuracy", "examples"}
    compiled, state = head("softmax", [9, 8, 7, 6, 5, 4], "sparse_categorical_crossentropy", ["top3_accuracy"])
    means = compiled.eval_step(state, (np.ones((2, 2), np.float32), np.array([2, 3]))).compute()
    assert (means["accuracy"], means["top3_accuracy"]) == (0.0, 0.5)  # class 2 ranks third, class 3 fourth
    compiled, state = head("sigmoid", [0, 2], "binary_crossentropy")
    assert compiled.eval_step(state, (ONE, np.array([[1.0, 1.0]]))).compute() == {
        "loss": pytest.approx((0.693147 + 0.126928) / 2, rel=1e-5), "accuracy": 0.5, "examples": 1}


def test_the_fit_loop_gives_a_categorical_loss_one_hot_labels(tmp_path):
    """``loss = "categorical_crossentropy"`` in ``jaxcnn train``: the data's integer labels are
    one-hot encoded, so the run is the sparse run (the same loss, by another route)."""
    runs = {}
    for loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        config = write_config(tmp_path, name=f"{loss}.toml", epochs=1)
        config.write_text(config.read_text().replace("[train]\n", f"[train]\nloss = \"{loss}\"\n"))
        runs[loss] = train_and_evaluate(config, tmp_path / loss, progress=False)
    sparse, categorical = runs.values()
    assert categorical["test_loss"] == pytest.approx(sparse["test_loss"], rel=1e-5)
    assert categorical["test_accuracy"] == sparse["test_accuracy"]


def test_class_labels_in_the_form_each_loss_takes():
    softmax = jaxcnn.Sequential([Dense(3, activation="softmax", input_shape=(2,))])
    labels = np.array([2, 0], np.int32)
    np.testing.assert_array_equal(class_labels("sparse_categorical_crossentropy", softmax, 3)(labels), labels)
    np.testing.assert_array_equal(class_labels("categorical_crossentropy", softmax, 3)(labels),
                                  [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(class_labels("binary_crossentropy", softmax, 3)(labels), [[0, 0, 1], [1, 0, 0]])
    yes_no = jaxcnn.Sequential([Dense(1, activation="sigmoid", input_shape=(2,))])
    assert class_labels("binary_crossentropy", yes_no, 2)(np.array([1, 0])).tolist() == [[1.0], [0.0]]
    with pytest.raises(ConfigError, match=r"^run.toml: key `train.loss`: mean_squared_error is a regression loss, "
                                          r"and the data are class labels"):
        class_labels("mean_squared_error", softmax, 3, source="run.toml")
    with pytest.raises(ConfigError, match=r"key `layers`: the model's output \(1,\) does not fit the data's 3 classes: "
                                          r"the last layer should be Dense\(3, activation=\"sigmoid\"\)"):
        class_labels("binary_crossentropy", yes_no, 3)
    with pytest.raises(ConfigError, match=r"key `train.loss`: unknown loss 'hinge'"):
        class_labels("hinge", softmax, 3)


# ---- arrays checked where they enter -------------------------------------------------------------
@pytest.mark.parametrize("entry", ["train_step", "train_steps", "eval_step", "predict"])
def test_a_wrong_image_shape_is_refused_naming_the_expected_shape(entry):
    compiled = compile(small_model(), "sgd")
    state = compiled.init(0)
    x, y = data(8)
    x = np.zeros((8, 9, 9, 1), np.float32)
    arguments = {"train_step": (x, y), "eval_step": (x, y), "predict": x,
                 "train_steps": (x[None], y[None])}[entry]
    expected = r"\(steps, batch, 8, 8, 1\)" if entry == "train_steps" else r"\(batch, 8, 8, 1\)"
    shape = r"\(1, 8, 9, 9, 1\)" if entry == "train_steps" else r"\(8, 9, 9, 1\)"
    with pytest.raises(InputError, match=rf"^{entry}: images of shape {shape} do not fit the model's input "
                                         rf"\(8, 8, 1\): expected {expected}$"):
        getattr(compiled, entry)(state, arguments)


def test_labels_of_the_wrong_form_or_range_are_refused():
    compiled = compile(small_model(), "sgd")
    state = compiled.init(0)
    x, y = data(8)
    with pytest.raises(InputError, match=r"^train_step: labels hold class 10, outside the model's 10 classes 0..9$"):
        compiled.train_step(state, (x, np.where(y == y[0], 10, y)))
    with pytest.raises(InputError, match=r"eval_step: labels hold class -1"):
        compiled.eval_step(state, (x, np.full(8, -1, np.int32)))
    with pytest.raises(InputError, match=r"labels of shape \(8, 10\) do not fit sparse_categorical_crossentropy on "
                                         r"the model's output \(10,\): expected integer class indices of shape \(8,\): "
                                         r"these look like one-hot rows"):
        compiled.eval_step(state, (x, np.eye(10, dtype=np.float32)[y]))
    with pytest.raises(InputError, match=r"labels of dtype float32: sparse_categorical_crossentropy takes integer"):
        compiled.eval_step(state, (x, y.astype(np.float32)))
    with pytest.raises(InputError, match=r"mask of shape \(4,\) does not fit images of shape \(8, 8, 8, 1\): "
                                         r"expected \(8,\)"):
        compiled.eval_step(state, (x, y, np.ones(4, np.float32)))
    categorical = compile(small_model(), "sgd", loss="categorical_crossentropy")
    with pytest.raises(InputError, match=r"labels of shape \(8,\) do not fit categorical_crossentropy on the model's "
                                         r"output \(10,\): expected one-hot rows of shape \(8, 10\): these look like "
                                         r"class indices"):
        categorical.train_step(categorical.init(0), (x, y))
    binary, state = head("sigmoid", [0, 2], "binary_crossentropy")
    with pytest.raises(InputError, match=r"labels hold 2.0, outside \[0, 1\]"):
        binary.eval_step(state, (ONE, np.array([[1.0, 2.0]], np.float32)))


def test_device_labels_out_of_range_are_not_read_back_but_count_neither_as_right_nor_as_a_step():
    compiled = compile(small_model(), "sgd", metrics=["top5_accuracy"])
    state = compiled.init(0)
    before = params_sha256(state.params)
    x, _ = data(8)
    state, metrics = compiled.train_step(state, (x, jnp.full(8, 12, jnp.int32)))  # no class 12
    assert float(metrics.nonfinite) == 1.0 and params_sha256(state.params) == before
    assert float(metrics.correct) == 0.0 and float(metrics.top_k_correct) == 0.0  # was top-5 = 1.0


def test_arrays_are_checked_once_per_shape_and_the_steps_compile_once(monkeypatch):
    compiled = compile(small_model(), "sgd")
    state = compiled.init(0)
    checks = []
    check = compiled.eval_step._check
    monkeypatch.setattr(compiled.eval_step, "_check", lambda *a: (checks.append(a[0]), check(*a)))
    x, y = data(16)
    for _ in range(5):
        compiled.eval_step(state, (x[:8], y[:8]))
    compiled.eval_step(state, (x, y))
    assert checks == ["eval_step", "eval_step"]  # one check per shape, not per call
    xs, ys = x.reshape(2, 8, 8, 8, 1), y.reshape(2, 8)
    for _ in range(3):
        state, _ = compiled.train_steps(state, (xs, ys))
        compiled.predict(state, x[:8])
    assert compiled.train_steps._cache_size() == 1 and compiled.predict._cache_size() == 1


def test_a_non_finite_adam_step_leaves_the_optimizer_state_too():
    compiled = compile(small_model(), "adam")
    state, metrics = compiled.train_step(compiled.init(0), data(16))
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    x, y = data(16)
    x[0, 0, 0, 0] = np.nan
    state, metrics = compiled.train_step(state, (x, y))
    assert float(metrics.nonfinite) == 1.0 and int(state.step) == 2
    jax.tree.map(np.testing.assert_array_equal, (state.params, state.opt_state), before)
    state, metrics = compiled.train_step(state, data(16))  # a finite step after it updates again
    assert float(metrics.nonfinite) == 0.0
    assert params_sha256(state.params) != params_sha256(before[0])


def test_the_cpu_step_copies_no_optimizer_state():
    """The non-finite guard as `where` over the computed update made XLA's CPU backend copy each
    Adam moment before writing it in place (one copy per parameter and moment); as `cond` it copies
    none (jaxcnn.train's _train_step)."""
    compiled = compile(small_model(), "adam")
    state = compiled.init(0)
    text = compiled.train_step.lower(state, data(8)).compile().as_text()
    assert compiled.module.lowering.backend == "cpu"
    assert re.findall(r" copy\(%state_opt_state[^)]*\)", text) == []
