"""The linear probe's jax solver: L-BFGS fits of many L2-regularised logistic regressions at once (every outer
fold's every inner-fold problem, in one batch), warm-started along the path of C values.

Multinomial (softmax over the classes; two classes as scikit-learn's binary model, one weight vector) or, for
multi-label, one independent binary regression per column. Each lane stops on its own (gradient below the
tolerance, or no progress); the loop ends when every lane has. Split from `fpclass.probe.linear_probe`, which
prepares the problems and chooses C; docs/modules.md holds the design notes.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

HISTORY = 10          # L-BFGS curvature pairs kept
ARMIJO = 1e-4         # sufficient decrease for a step
BACKTRACK = 0.5 ** np.arange(1, 21)   # step sizes tried, in one batch, when the unit step fails somewhere


def fit_path(z, onehot, masks, variances, c_values, max_iter: int, tol: float, sigmoid: bool = False):
  """L-BFGS fits of every problem for every C, warm-started along `c_values` (ascending).

  z (G, n, r): each outer fold's training rows in reduced coordinates (rows beyond a fold's count are
  padding: zero in every mask); onehot (G, n, k); masks (G, M, n): the rows each of a fold's M problems fits
  on; variances (G, r). Returns (weights (C, G, M, r, f), biases (C, G, M, f), iterations (C, G, M)), with
  f = k weight columns, or 1 for two classes (`free_columns`). `sigmoid`: `onehot` is a multi-label 0/1
  matrix and each of its k columns an independent binary logistic regression (f = k).
  """
  return _fit_path(jnp.asarray(z, jnp.float32), jnp.asarray(onehot, jnp.float32), jnp.asarray(masks, jnp.float32),
                   jnp.asarray(variances, jnp.float32), jnp.asarray(c_values, jnp.float32),
                   jnp.int32(max_iter), jnp.float32(tol), bool(sigmoid))


@functools.partial(jax.jit, static_argnums=7)
def _fit_path(z, onehot, masks, variances, c_values, max_iter, tol, sigmoid):
  g, _, r = z.shape
  k, m = onehot.shape[-1], masks.shape[1]
  free = k if sigmoid else free_columns(k)
  count = jnp.maximum(masks.sum(-1), 1.0)                       # (G, M)
  y = jnp.swapaxes(onehot, 1, 2)[:, None]                       # (G, 1, k, n): rows last, so they vectorise
  # The data term's curvature is at most variance / 2 along each axis (softmax's Hessian is below I / 2), and
  # variance / 4 for the binary model (the logistic function's slope is at most 1/4).
  curvature = 0.25 if free == 1 or sigmoid else 0.5

  def solve(carry, c):
    weights, biases = carry
    reg = 1.0 / (c * count)                                     # the objective is divided by C·count
    scale = jax.lax.rsqrt(variances[:, None, :] * curvature + reg[..., None])     # (G, M, r)
    bias_scale = 1.0 / np.sqrt(curvature)

    def unpack(u):
      return u[..., :r * free].reshape(g, m, r, free) * scale[..., None], u[..., r * free:] * bias_scale

    def value_grad(u):
      w, b = unpack(u)
      if sigmoid:   # the binary log loss of every column, softplus(l) - y·l, summed over them
        logits = jnp.einsum('gnr,gmrf->gmfn', z, w) + b[..., None]                # (G, M, k, n)
        loss = jnp.sum(masks * jnp.sum(jax.nn.softplus(logits) - logits * y, 2), -1) / count
        residual = (jax.nn.sigmoid(logits) - y) * (masks / count[..., None])[:, :, None]
      else:
        logits = with_fixed_logit(jnp.einsum('gnr,gmrf->gmfn', z, w) + b[..., None], k, jnp, axis=2)
        top = jax.nn.logsumexp(logits, axis=2)                                   # (G, M, n)
        loss = jnp.sum(masks * (top - jnp.sum(logits * y, 2)), -1) / count
        residual = (jnp.exp(logits - top[:, :, None]) - y)[:, :, k - free:] * (masks / count[..., None])[:, :, None]
      value = loss + 0.5 * reg * jnp.sum(w * w, (-1, -2))
      grad_w = jnp.einsum('gnr,gmfn->gmrf', z, residual) + reg[..., None, None] * w
      grad = jnp.concatenate([(grad_w * scale[..., None]).reshape(g, m, r * free),
                              jnp.sum(residual, -1) * bias_scale], -1)
      return value, grad

    u0 = jnp.concatenate([(weights / scale[..., None]).reshape(g, m, r * free), biases / bias_scale], -1)
    value0, grad0 = value_grad(u0)
    zeros = jnp.zeros((HISTORY, *u0.shape), u0.dtype)
    state = dict(u=u0, value=value0, grad=grad0, s=zeros, y=zeros, rho=jnp.zeros((HISTORY, g, m), u0.dtype),
                 gamma=jnp.ones((g, m), u0.dtype), done=_small(grad0, tol), iters=jnp.zeros((g, m), jnp.int32),
                 step=jnp.int32(0))

    def direction(st):
      """-H·grad by the two-loop recursion; slot (step - 1 - j) % HISTORY is the j-th newest pair (a lane that
      skipped a pair holds zeros there, which the recursion passes over). Loops, not unrolled: a tenth of the
      compile time."""
      def newest_first(j, carry):
        q, alphas = carry
        slot = (st['step'] - 1 - j) % HISTORY
        alpha = st['rho'][slot] * jnp.sum(st['s'][slot] * q, -1)
        return q - alpha[..., None] * st['y'][slot], alphas.at[slot].set(alpha)

      def oldest_first(j, q):
        slot = (st['step'] - HISTORY + j) % HISTORY
        beta = st['rho'][slot] * jnp.sum(st['y'][slot] * q, -1)
        return q + (alphas[slot] - beta)[..., None] * st['s'][slot]

      q, alphas = jax.lax.fori_loop(0, HISTORY, newest_first, (st['grad'], jnp.zeros_like(st['rho'])))
      return -jax.lax.fori_loop(0, HISTORY, oldest_first, st['gamma'][..., None] * q)

    def body(st):
      d = direction(st)
      slope = jnp.sum(d * st['grad'], -1)
      uphill = slope >= 0                       # not a descent direction (lost curvature): steepest descent
      d = jnp.where(uphill[..., None], -st['grad'], d)
      slope = jnp.where(uphill, -jnp.sum(st['grad'] ** 2, -1), slope)
      value1, grad1 = value_grad(st['u'] + d)
      accepted = st['done'] | (value1 <= st['value'] + ARMIJO * slope)

      def unit_step(_):
        return jnp.ones_like(slope), st['u'] + d, value1, grad1

      def backtrack(_):
        steps = jnp.asarray(BACKTRACK, d.dtype)
        values = jax.lax.map(lambda a: value_grad(st['u'] + a * d)[0], steps)          # (A, G, M)
        good = values <= st['value'][None] + ARMIJO * steps[:, None, None] * slope[None]
        size = jnp.where(jnp.any(good, 0), steps[jnp.argmax(good, 0)], 0.0)
        size = jnp.where(accepted, 1.0, size)
        u = st['u'] + size[..., None] * d
        return (size, u, *value_grad(u))

      size, u, value, grad = jax.lax.cond(jnp.all(accepted), unit_step, backtrack, None)
      moved = ~st['done'] & (size > 0)
      u = jnp.where(moved[..., None], u, st['u'])
      value = jnp.where(moved, value, st['value'])
      grad = jnp.where(moved[..., None], grad, st['grad'])
      s, y_ = u - st['u'], grad - st['grad']
      curvature = jnp.sum(s * y_, -1)
      keep = moved & (curvature > 1e-10 * jnp.sqrt(jnp.sum(s * s, -1) * jnp.sum(y_ * y_, -1)))
      slot = st['step'] % HISTORY
      stalled = ~moved | (st['value'] - value <= 1e-7 * jnp.maximum(1.0, jnp.abs(value)))
      return dict(u=u, value=value, grad=grad,
                  s=st['s'].at[slot].set(jnp.where(keep[..., None], s, 0.0)),
                  y=st['y'].at[slot].set(jnp.where(keep[..., None], y_, 0.0)),
                  rho=st['rho'].at[slot].set(jnp.where(keep, 1.0 / jnp.where(keep, curvature, 1.0), 0.0)),
                  gamma=jnp.where(keep, curvature / jnp.maximum(jnp.sum(y_ * y_, -1), 1e-30), st['gamma']),
                  done=st['done'] | _small(grad, tol) | (stalled & ~st['done'] & (st['iters'] > 0)),
                  iters=st['iters'] + ~st['done'], step=st['step'] + 1)

    state = jax.lax.while_loop(lambda st: (st['step'] < max_iter) & ~jnp.all(st['done']), body, state)
    w, b = unpack(state['u'])
    return (w, b), (w, b, state['iters'])

  init = (jnp.zeros((g, m, r, free), z.dtype), jnp.zeros((g, m, free), z.dtype))
  _, (weights, biases, iters) = jax.lax.scan(solve, init, c_values)
  return weights, biases, iters


def free_columns(num_classes: int) -> int:
  """Weight columns: one per class (softmax), except for two classes, where the model is scikit-learn's binary
  logistic regression: one weight vector, class 0's logit fixed at 0 (a softmax over both would halve the
  effective penalty, so the same C would mean another model)."""
  return 1 if num_classes == 2 else num_classes


def with_fixed_logit(logits, num_classes: int, xp, axis: int):
  """Logits of every class from the free columns on `axis`: class 0's zero prepended for a binary model."""
  if free_columns(num_classes) == num_classes:
    return logits
  return xp.concatenate([xp.zeros_like(logits), logits], axis=axis)


def _small(grad, tol):
  return jnp.max(jnp.abs(grad), -1) <= tol
