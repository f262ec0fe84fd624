"""Routing algorithms between capsule layers, as pure TF functions.

`dynamic_routing` is routing-by-agreement from "Dynamic Routing Between
Capsules" (Sabour, Frosst, Hinton 2017), Procedure 1.
"""

import tensorflow as tf

# layers imports this module for ClassCapsules; importing the module (not the
# name) keeps the cycle safe whichever side is imported first.
from pipeline.models import layers

# One compiled function per (iterations, stop_inner_gradients): the input
# signature leaves every dimension free, so a new batch size (or a new capsule
# count) reuses the same trace instead of retracing.
_ROUTING_FNS = {}


def _routing_body(u_hat, bias, num_iterations, stop_inner_gradients):
  """Runs Procedure 1 with the iterations unrolled in the graph."""
  batch = tf.shape(u_hat)[0]
  in_caps = tf.shape(u_hat)[1]
  out_caps = tf.shape(u_hat)[2]
  # Routing logits start at zero for every example (b_ij <- 0).
  logits = tf.zeros(tf.stack([batch, in_caps, out_caps]), dtype=u_hat.dtype)
  # Inner iterations may route on a gradient-stopped copy; the last one always
  # uses u_hat itself, so the loss reaches the transforms either way.
  u_inner = tf.stop_gradient(u_hat) if stop_inner_gradients else u_hat
  for i in range(num_iterations):
    last = i == num_iterations - 1
    u = u_hat if last else u_inner
    # Coupling coefficients: softmax over the parent (class) capsules, so each
    # child distributes its output among parents (c_ij sums to 1 over j).
    coupling = tf.nn.softmax(logits, axis=2)
    s = tf.einsum('bio,biod->bod', coupling, u) + bias
    v = layers.squash(s, axis=-1)
    if not last:
      logits = logits + tf.einsum('biod,bod->bio', u, v)
  return v, coupling


def dynamic_routing(u_hat, num_iterations=3, stop_inner_gradients=False,
                    bias=None):
  """Routing-by-agreement between two capsule layers.

  Args:
    u_hat: prediction vectors `[batch, in_caps, out_caps, out_dim]`, float32.
    num_iterations: routing iterations r >= 1 (the paper uses 3).
    stop_inner_gradients: if True, gradients do not flow through the agreement
      updates of the inner iterations; the default lets them flow through all.
    bias: optional parent bias `[out_caps, out_dim]` added to the weighted sum
      s_j before the squash (zeros when None).

  Returns:
    `(v, c)`: the parent capsules `[batch, out_caps, out_dim]` and the coupling
    coefficients of the last iteration `[batch, in_caps, out_caps]`.

  Raises:
    ValueError: if `num_iterations` < 1 or `u_hat` is not of rank 4.
  """
  if int(num_iterations) < 1:
    raise ValueError(
        f'num_iterations must be >= 1, got {num_iterations}.')
  u_hat = tf.convert_to_tensor(u_hat)
  if u_hat.shape.rank is not None and u_hat.shape.rank != 4:
    raise ValueError(
        'u_hat must be [batch, in_caps, out_caps, out_dim] (rank 4), got '
        f'shape {u_hat.shape}.')
  if bias is None:
    bias = tf.zeros(tf.shape(u_hat)[2:], u_hat.dtype)
  key = (int(num_iterations), bool(stop_inner_gradients), u_hat.dtype)
  fn = _ROUTING_FNS.get(key)
  if fn is None:
    fn = tf.function(
        lambda u, b: _routing_body(u, b, key[0], key[1]),
        input_signature=[tf.TensorSpec([None, None, None, None], u_hat.dtype),
                         tf.TensorSpec([None, None], u_hat.dtype)])
    _ROUTING_FNS[key] = fn
  v, c = fn(u_hat, tf.cast(bias, u_hat.dtype))
  v = tf.ensure_shape(v, [u_hat.shape[0], u_hat.shape[2], u_hat.shape[3]])
  c = tf.ensure_shape(c, u_hat.shape[:3])
  return v, c


def routing_function(num_iterations, stop_inner_gradients=False,
                     dtype=tf.float32):
  """Returns the compiled `tf.function` that `dynamic_routing` calls.

  Exposed so callers (and tests) can inspect its tracing count.
  """
  dynamic_routing(tf.zeros([1, 1, 1, 1], dtype), num_iterations,
                  stop_inner_gradients)
  return _ROUTING_FNS[(int(num_iterations), bool(stop_inner_gradients),
                       tf.as_dtype(dtype))]
