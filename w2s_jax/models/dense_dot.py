"""The projections' matmul, with a backward pass XLA:CPU runs faster.

Every family's projections (`layers.dense`) compute y = x @ W for x
[..., in] and W [in, out]. Differentiated by JAX, the weight gradient
x^T dy contracts the token dimensions, the major ones of both operands,
and XLA:CPU first copies dy to [out, tokens]; in the MiniLM-L6 step of
8 x 64 tokens those dW dots ran at 60 GFLOP/s against the forward's 85.
Here a custom_vjp writes the backward pass out, with dW = (dy^T x)^T
over the tokens flattened into one dimension on CPU: the dW dots run at
70 GFLOP/s and the copies take a third less. The packed MiniLM train
step takes 3-11% less time (8 x 64 tokens: L6 -10.6%, L3 -8.4%, most of
it already with the custom_vjp in autodiff's form; 7 x 64: -3.4%, -3.8%,
most of it from the flattened form); gpt2-small's (8 x 128) is unchanged
(bench/dense_dot_step.py, bench/RESULTS.md 4j). Other platforms compile
autodiff's form (`lax.platform_dependent`).

Under config.matmul_precision="bfloat16" float32 operands are rounded
to bfloat16 and summed in float32 on every platform (`rounds_to_bfloat16`).
On CPU, bfloat16 operands (those, or a bfloat16 compute dtype's) go to
the dots with a float32 result, rounded to the compute dtype after, and
dW contracts two leading dimensions: the forms XLA:CPU hands to
YNNPACK's bfloat16 kernels (bench/RESULTS.md 4m).

The output is named `sharding.DENSE_OUTPUT` so that the "dots" remat
policy still saves it: a custom_vjp hides the dot inside it from
dots_with_no_batch_dims_saveable, which would otherwise recompute every
projection in the backward pass.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from w2s_jax.core import sharding


def _rows(a: jax.Array) -> jax.Array:
    """[..., features] -> [tokens, features]. Contracted over (rows,
    length) as two dimensions, (dy^T x)^T was no faster than autodiff's
    form (bench/RESULTS.md 4j); over the tokens as one, it is."""
    return a.reshape(-1, a.shape[-1])


def rounds_to_bfloat16(a: jax.Array) -> bool:
    """Whether a float32 operand is rounded to bfloat16 for the dots:
    under JAX's default matmul precision "bfloat16" (config.
    matmul_precision), on every platform. XLA would read that precision
    as TF32 on a GPU and ignore it on CPU; here the operands are
    rounded, the products summed in float32."""
    return (a.dtype == jnp.float32
            and jax.config.jax_default_matmul_precision == "bfloat16")


def _dot_cpu(a: jax.Array, b: jax.Array, dims) -> jax.Array:
    # bfloat16 operands with a float32 result go to YNNPACK (AMX or
    # AVX512-BF16 where the CPU has them), 4-6x float32's rate on an AMX
    # Xeon; asked for a bfloat16 result, XLA:CPU computes them at
    # float32's rate or below (bench/RESULTS.md 4m). Summed in float32
    # and rounded once either way.
    if a.dtype == jnp.bfloat16:
        return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32
                               ).astype(a.dtype)
    return lax.dot_general(a, b, dims)


def _dot(a: jax.Array, b: jax.Array, dims) -> jax.Array:
    if rounds_to_bfloat16(a):
        return lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                               dims, preferred_element_type=jnp.float32)
    return lax.platform_dependent(
        a, b, cpu=functools.partial(_dot_cpu, dims=dims),
        default=functools.partial(lax.dot_general, dimension_numbers=dims))


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return _dot(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_fwd(x, w):
    return _matmul(x, w), (x, w)


def _weight_grad_cpu(x, dy):
    if x.dtype == jnp.bfloat16:
        # YNNPACK's fast form contracts two or more leading dimensions;
        # over one (tokens [T, in]), XLA:CPU runs it at float32's rate.
        if x.ndim < 3:  # [in] or [tokens, in] -> [1, tokens, in]
            x, dy = (a.reshape(1, -1, a.shape[-1]) for a in (x, dy))
        return _weight_grad(x, dy)
    # [out, in], transposed back: XLA:CPU folds the transpose into the
    # dot's output layout.
    return (_rows(dy).T @ _rows(x)).T


def _weight_grad(x, dy):
    # Autodiff's own form: contract every leading dimension.
    lead = tuple(range(x.ndim - 1))
    return lax.dot_general(x, dy, ((lead, lead), ((), ())),
                           preferred_element_type=jnp.float32)


def _matmul_bwd(residuals, dy):
    x, w = residuals
    dy = dy.astype(x.dtype)
    dx = _dot(dy, w, (((dy.ndim - 1,), (1,)), ((), ())))
    # Both forms sum in float32 and return float32 (cast to w's dtype).
    operands = (x, dy)
    if rounds_to_bfloat16(x):
        operands = tuple(a.astype(jnp.bfloat16) for a in operands)
    dw = lax.platform_dependent(*operands, cpu=_weight_grad_cpu,
                                default=_weight_grad)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None,
                preferred_element_type=None):
    """lax.dot_general's signature, for nn.Dense(dot_general=...): a
    projection of the last dimension by a 2-D kernel goes through _matmul;
    anything else (a precision or output type asked for) through lax."""
    (lhs_contract, rhs_contract), batch = dimension_numbers
    if (rhs.ndim == 2 and tuple(lhs_contract) == (lhs.ndim - 1,)
            and tuple(rhs_contract) == (0,) and batch == ((), ())
            and precision is None and preferred_element_type is None):
        return checkpoint_name(_matmul(lhs, rhs), sharding.DENSE_OUTPUT)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
