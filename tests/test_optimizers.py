"""kunet's fused optimizers against Keras's own: the same weights and slots after the same steps."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kunet.optimizers import FusedAdam, FusedAdamThenSGD, FusedSGD, PhasedSchedule

SHAPES = [(3, 3, 1, 4), (4,), (3, 3, 4, 2), (2,)]


def _variables_and_gradients(steps: int):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in SHAPES]
    gradients = [[rng.normal(size=shape).astype("float32") for shape in SHAPES] for _ in range(steps)]
    return variables, gradients


def _run(optimizer, steps: int = 5, compiled: bool = False, sparse: bool = False):
    variables, gradients = _variables_and_gradients(steps)
    optimizer.build(variables)

    def apply(grads):
        if sparse:  # the first gradient as IndexedSlices, as an embedding's would be
            first = tf.IndexedSlices(tf.constant(grads[0][:2]), tf.constant([0, 1]), tf.constant(SHAPES[0]))
            grads = [first] + grads[1:]
        optimizer.apply(grads, variables)

    apply = tf.function(apply) if compiled else apply
    for grads in gradients:
        apply([tf.constant(g) for g in grads])
    return [v.numpy() for v in variables] + [v.numpy() for v in optimizer.variables]


def _schedule():
    return keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=2, decay_rate=0.5)


CASES = {
    "adam": (keras.optimizers.Adam, FusedAdam, {"learning_rate": 0.01}),
    "adam, schedule and clipnorm": (
        keras.optimizers.Adam, FusedAdam, {"learning_rate": _schedule(), "global_clipnorm": 1.0, "beta_2": 0.99}
    ),
    "adam, weight decay": (keras.optimizers.Adam, FusedAdam, {"learning_rate": 0.01, "weight_decay": 0.1}),
    "adam, amsgrad (Keras's update)": (keras.optimizers.Adam, FusedAdam, {"learning_rate": 0.01, "amsgrad": True}),
    "sgd momentum": (keras.optimizers.SGD, FusedSGD, {"learning_rate": 0.05, "momentum": 0.99}),
    "sgd nesterov, schedule": (
        keras.optimizers.SGD, FusedSGD, {"learning_rate": _schedule(), "momentum": 0.9, "nesterov": True}
    ),
    "sgd without momentum (Keras's update)": (keras.optimizers.SGD, FusedSGD, {"learning_rate": 0.05}),
}  # fmt: skip


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_optimizers_give_kerass_weights_and_slots(case, compiled):
    keras_class, fused_class, kwargs = CASES[case]
    expected = _run(keras_class(**kwargs), compiled=compiled)
    got = _run(fused_class(**kwargs), compiled=compiled)
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)  # updates are ~1e-2: rounding, not formula


def test_a_sparse_gradient_takes_kerass_update():
    expected = _run(keras.optimizers.Adam(0.01), sparse=True)
    got = _run(FusedAdam(0.01), sparse=True)
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)  # updates are ~1e-2: rounding, not formula


def test_the_fused_update_is_one_kernel_per_variable():
    optimizer = FusedAdam(0.01)
    variables = [keras.Variable(np.ones(shape, "float32")) for shape in SHAPES]
    optimizer.build(variables)
    graph = (
        tf.function(lambda grads: optimizer.apply(grads, variables))
        .get_concrete_function([tf.TensorSpec(shape, tf.float32) for shape in SHAPES])
        .graph
    )
    ops = [op.type for op in graph.get_operations()]
    assert ops.count("ResourceApplyAdam") == len(SHAPES)
    assert "AssignSubVariableOp" not in ops or ops.count("AssignSubVariableOp") < len(SHAPES)


def test_under_loss_scaling_the_fused_adam_gives_kerass_weights():
    expected = _run(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01)), compiled=True)
    got = _run(keras.optimizers.LossScaleOptimizer(FusedAdam(0.01)), compiled=True)
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_of_kerass_adam_resumes_into_the_fused_one(tmp_path):
    """Runs checkpointed before kunet fused its updates resume with their slots and step count."""
    rng = np.random.default_rng(1)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in SHAPES]
    old = keras.optimizers.Adam(0.01)
    old.build(variables)
    old.apply([tf.constant(rng.normal(size=shape), tf.float32) for shape in SHAPES], variables)
    path = tf.train.Checkpoint(optimizer=old, variables=variables).write(str(tmp_path / "ckpt"))
    new = FusedAdam(0.01)
    new.build(variables)
    tf.train.Checkpoint(optimizer=new, variables=variables).read(path).assert_consumed()
    assert int(new.iterations.numpy()) == 1
    for ours, theirs in zip(new.variables, old.variables):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize("case", list(CASES))
def test_skipping_non_finite_updates_changes_nothing_while_gradients_are_finite(case):
    keras_class, fused_class, kwargs = CASES[case]
    expected = _run(keras_class(**kwargs), compiled=True)
    got = _run(fused_class(**kwargs, skip_non_finite=True), compiled=True)
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "case", ["adam", "sgd momentum", "adam, amsgrad (Keras's update)", "sgd without momentum (Keras's update)"]
)
def test_a_variable_whose_gradient_is_not_finite_keeps_its_weights_and_slots(case):
    """NaN, Inf, or values whose squares overflow float32 (the training step's norm would be Inf): that variable and
    its slots stay as they were; the others take their update."""
    _, fused_class, kwargs = CASES[case]
    optimizer = fused_class(**kwargs, skip_non_finite=True)
    rng = np.random.default_rng(2)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in SHAPES]
    optimizer.build(variables)
    apply = tf.function(lambda grads: optimizer.apply(grads, variables))
    apply([tf.constant(rng.normal(size=shape), tf.float32) for shape in SHAPES])

    def state(index):
        slots = [v for v in optimizer.variables if v.path.split("/")[-1].startswith(variables[index].name + "_")]
        return [np.array(variables[index])] + [np.array(v) for v in slots]

    before = [state(i) for i in range(len(SHAPES))]
    bad = [np.full(SHAPES[0], np.nan), rng.normal(size=SHAPES[1]), np.full(SHAPES[2], 1e20), np.full(SHAPES[3], np.inf)]
    apply([tf.constant(g, tf.float32) for g in bad])
    for index in (0, 2, 3):
        for ours, theirs in zip(state(index), before[index]):
            np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(state(1)[0], before[1][0])
    assert int(optimizer.iterations.numpy()) == 2


def test_the_skip_applies_the_training_steps_norm_test_at_the_overflow_edge():
    """Two values of 1.5e19: each square (2.25e38) fits in float32, their sum does not, so the step's logged norm is
    Inf; the variable must be left alone, not updated with a gradient the log calls non-finite."""
    from kunet.optimizers import gradient_is_finite, sum_of_squares

    edge = tf.constant([1.5e19, 1.5e19], tf.float32)
    assert not np.isfinite(float(sum_of_squares(edge))) and not bool(gradient_is_finite(edge))
    assert bool(gradient_is_finite(tf.constant([1e19, 1e19], tf.float32)))


def test_the_fused_optimizers_round_trip_their_config():
    optimizer = FusedSGD(0.05, momentum=0.9, nesterov=True, global_clipnorm=2.0, skip_non_finite=True)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(restored) is FusedSGD
    assert restored.get_config() == optimizer.get_config() and restored.skip_non_finite


def _phases():
    first = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5)
    second = keras.optimizers.schedules.CosineDecay(0.0, 4, warmup_target=0.05, warmup_steps=2)
    return first, second


def _two_runs(switch: int, steps: int, momentum: float):
    """The recipe as two Keras optimizers one after the other: Adam for ``switch`` steps, then a fresh SGD (its
    schedule from step 0, momentum from 0) on the same weights, with _run's variables and gradients."""
    first, second = _phases()
    variables, gradients = _variables_and_gradients(steps)
    adam, sgd = keras.optimizers.Adam(first), keras.optimizers.SGD(second, momentum=momentum)
    adam.build(variables)
    sgd.build(variables)
    for index, grads in enumerate(gradients):
        (adam if index < switch else sgd).apply([tf.constant(g) for g in grads], variables)
    return [v.numpy() for v in variables], adam, sgd


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_adam_then_sgd_equals_kerass_adam_then_a_fresh_kerass_sgd(compiled):
    switch, steps = 3, 7
    expected, adam, sgd = _two_runs(switch, steps, momentum=0.9)
    first, second = _phases()
    optimizer = FusedAdamThenSGD(PhasedSchedule(first, second, switch), switch_step=switch, sgd_momentum=0.9)
    got = _run(optimizer, steps=steps, compiled=compiled)
    for ours, theirs in zip(got[: len(SHAPES)], expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # Adam's slots stop changing at the switch; SGD's momentum holds only the SGD part's steps.
    for ours, theirs in zip(optimizer._momentums + optimizer._velocities, adam._momentums + adam._velocities):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(optimizer._sgd_momentums, sgd.momentums):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-7)


def test_the_phased_schedule_starts_the_second_part_at_its_own_step_zero():
    first, second = _phases()
    schedule = PhasedSchedule(first, second, 3)
    rates = [float(schedule(step)) for step in range(7)]
    np.testing.assert_allclose(rates[:3], [float(first(step)) for step in range(3)], rtol=1e-6)
    np.testing.assert_allclose(rates[3:], [float(second(step)) for step in range(4)], rtol=1e-6, atol=1e-9)
    assert rates[3] == 0.0  # the SGD part's warm-up starts from 0


def test_adam_then_sgd_skips_a_non_finite_gradient_in_the_sgd_part():
    first, second = _phases()
    optimizer = FusedAdamThenSGD(PhasedSchedule(first, second, 1), switch_step=1, skip_non_finite=True)
    rng = np.random.default_rng(3)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in SHAPES]
    optimizer.build(variables)
    apply = tf.function(lambda grads: optimizer.apply(grads, variables))
    for _ in range(3):  # Adam, then two SGD steps (the first at learning rate 0)
        apply([tf.constant(rng.normal(size=shape), tf.float32) for shape in SHAPES])
    before = [np.array(v) for v in variables]
    momentum_before = [np.array(v) for v in optimizer._sgd_momentums]
    apply([tf.constant(np.full(SHAPES[0], np.nan), tf.float32)]
          + [tf.constant(rng.normal(size=shape), tf.float32) for shape in SHAPES[1:]])  # fmt: skip
    np.testing.assert_array_equal(np.array(variables[0]), before[0])
    np.testing.assert_array_equal(np.array(optimizer._sgd_momentums[0]), momentum_before[0])
    assert all(not np.array_equal(np.array(v), b) for v, b in zip(variables[1:], before[1:]))


def test_adam_then_sgd_round_trips_its_config():
    first, second = _phases()
    optimizer = FusedAdamThenSGD(PhasedSchedule(first, second, 5), switch_step=5, sgd_momentum=0.99,
                                 skip_non_finite=True)  # fmt: skip
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(restored) is FusedAdamThenSGD and restored.get_config() == optimizer.get_config()
    schedule = restored._learning_rate
    assert isinstance(schedule, PhasedSchedule) and schedule.switch_step == 5
    np.testing.assert_allclose([float(schedule(s)) for s in range(8)],
                               [float(optimizer._learning_rate(s)) for s in range(8)], rtol=1e-6)  # fmt: skip


_MIRRORED = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from kunet.optimizers import FusedAdam, FusedAdamThenSGD, FusedSGD, PhasedSchedule

def run(make, make_second=None, switch=4):
    # Four steps; with make_second, the optimizers of the first `switch` steps and of the rest.
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
        variable = keras.Variable(np.linspace(-1, 1, 12, dtype='float32').reshape(3, 4))
        optimizers = [make(), (make_second or make)()]
        for optimizer in optimizers:
            optimizer.build([variable])

    @tf.function
    def step(gradient, part):
        def replica_fn(gradient):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            optimizers[part].apply([gradient * tf.cast(replica + 1, tf.float32)], [variable])
        strategy.run(replica_fn, args=(gradient,))

    for k in range(4):
        step(tf.fill([3, 4], 0.1 * (k + 1)), 0 if k < switch else 1)
    copies = [np.array(v) for v in variable.value.values]
    assert np.array_equal(copies[0], copies[1]), "replicas diverged"
    return copies[0]

for keras_class, fused_class, kwargs in [
    (keras.optimizers.Adam, FusedAdam, {'learning_rate': 0.01}),
    (keras.optimizers.SGD, FusedSGD, {'learning_rate': 0.05, 'momentum': 0.9}),
]:
    expected = run(lambda: keras_class(**kwargs))
    got = run(lambda: fused_class(**kwargs))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, np.linspace(-1, 1, 12).reshape(3, 4))
# Adam for 2 steps, then SGD from zero momentum with its own schedule (constant 0.05 here).
expected = run(lambda: keras.optimizers.Adam(0.01), lambda: keras.optimizers.SGD(0.05, momentum=0.9), switch=2)
got = run(lambda: FusedAdamThenSGD(PhasedSchedule(0.01, 0.05, 2), switch_step=2, sgd_momentum=0.9))
np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
print('mirrored ok')
"""


@pytest.mark.slow
def test_under_mirrored_strategy_every_replica_gets_kerass_update():
    """Two logical CPUs: the all-reduced gradient updates both copies of each variable exactly as Keras's
    optimizers do (a fused kernel given the wrong replica's handle would leave one copy behind)."""
    result = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mirrored ok" in result.stdout
