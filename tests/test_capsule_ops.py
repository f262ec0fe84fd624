"""Tests of pipeline.models.capsule_ops: squash, dynamic routing, EM routing."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.models import capsule_ops


def test_squash_norm_below_one_and_direction_kept():
  rng = np.random.default_rng(1)
  s = tf.constant((rng.normal(size=[64, 10, 8]) *
                   rng.uniform(0, 5, size=[64, 10, 1])).astype(np.float32))
  v = capsule_ops.squash(s)
  s_norm = np.linalg.norm(s.numpy(), axis=-1)
  v_norm = np.linalg.norm(v.numpy(), axis=-1)
  assert (v_norm < 1).all()
  np.testing.assert_allclose(v_norm, s_norm ** 2 / (1 + s_norm ** 2),
                             rtol=1e-4, atol=1e-6)
  cos = np.sum(s.numpy() * v.numpy(), -1) / (s_norm * v_norm + 1e-12)
  np.testing.assert_allclose(cos[s_norm > 1e-2], 1.0, atol=1e-5)


def test_squash_axis():
  s = tf.random.normal([3, 8, 5], seed=3)
  np.testing.assert_allclose(
      capsule_ops.squash(s, axis=1).numpy(),
      np.transpose(capsule_ops.squash(tf.transpose(s, [0, 2, 1])).numpy(),
                   [0, 2, 1]), rtol=1e-6)


def test_squash_gradient_finite_at_zero():
  s = tf.zeros([2, 4, 8])
  with tf.GradientTape() as tape:
    tape.watch(s)
    v = capsule_ops.squash(s)
    loss = tf.reduce_sum(v)
  grad = tape.gradient(loss, s)
  assert np.isfinite(grad.numpy()).all()
  assert np.isfinite(v.numpy()).all()
  np.testing.assert_array_equal(v.numpy(), 0.0)


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
  v, c = capsule_ops.dynamic_routing(tf.constant(u_hat), iterations)
  v_ref, c_ref = reference_routing(u_hat.astype(np.float64), iterations)
  np.testing.assert_allclose(v.numpy(), v_ref, atol=1e-5)
  np.testing.assert_allclose(c.numpy(), c_ref, atol=1e-5)


@pytest.mark.parametrize('dtype', [tf.bfloat16, tf.float16])
def test_16_bit_u_hat_gives_float32_outputs_near_the_reference(dtype):
  rng = np.random.default_rng(7)
  u_hat = rng.normal(scale=0.3, size=[4, 30, 5, 6]).astype(np.float32)
  low = tf.Variable(tf.cast(u_hat, dtype))
  with tf.GradientTape() as tape:
    v, c = capsule_ops.dynamic_routing(low, 3)
    loss = tf.reduce_sum(v)
  grad = tape.gradient(loss, low)
  assert v.dtype == tf.float32 and c.dtype == tf.float32
  assert grad.dtype == dtype and np.isfinite(grad.numpy()).all()
  # The reference sees the rounded inputs: what is left is the 16-bit
  # rounding of the sums' results (8 bits of bfloat16 mantissa: ~0.4%).
  v_ref, c_ref = reference_routing(
      tf.cast(low, tf.float64).numpy(), 3)
  np.testing.assert_allclose(v.numpy(), v_ref, atol=0.01)
  np.testing.assert_allclose(c.numpy(), c_ref, atol=0.01)
  np.testing.assert_allclose(c.numpy().sum(axis=2), 1.0, atol=1e-6)


def test_coefficients_sum_to_one_over_classes():
  u_hat = tf.random.normal([3, 12, 7, 4], seed=4)
  _, c = capsule_ops.dynamic_routing(u_hat, 3)
  np.testing.assert_allclose(c.numpy().sum(axis=2), 1.0, atol=1e-6)


def test_one_iteration_gives_uniform_coefficients():
  _, c = capsule_ops.dynamic_routing(tf.random.normal([2, 9, 4, 3], seed=5), 1)
  np.testing.assert_allclose(c.numpy(), 0.25, atol=1e-7)


def test_more_iterations_sharpen_agreement():
  _, c1 = capsule_ops.dynamic_routing(tf.random.normal([2, 50, 4, 8], seed=6), 1)
  _, c3 = capsule_ops.dynamic_routing(tf.random.normal([2, 50, 4, 8], seed=6), 3)
  assert c3.numpy().max() > c1.numpy().max()


def test_no_retrace_on_new_batch_size():
  fn = capsule_ops.routing_function(2)
  capsule_ops.dynamic_routing(tf.random.normal([3, 10, 4, 5]), 2)
  count = fn.experimental_get_tracing_count()
  for batch in (1, 7, 16):
    capsule_ops.dynamic_routing(tf.random.normal([batch, 10, 4, 5]), 2)
  assert fn.experimental_get_tracing_count() == count


@pytest.mark.parametrize('stop', [False, True])
def test_gradients_flow(stop):
  u_hat = tf.Variable(tf.random.normal([2, 6, 3, 4], seed=7))
  with tf.GradientTape() as tape:
    v, _ = capsule_ops.dynamic_routing(u_hat, 3, stop_inner_gradients=stop)
    loss = tf.reduce_sum(tf.norm(v, axis=-1))
  grad = tape.gradient(loss, u_hat)
  assert grad is not None and np.isfinite(grad.numpy()).all()
  assert np.abs(grad.numpy()).sum() > 0


def test_stop_inner_gradients_changes_gradient_not_value():
  u_hat = tf.Variable(tf.random.normal([2, 6, 3, 4], seed=8))
  grads, values = [], []
  for stop in (False, True):
    with tf.GradientTape() as tape:
      v, _ = capsule_ops.dynamic_routing(u_hat, 3, stop_inner_gradients=stop)
      loss = tf.reduce_sum(tf.norm(v, axis=-1))
    grads.append(tape.gradient(loss, u_hat).numpy())
    values.append(v.numpy())
  np.testing.assert_allclose(values[0], values[1], rtol=1e-6)
  assert not np.allclose(grads[0], grads[1])


def test_bias_is_added_before_squash():
  u_hat = tf.zeros([1, 4, 2, 3])
  bias = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  v, _ = capsule_ops.dynamic_routing(u_hat, 1, bias=bias)
  np.testing.assert_allclose(v.numpy()[0, 0], [0.5, 0, 0], atol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match='num_iterations'):
    capsule_ops.dynamic_routing(tf.zeros([1, 2, 3, 4]), 0)
  with pytest.raises(ValueError, match='rank 4'):
    capsule_ops.dynamic_routing(tf.zeros([2, 3, 4]), 1)


def reference_em(votes, act, beta_u, beta_a, iterations, child_ids=None,
                 final_lambda=0.01, floor=1e-4, eps=1e-7):
  """EM routing (Hinton et al. 2018, Procedure 1) in NumPy, float64.

  votes [b, P, K, C, D]; act [b, P, K]; child_ids [P*K] or None.
  """
  b, p, k, c, _ = votes.shape
  ids = np.arange(p * k) if child_ids is None else np.asarray(child_ids)
  lambdas = capsule_ops.lambda_schedule(iterations, final_lambda)
  # Every parent of a child starts with an equal share.
  per_child = np.bincount(ids)[ids].reshape(p, k)
  r = np.ones([b, p, k, c]) / (per_child[None, :, :, None] * c)
  for t, lam in enumerate(lambdas):
    rw = r * act[..., None]
    r_sum = rw.sum(axis=2)                                   # [b,P,C]
    mu = np.einsum('bpkc,bpkcd->bpcd', rw, votes) / (r_sum[..., None] + eps)
    var = np.einsum('bpkc,bpkcd->bpcd', rw,
                    (votes - mu[:, :, None]) ** 2) / (r_sum[..., None] + eps)
    var += floor
    share = r_sum / (r_sum.mean(axis=2, keepdims=True) + eps)
    cost = ((beta_u[None, None, :, None] + 0.5 * np.log(var)) *
            share[..., None]).sum(-1)
    a_out = 1 / (1 + np.exp(-lam * (beta_a[None, None] - cost)))
    if t == iterations - 1:
      break
    log_p = -(((votes - mu[:, :, None]) ** 2) / (2 * var[:, :, None]) +
              0.5 * np.log(var[:, :, None]) + 0.5 * np.log(2 * np.pi)).sum(-1)
    log_num = np.log(a_out + eps)[:, :, None, :] + log_p      # [b,P,K,C]
    num = np.exp(log_num)
    per_slot = num.sum(-1).reshape(b, -1)                     # [b, P*K]
    den = np.zeros([b, ids.max() + 1])
    for j, child in enumerate(ids):
      den[:, child] += per_slot[:, j]
    r = num / den[:, ids].reshape(b, p, k)[..., None]
  return mu, a_out, r


@pytest.mark.parametrize('conv', [False, True])
def test_em_routing_matches_numpy_reference(conv):
  rng = np.random.default_rng(3)
  b, p, k, c, d = 2, (3 if conv else 1), 4, 3, 16
  votes = rng.normal(size=[b, p, k, c, d]).astype(np.float32)
  act = rng.uniform(0.2, 1.0, size=[b, p, k]).astype(np.float32)
  beta_u = rng.normal(size=[c]).astype(np.float32)
  beta_a = rng.normal(size=[c]).astype(np.float32)
  ids = np.array([0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7]) if conv else None
  mu, a_out, r = capsule_ops.em_routing(
      votes, act, beta_u, beta_a, 3,
      child_ids=None if ids is None else tf.constant(ids, tf.int32),
      num_children=None if ids is None else 8)
  ref = reference_em(votes.astype(np.float64), act.astype(np.float64),
                     beta_u.astype(np.float64), beta_a.astype(np.float64), 3,
                     ids)
  np.testing.assert_allclose(mu.numpy(), ref[0], atol=1e-5)
  np.testing.assert_allclose(a_out.numpy(), ref[1], atol=1e-5)
  np.testing.assert_allclose(r.numpy(), ref[2], atol=1e-5)


@pytest.mark.parametrize('conv,iterations', [(False, 3), (True, 3),
                                             (True, 1)])
def test_em_recompute_gives_the_same_values_and_gradients(conv, iterations):
  rng = np.random.default_rng(5)
  b, p, k, c, d = 2, (3 if conv else 1), 4, 3, 16
  inputs = [tf.Variable(rng.normal(size=[b, p, k, c, d]).astype(np.float32)),
            tf.Variable(rng.uniform(0.2, 1.0, size=[b, p, k]).astype(
                np.float32)),
            tf.Variable(rng.normal(size=[c]).astype(np.float32)),
            tf.Variable(rng.normal(size=[c]).astype(np.float32))]
  ids = tf.constant([0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7]) if conv else None
  results = []
  for recompute in (False, True):
    with tf.GradientTape(persistent=True) as tape:
      mu, a_out, r = capsule_ops.em_routing(
          *inputs, iterations, child_ids=ids, num_children=8 if conv else None,
          recompute=recompute)
      # Every output carries a gradient, the final assignments too.
      loss = (tf.reduce_sum(tf.sin(mu)) + tf.reduce_sum(a_out * [1., 2., 3.])
              + tf.reduce_sum(tf.square(r)))
      # Outputs left out of a loss pass no gradient, and break nothing.
      means_only = tf.reduce_sum(mu)
    results.append([mu, a_out, r] + tape.gradient(loss, inputs) +
                   # (With one iteration the means do not depend on beta_a.)
                   tape.gradient(means_only, inputs,
                                 unconnected_gradients='zero'))
  # XLA sums in another order: float32 round-off through three iterations
  # of exp and log, not a different function.
  for plain, recomputed in zip(*results):
    np.testing.assert_allclose(recomputed.numpy(), plain.numpy(), atol=1e-4,
                               rtol=1e-3)


def test_em_assignments_sum_to_one_over_all_parents_of_a_child():
  ids = tf.constant([0, 1, 2, 1, 2, 3], tf.int32)
  _, _, r = capsule_ops.em_routing(tf.random.normal([2, 2, 3, 4, 16], seed=1),
                               tf.random.uniform([2, 2, 3], seed=2),
                               tf.zeros([4]), tf.zeros([4]), 3,
                               child_ids=ids, num_children=4)
  per_slot = tf.reduce_sum(r, -1).numpy().reshape(2, -1)
  for row in per_slot:
    np.testing.assert_allclose(np.bincount(ids.numpy(), weights=row), 1.0,
                               atol=1e-5)


@pytest.mark.parametrize('case', ['single_child', 'near_zero_activations'])
def test_em_routing_finite_values_and_gradients(case):
  if case == 'single_child':
    votes = tf.Variable(tf.random.normal([2, 1, 1, 3, 16], seed=4))
    act = tf.Variable(tf.ones([2, 1, 1]))
  else:
    votes = tf.Variable(tf.random.normal([2, 1, 6, 3, 16], seed=5))
    act = tf.Variable(tf.fill([2, 1, 6], 1e-12))
  beta_u, beta_a = tf.Variable(tf.zeros([3])), tf.Variable(tf.zeros([3]))
  with tf.GradientTape() as tape:
    mu, a_out, _ = capsule_ops.em_routing(votes, act, beta_u, beta_a, 3)
    loss = tf.reduce_sum(mu) + tf.reduce_sum(a_out)
  for value in (mu, a_out):
    assert np.isfinite(value.numpy()).all()
  for grad in tape.gradient(loss, [votes, act, beta_u, beta_a]):
    assert np.isfinite(grad.numpy()).all()


def test_lambda_schedule_rises_to_final():
  lambdas = capsule_ops.lambda_schedule(3, 0.01)
  assert lambdas[-1] == pytest.approx(0.01)
  assert lambdas[0] < lambdas[1] < lambdas[2]



def test_length_matches_the_norm_and_has_finite_gradients_at_zero():
  v = tf.constant([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_array_equal(capsule_ops.length(v).numpy(), [5.0, 0.0])
  tiny = tf.constant([[3e-6, 4e-6]])
  np.testing.assert_allclose(capsule_ops.length(tiny).numpy(), [5e-6],
                             rtol=1e-6)
  with tf.GradientTape() as tape:
    tape.watch(v)
    total = tf.reduce_sum(capsule_ops.length(v))
  grad = tape.gradient(total, v).numpy()
  assert np.isfinite(grad).all()
  np.testing.assert_allclose(grad[0], [0.6, 0.8], rtol=1e-5)
  np.testing.assert_array_equal(grad[1], [0.0, 0.0])


@pytest.mark.parametrize('layout', ['caps_major', 'class_major'])
@pytest.mark.parametrize('iterations,stop', [(1, False), (3, False),
                                             (3, True)])
def test_other_layouts_route_as_dynamic_routing(iterations, stop, layout):
  # The input-capsule-major and class-major layouts compute the same v, c
  # and gradients.
  routing = getattr(capsule_ops, f'dynamic_routing_{layout}')
  u = tf.random.normal([3, 7, 4], seed=11)
  kernel = tf.random.normal([7, 5, 4, 6], stddev=0.3, seed=12)
  bias = tf.random.normal([5, 6], stddev=0.1, seed=13)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([u, kernel])
    v, c = capsule_ops.dynamic_routing(
        tf.einsum('bid,iodk->biok', u, kernel), iterations,
        stop_inner_gradients=stop, bias=bias)
    v2, c2 = routing(u, kernel, iterations, stop_inner_gradients=stop,
                     bias=bias)
    loss, loss2 = (tf.reduce_sum(tf.sin(x)) for x in (v, v2))
  assert v2.shape == (3, 5, 6) and c2.shape == (3, 7, 5)
  np.testing.assert_allclose(v2.numpy(), v.numpy(), atol=1e-6)
  np.testing.assert_allclose(c2.numpy(), c.numpy(), atol=1e-6)
  for source in (u, kernel):
    np.testing.assert_allclose(tape.gradient(loss2, source).numpy(),
                               tape.gradient(loss, source).numpy(), atol=1e-5)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
