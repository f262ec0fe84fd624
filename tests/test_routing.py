"""Tests of pipeline.models.routing.dynamic_routing."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.models import routing


def reference_routing(u_hat, iterations):
  """Procedure 1 of Sabour et al. 2017, written out in NumPy."""
  batch, n_in, n_out, _ = u_hat.shape
  b = np.zeros([batch, n_in, n_out])
  for r in range(iterations):
    c = np.exp(b) / np.exp(b).sum(axis=2, keepdims=True)   # softmax over j
    s = np.einsum('bij,bijd->bjd', c, u_hat)
    norm2 = (s ** 2).sum(-1, keepdims=True)
    v = norm2 / (1 + norm2) * s / np.sqrt(norm2)
    if r < iterations - 1:
      b = b + np.einsum('bijd,bjd->bij', u_hat, v)
  return v, c


@pytest.mark.parametrize('iterations', [1, 2, 3])
def test_matches_numpy_reference(iterations):
  rng = np.random.default_rng(iterations)
  u_hat = rng.normal(size=[4, 30, 5, 6]).astype(np.float32)
  v, c = routing.dynamic_routing(tf.constant(u_hat), iterations)
  v_ref, c_ref = reference_routing(u_hat.astype(np.float64), iterations)
  np.testing.assert_allclose(v.numpy(), v_ref, atol=1e-5)
  np.testing.assert_allclose(c.numpy(), c_ref, atol=1e-5)


def test_coefficients_sum_to_one_over_classes():
  u_hat = tf.random.normal([3, 12, 7, 4], seed=4)
  _, c = routing.dynamic_routing(u_hat, 3)
  np.testing.assert_allclose(c.numpy().sum(axis=2), 1.0, atol=1e-6)


def test_one_iteration_gives_uniform_coefficients():
  _, c = routing.dynamic_routing(tf.random.normal([2, 9, 4, 3], seed=5), 1)
  np.testing.assert_allclose(c.numpy(), 0.25, atol=1e-7)


def test_more_iterations_sharpen_agreement():
  _, c1 = routing.dynamic_routing(tf.random.normal([2, 50, 4, 8], seed=6), 1)
  _, c3 = routing.dynamic_routing(tf.random.normal([2, 50, 4, 8], seed=6), 3)
  assert c3.numpy().max() > c1.numpy().max()


def test_no_retrace_on_new_batch_size():
  fn = routing.routing_function(2)
  routing.dynamic_routing(tf.random.normal([3, 10, 4, 5]), 2)
  count = fn.experimental_get_tracing_count()
  for batch in (1, 7, 16):
    routing.dynamic_routing(tf.random.normal([batch, 10, 4, 5]), 2)
  assert fn.experimental_get_tracing_count() == count


@pytest.mark.parametrize('stop', [False, True])
def test_gradients_flow(stop):
  u_hat = tf.Variable(tf.random.normal([2, 6, 3, 4], seed=7))
  with tf.GradientTape() as tape:
    v, _ = routing.dynamic_routing(u_hat, 3, stop_inner_gradients=stop)
    loss = tf.reduce_sum(tf.norm(v, axis=-1))
  grad = tape.gradient(loss, u_hat)
  assert grad is not None and np.isfinite(grad.numpy()).all()
  assert np.abs(grad.numpy()).sum() > 0


def test_stop_inner_gradients_changes_gradient_not_value():
  u_hat = tf.Variable(tf.random.normal([2, 6, 3, 4], seed=8))
  grads, values = [], []
  for stop in (False, True):
    with tf.GradientTape() as tape:
      v, _ = routing.dynamic_routing(u_hat, 3, stop_inner_gradients=stop)
      loss = tf.reduce_sum(tf.norm(v, axis=-1))
    grads.append(tape.gradient(loss, u_hat).numpy())
    values.append(v.numpy())
  np.testing.assert_allclose(values[0], values[1], rtol=1e-6)
  assert not np.allclose(grads[0], grads[1])


def test_bias_is_added_before_squash():
  u_hat = tf.zeros([1, 4, 2, 3])
  bias = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  v, _ = routing.dynamic_routing(u_hat, 1, bias=bias)
  np.testing.assert_allclose(v.numpy()[0, 0], [0.5, 0, 0], atol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match='num_iterations'):
    routing.dynamic_routing(tf.zeros([1, 2, 3, 4]), 0)
  with pytest.raises(ValueError, match='rank 4'):
    routing.dynamic_routing(tf.zeros([2, 3, 4]), 1)
