"""Capsule operations as pure TF functions: squash, dynamic routing, EM routing.

`squash` and `dynamic_routing` are from "Dynamic Routing Between Capsules"
(Sabour, Frosst, Hinton 2017; Eq. 1 and Procedure 1); `em_routing` from
"Matrix Capsules with EM Routing" (Hinton, Sabour, Frosst 2018). This module
imports nothing from the package, so every layer and model can use it.
"""

import tensorflow as tf

# Keeps the norm's gradient finite at s = 0 (d|s|/ds is undefined there).
_SQUASH_EPSILON = 1e-7
# Routing is unrolled into the compiled step, so its compile time grows with
# the iterations: model configs refuse more than this.
MAX_ROUTING_ITERATIONS = 10
ROUTING_ITERATIONS_WHY = ('each iteration is unrolled into the compiled '
                          'step, so its compile time grows with them (the '
                          'papers use 2 or 3).')


def length(v, axis=-1):
  """Capsule lengths |v|, exact, with a finite gradient everywhere.

  The plain norm's gradient is NaN at an all-zero capsule (a blank image
  gives one), which would stop training. Here an all-zero capsule has
  length 0 and gradient 0; every other capsule its exact norm and gradient
  (no epsilon, which would swamp the tiny lengths of freshly initialised
  capsules and with them the first gradients).

  Args:
    v: capsules, any shape; `axis` holds the capsule dimension.
    axis: the capsule dimension.

  Returns:
    `v`'s shape without `axis`, in `v`'s dtype.
  """
  v = tf.convert_to_tensor(v)
  squared = tf.reduce_sum(tf.square(v), axis=axis)
  nonzero = squared > 0
  # Both branches of a where are differentiated: the dead one must be safe.
  safe = tf.where(nonzero, squared, tf.ones_like(squared))
  return tf.where(nonzero, tf.sqrt(safe), tf.zeros_like(squared))


def squash(s, axis=-1):
  """The CapsNet non-linearity v = |s|^2 / (1 + |s|^2) * s / |s|.

  Short vectors shrink to almost zero length, long ones to just below 1; the
  direction is kept. The norm uses sqrt(|s|^2 + eps), so an all-zero capsule
  gives a zero output and a finite (zero) gradient instead of NaN.

  Args:
    s: capsule inputs, any shape; `axis` holds the capsule dimension.
    axis: the capsule dimension.

  Returns:
    A tensor of the shape and dtype of `s`.
  """
  s = tf.convert_to_tensor(s)
  squared_norm = tf.reduce_sum(tf.square(s), axis=axis, keepdims=True)
  scale = squared_norm / ((1.0 + squared_norm) *
                          tf.sqrt(squared_norm + _SQUASH_EPSILON))
  return s * scale



# One compiled function per (iterations, stop_inner_gradients): the input
# signature leaves every dimension free, so a new batch size (or a new capsule
# count) reuses the same trace instead of retracing.
_ROUTING_FNS = {}


def _routing_body(u_hat, bias, num_iterations, stop_inner_gradients,
                  layout='batch_major'):
  """Runs Procedure 1 with the iterations unrolled in the graph.

  `u_hat` is `[batch, in_caps, out_caps, dim]` (`layout='batch_major'`),
  `[in_caps, batch, out_caps, dim]` (`'caps_major'`) or `[batch, out_caps,
  in_caps, dim]` (`'class_major'`: the weighted sums and agreements are
  batched matmuls over (batch, class) with no transpose of u_hat); the
  coupling comes back `[batch, in_caps, out_caps]` for `class_major`, else
  in the order of u_hat's first two axes. `u_hat` may be 16-bit: then the
  weighted sums and agreements read it in 16 bits and come back as float32
  (the dot products accumulate in float32), and the logits, softmax, squash
  and outputs stay float32.
  """
  f32 = tf.float32
  low = u_hat.dtype
  class_major = layout == 'class_major'
  caps_axis = {'batch_major': 1, 'caps_major': 0, 'class_major': 2}[layout]
  out_axis = 1 if class_major else 2
  # Einsum letters of u_hat's first two axes: b(atch) and i(nput capsule).
  bi = 'bi' if layout == 'batch_major' else 'ib'
  shape = tf.shape(u_hat)
  out_caps = shape[out_axis]
  # The logits' shape: u_hat's without its last axis.
  lead = shape[:3]
  # Inner iterations may route on a gradient-stopped copy; the last one always
  # uses u_hat itself, so the loss reaches the transforms either way.
  u_inner = tf.stop_gradient(u_hat) if stop_inner_gradients else u_hat
  logits = None
  for i in range(num_iterations):
    last = i == num_iterations - 1
    u = u_hat if last else u_inner
    if logits is None:
      # Logits start at zero (b_ij <- 0), so the first coupling is uniform:
      # c_ij = 1 / out_caps. Written out, not as a softmax of zeros, which
      # XLA would constant-fold into a [batch, in, out] constant.
      share = 1.0 / tf.cast(out_caps, f32)
      coupling = tf.fill(lead, share)
      s = tf.reduce_sum(tf.cast(u, f32), axis=caps_axis) * share + bias
    else:
      # Coupling coefficients: softmax over the parent (class) capsules, so
      # each child distributes its output among parents (sum over j is 1).
      coupling = tf.nn.softmax(logits, axis=out_axis)
      if class_major:
        # [b, o, 1, in] x [b, o, in, d] -> [b, o, d].
        s = tf.squeeze(tf.matmul(tf.cast(coupling, low)[:, :, None], u), 2)
      else:
        s = tf.einsum(f'{bi}o,{bi}od->bod', tf.cast(coupling, low), u)
      s = tf.cast(s, f32) + bias
    v = squash(s, axis=-1)
    if not last:
      if class_major:
        # [b, o, in, d] x [b, o, d, 1] -> [b, o, in].
        agreement = tf.squeeze(tf.matmul(u, tf.cast(v, low)[..., None]), -1)
      else:
        agreement = tf.einsum(f'{bi}od,bod->{bi}o', u, tf.cast(v, low))
      agreement = tf.cast(agreement, f32)
      logits = agreement if logits is None else logits + agreement
  if class_major:
    coupling = tf.transpose(coupling, [0, 2, 1])
  return v, coupling


def dynamic_routing(u_hat, num_iterations=3, stop_inner_gradients=False,
                    bias=None):
  """Routing-by-agreement between two capsule layers.

  Args:
    u_hat: prediction vectors `[batch, in_caps, out_caps, out_dim]`: float32,
      or bfloat16/float16 to halve the memory traffic of the routing passes
      (sums still accumulate in float32; outputs are float32).
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
    bias = tf.zeros(tf.shape(u_hat)[2:], tf.float32)
  key = (int(num_iterations), bool(stop_inner_gradients), u_hat.dtype)
  fn = _ROUTING_FNS.get(key)
  if fn is None:
    fn = tf.function(
        lambda u, b: _routing_body(u, b, key[0], key[1]),
        input_signature=[tf.TensorSpec([None, None, None, None], u_hat.dtype),
                         tf.TensorSpec([None, None], tf.float32)])
    _ROUTING_FNS[key] = fn
  v, c = fn(u_hat, tf.cast(bias, tf.float32))
  v = tf.ensure_shape(v, [u_hat.shape[0], u_hat.shape[2], u_hat.shape[3]])
  c = tf.ensure_shape(c, u_hat.shape[:3])
  return v, c


def _caps_major_predictions(u, kernel):
  """u_hat = W_ij u_i as `[in_caps, batch, out_caps, out_dim]`: one batched
  matmul over the input capsules of `u` `[batch, in_caps, in_dim]` and
  `kernel` `[in_caps, out_caps, in_dim, out_dim]`."""
  in_caps, out_caps, in_dim, out_dim = kernel.shape
  weights = tf.reshape(tf.transpose(kernel, [0, 2, 1, 3]),
                       [in_caps, in_dim, out_caps * out_dim])
  u_hat = tf.matmul(tf.transpose(u, [1, 0, 2]), weights)
  return tf.reshape(u_hat, [in_caps, tf.shape(u)[0], out_caps, out_dim])


def dynamic_routing_caps_major(u, kernel, num_iterations=3,
                               stop_inner_gradients=False, bias=None):
  """u_hat = W_ij u_i and `dynamic_routing` over it, with u_hat laid out
  input-capsule-major.

  The same function as `dynamic_routing(einsum('bid,iodk->biok', u,
  kernel), ...)`, computed on u_hat `[in_caps, batch, out_caps, out_dim]`:
  its transforms are one batched matmul over the input capsules, and the
  routing passes reduce over the leading axis. Which layout is faster
  depends on the machine (`pipeline.perf.autotune` measures it).

  Args:
    u: child capsules `[batch, in_caps, in_dim]` (float32 or 16-bit).
    kernel: the transforms `[in_caps, out_caps, in_dim, out_dim]`, in `u`'s
      dtype.
    num_iterations: routing iterations r >= 1.
    stop_inner_gradients: as in `dynamic_routing`.
    bias: optional parent bias `[out_caps, out_dim]`, float32.

  Returns:
    `(v, c)` as `dynamic_routing`: `[batch, out_caps, out_dim]` and
    `[batch, in_caps, out_caps]`, float32.
  """
  if int(num_iterations) < 1:
    raise ValueError(f'num_iterations must be >= 1, got {num_iterations}.')
  u = tf.convert_to_tensor(u)
  in_caps, out_caps, _, out_dim = kernel.shape
  u_hat = _caps_major_predictions(u, kernel)
  if bias is None:
    bias = tf.zeros([out_caps, out_dim], tf.float32)
  v, coupling = _routing_body(u_hat, bias, int(num_iterations),
                              stop_inner_gradients, layout='caps_major')
  v = tf.ensure_shape(v, [u.shape[0], out_caps, out_dim])
  coupling = tf.ensure_shape(tf.transpose(coupling, [1, 0, 2]),
                             [u.shape[0], in_caps, out_caps])
  return v, coupling


def dynamic_routing_class_major(u, kernel, num_iterations=3,
                                stop_inner_gradients=False, bias=None):
  """u_hat = W_ij u_i and `dynamic_routing` over it, with u_hat laid out
  class-major.

  The same function as `dynamic_routing(einsum('bid,iodk->biok', u,
  kernel), ...)`, computed on u_hat `[batch, out_caps, in_caps, out_dim]`:
  its transforms are one batched matmul over the input capsules (then one
  transpose), and every weighted sum and agreement of the routing is a
  batched matmul over (batch, class), with no transpose of u_hat. Which
  layout is faster depends on the machine and the pass
  (`pipeline.perf.autotune` measures it).

  Args and returns: as `dynamic_routing_caps_major`.
  """
  if int(num_iterations) < 1:
    raise ValueError(f'num_iterations must be >= 1, got {num_iterations}.')
  u = tf.convert_to_tensor(u)
  in_caps, out_caps, _, out_dim = kernel.shape
  u_hat = tf.transpose(_caps_major_predictions(u, kernel), [1, 2, 0, 3])
  if bias is None:
    bias = tf.zeros([out_caps, out_dim], tf.float32)
  v, coupling = _routing_body(u_hat, bias, int(num_iterations),
                              stop_inner_gradients, layout='class_major')
  v = tf.ensure_shape(v, [u.shape[0], out_caps, out_dim])
  coupling = tf.ensure_shape(coupling, [u.shape[0], in_caps, out_caps])
  return v, coupling


def routing_function(num_iterations, stop_inner_gradients=False,
                     dtype=tf.float32):
  """Returns the compiled `tf.function` that `dynamic_routing` calls.

  Exposed so callers (and tests) can inspect its tracing count.
  """
  dynamic_routing(tf.zeros([1, 1, 1, 1], dtype), num_iterations,
                  stop_inner_gradients)
  return _ROUTING_FNS[(int(num_iterations), bool(stop_inner_gradients),
                       tf.as_dtype(dtype))]


def lambda_schedule(num_iterations, final_lambda=0.01):
  """Inverse temperatures of EM routing's iterations, rising to final_lambda.

  lambda_t = final_lambda * (1 - 0.95^(t+1)), normalised so the last one is
  final_lambda: early iterations keep parent activations soft, the last is
  the most decisive.
  """
  raw = [1.0 - 0.95 ** (t + 1) for t in range(num_iterations)]
  return [final_lambda * r / raw[-1] for r in raw]


def em_routing(votes, activations, beta_u, beta_a, num_iterations=3,
               child_ids=None, num_children=None, final_lambda=0.01,
               variance_floor=1e-4, epsilon=1e-7, recompute=False):
  """EM routing of "Matrix Capsules with EM Routing" (Hinton et al. 2018).

  Parents are laid out as P positions x C types; each position sees a patch
  of K children (for a fully connected layer, P = 1 and K = all children).
  In a convolutional layer a child lies in the patches of several positions:
  `child_ids` names the child of every (position, patch slot), and the
  E-step normalises each child's assignments over every parent whose
  receptive field holds it, not per patch.

  M-step: R scaled by the child activations (not renormalised afterwards),
  per-dimension means and variances (with a floor), cost_h = (beta_u +
  log sigma_h) * share_j, a = sigmoid(lambda (beta_a - sum_h cost_h)), where
  share_j is parent j's sum of R relative to the mean over the parents at its
  position (the paper's raw sum of R saturates the sigmoid on real layer
  sizes: hundreds of children per parent).
  E-step in log space: log a_j + log N(V_ij; mu_j, sigma_j), normalised with
  logsumexp; no raw Gaussian density is ever formed.

  Args:
    votes: `[batch, P, K, C, D]` votes of children for parents (D = 16).
    activations: `[batch, P, K]` the children's activations per patch slot.
    beta_u: `[C]` learned cost offset per parent type.
    beta_a: `[C]` learned activation offset per parent type.
    num_iterations: EM iterations (paper: 3).
    child_ids: int `[P * K]` child index of every (position, slot), or None
      when every slot is its own child.
    num_children: number of distinct children (with `child_ids`).
    final_lambda: inverse temperature of the last iteration.
    variance_floor: added to every variance.
    epsilon: keeps sums of assignments away from zero.
    recompute: for training: keep only each iteration's assignments for the
      backward pass and recompute the iteration's `[batch, P, K, C, D]`
      temporaries there (`tf.recompute_grad`), each iteration compiled with
      XLA. Less memory for a slightly slower step (docs/models.md has the
      figures and their machine). The same values and gradients.

  Returns:
    `(poses [batch, P, C, D], activations [batch, P, C], assignments
    [batch, P, K, C])`; assignments sum to 1 over all parents of a child.

  One function of about 70 lines, on purpose: the M- and E-steps are nested
  so they close over the layer's shapes and options, and `recompute` wraps
  them (as `tf.recompute_grad` of an XLA function) exactly as they are.
  """
  votes = tf.convert_to_tensor(votes, tf.float32)
  a_in = tf.convert_to_tensor(activations, tf.float32)[..., None, None]
  shape = tf.shape(votes)
  batch, positions, slots, parents = shape[0], shape[1], shape[2], shape[3]
  beta_u = tf.reshape(tf.cast(beta_u, tf.float32), [1, 1, 1, -1, 1])
  beta_a = tf.reshape(tf.cast(beta_a, tf.float32), [1, 1, -1])
  log_2pi = tf.math.log(2.0 * 3.141592653589793)
  lambdas = lambda_schedule(num_iterations, final_lambda)

  if child_ids is None:
    # Each slot is its own child: start uniform over its C parents.
    assignments = tf.ones_like(votes[..., 0]) / tf.cast(parents, tf.float32)
  else:
    # Uniform over every parent of the child: 1 / (C x patches holding it).
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(child_ids, tf.float32), child_ids, num_children)
    per_slot = tf.reshape(tf.gather(counts, child_ids), [positions, slots])
    assignments = tf.ones_like(votes[..., 0]) / (
        per_slot[None, :, :, None] * tf.cast(parents, tf.float32))

  def m_step(assignments, votes, a_in, beta_u, beta_a, inverse_temperature):
    r = assignments[..., None] * a_in                       # [b,P,K,C,1]
    r_sum = tf.reduce_sum(r, axis=2, keepdims=True)         # [b,P,1,C,1]
    mean = tf.reduce_sum(r * votes, axis=2, keepdims=True) / (r_sum + epsilon)
    variance = tf.reduce_sum(r * tf.square(votes - mean), axis=2,
                             keepdims=True) / (r_sum + epsilon)
    variance = variance + variance_floor
    log_sigma = 0.5 * tf.math.log(variance)
    # The data a parent explains, relative to the mean parent at its
    # position: with raw sums (hundreds of children) the cost saturates the
    # sigmoid and every activation sticks at 0 or 1.
    share = r_sum / (tf.reduce_mean(r_sum, axis=3, keepdims=True) + epsilon)
    cost = tf.reduce_sum((beta_u + log_sigma) * share, axis=-1)  # [b,P,1,C]
    a_out = tf.sigmoid(inverse_temperature * (beta_a - cost[:, :, 0]))
    return mean, variance, log_sigma, a_out

  def e_step(votes, mean, variance, log_sigma, a_out):
    """New assignments, in log space."""
    log_p = -tf.reduce_sum(
        tf.square(votes - mean) / (2.0 * variance) + log_sigma + 0.5 * log_2pi,
        axis=-1)                                            # [b,P,K,C]
    log_num = tf.math.log(a_out + epsilon)[:, :, None, :] + log_p
    if child_ids is None:
      log_den = tf.reduce_logsumexp(log_num, axis=-1, keepdims=True)
    else:
      local = tf.reduce_logsumexp(log_num, axis=-1)         # [b,P,K]
      flat = tf.transpose(tf.reshape(local, [batch, -1]))   # [P*K, b]
      peak = tf.stop_gradient(
          tf.math.unsorted_segment_max(flat, child_ids, num_children))
      total = tf.math.unsorted_segment_sum(
          tf.exp(flat - tf.gather(peak, child_ids)), child_ids, num_children)
      per_child = tf.math.log(total) + peak                 # [children, b]
      log_den = tf.reshape(tf.transpose(tf.gather(per_child, child_ids)),
                           [batch, positions, slots, 1])
    return tf.exp(log_num - log_den)

  def iteration(assignments, votes, a_in, beta_u, beta_a, inverse_temperature):
    """One M-step and the E-step after it: the next assignments."""
    stats = m_step(assignments, votes, a_in, beta_u, beta_a,
                   inverse_temperature)
    return e_step(votes, *stats)

  def last_m_step(assignments, votes, a_in, beta_u, beta_a,
                  inverse_temperature):
    mean, _, _, a_out = m_step(assignments, votes, a_in, beta_u, beta_a,
                               inverse_temperature)
    return mean, a_out

  if recompute:
    # Keep only each iteration's inputs for the backward pass and recompute
    # its [b,P,K,C,D] temporaries there, one iteration at a time; XLA fuses
    # the M- and E-steps' products into their sums, so they are never
    # materialised and the recomputation adds little time (+5% a step at
    # the paper's size).
    iteration = tf.recompute_grad(tf.function(iteration, jit_compile=True))
    last_m_step = tf.recompute_grad(
        tf.function(last_m_step, jit_compile=True))
  for inverse_temperature in lambdas[:-1]:
    assignments = iteration(assignments, votes, a_in, beta_u, beta_a,
                            tf.constant(inverse_temperature, tf.float32))
  mean, a_out = last_m_step(assignments, votes, a_in, beta_u, beta_a,
                            tf.constant(lambdas[-1], tf.float32))
  return mean[:, :, 0], a_out, assignments
