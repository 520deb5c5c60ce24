"""models/dense_dot.py: the projections' matmul and its own backward pass
(the models' weight gradients against PyTorch's are in test_encoder_parity)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from w2s_jax.core import sharding
from w2s_jax.models import dense_dot

DENSE = (((2,), (0,)), ((), ()))  # what nn.Dense asks for on [B, L, in]


def test_values_and_gradients_match_the_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 7)).astype(np.float32)
    w = rng.normal(size=(7, 4)).astype(np.float32)
    dy = rng.normal(size=(3, 5, 4)).astype(np.float32)
    y, vjp = jax.vjp(lambda a, b: dense_dot.dot_general(a, b, DENSE), x, w)
    dx, dw = vjp(jnp.asarray(dy))
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    np.testing.assert_allclose(y, x64 @ w64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dy64 @ w64.T, rtol=1e-5, atol=1e-5)
    # dW sums x^T dy over every token of every row.
    want = np.einsum("bli,blo->io", x64, dy64)
    np.testing.assert_allclose(dw, want, rtol=1e-5, atol=1e-5)
    # The form other platforms compile (not run on this CPU-only suite).
    np.testing.assert_allclose(dense_dot._weight_grad(jnp.asarray(x), jnp.asarray(dy)),
                               want, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_keep_their_dtypes():
    x = jnp.linspace(-2, 2, 6 * 8, dtype=jnp.bfloat16).reshape(6, 8)
    w = jnp.linspace(-1, 1, 8 * 3, dtype=jnp.bfloat16).reshape(8, 3)
    dims = (((1,), (0,)), ((), ()))

    def grads(dot):
        return jax.grad(lambda a, b: jnp.sum(dot(a, b, dims).astype(jnp.float32) ** 2),
                        argnums=(0, 1))(x, w)

    for got, want in zip(grads(dense_dot.dot_general), grads(jax.lax.dot_general)):
        assert got.dtype == want.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32),
                                   np.asarray(want, np.float32), rtol=2e-2, atol=1e-2)


def _bf16(a):
    """float32 -> bfloat16 -> float64: the operand a bfloat16 matmul sees."""
    return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16), np.float64)


@pytest.mark.parametrize("lead", [(), (12,), (3, 4)])
def test_bfloat16_matmul_precision_rounds_operands_and_sums_in_float32(lead):
    """Under config.matmul_precision="bfloat16" (JAX's default matmul
    precision), float32 projections compute with operands rounded to
    bfloat16 and float32 sums, forward and backward, on CPU too, where
    XLA:CPU itself would compute in float32. The results are float32.
    Inputs of 1, 2 and 3 dimensions (dW's bfloat16 form reshapes them)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(*lead, 40)).astype(np.float32)
    w = rng.normal(size=(40, 24)).astype(np.float32)
    dy = rng.normal(size=(*lead, 24)).astype(np.float32)
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    with jax.default_matmul_precision("bfloat16"):
        y, vjp = jax.vjp(lambda a, b: dense_dot.dot_general(a, b, dims), x, w)
        dx, dw = vjp(jnp.asarray(dy))
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    xr, wr, dyr = _bf16(x), _bf16(w), _bf16(dy)
    tokens = (-1, x.shape[-1])
    for got, want, exact in (
            (y, xr @ wr, x.astype(np.float64) @ w),
            (dx, dyr @ wr.T, dy.astype(np.float64) @ w.T),
            (dw, xr.reshape(tokens).T @ dyr.reshape(-1, 24),
             x.reshape(tokens).T.astype(np.float64) @ dy.reshape(-1, 24))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # Rounding the operands moved the result by far more than that.
        assert np.abs(np.asarray(got) - exact).max() > 1e-3
    # Outside the context, the same call is float32 again.
    np.testing.assert_allclose(dense_dot.dot_general(x, w, dims),
                               x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)


def test_other_contractions_go_through_lax():
    a = jnp.arange(24.0).reshape(2, 3, 4)
    b = jnp.arange(24.0).reshape(2, 4, 3)
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(dense_dot.dot_general(a, b, batched),
                                  jax.lax.dot_general(a, b, batched))
    high = jax.lax.Precision.HIGHEST
    np.testing.assert_array_equal(
        dense_dot.dot_general(a, b[0], DENSE, precision=high),
        jax.lax.dot_general(a, b[0], DENSE, precision=high))


def test_dots_remat_policy_still_saves_projection_outputs(capsys):
    # The custom_vjp hides its dot from dots_with_no_batch_dims_saveable;
    # without the name, "dots" would recompute every projection.
    x = jnp.ones((2, 3, 4))
    w1, w2 = jnp.ones((4, 6)), jnp.ones((6, 5))

    def mlp(x, w1, w2):
        h = jnp.tanh(dense_dot.dot_general(x, w1, DENSE))
        return jnp.sum(dense_dot.dot_general(h, w2, DENSE))

    remat = jax.checkpoint(mlp, policy=sharding.REMAT_POLICIES["dots"])
    print_saved_residuals(remat, x, w1, w2)  # jax's public listing
    saved = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in saved
            if f"named '{sharding.DENSE_OUTPUT}'" in line] == ["f32[2,3,6]"]


def test_every_projection_of_a_layer_goes_through_it():
    # layers.dense is every family's projection; an EncoderLayer has six
    # (q, k, v, out, intermediate, output). Without dense_dot, none is named.
    from types import SimpleNamespace

    from w2s_jax.models import layers
    cfg = SimpleNamespace(hidden_size=8, num_attention_heads=2, intermediate_size=16,
                          hidden_act="gelu", layer_norm_eps=1e-12)
    layer = layers.EncoderLayer(cfg)
    x = jnp.ones((1, 4, 8))
    allowed = jnp.ones((1, 1, 1, 4), bool)
    params = layer.init(jax.random.key(0), x, allowed, None)
    jaxpr = str(jax.make_jaxpr(lambda p: layer.apply(p, x, allowed, None))(params))
    assert jaxpr.count(f"name={sharding.DENSE_OUTPUT}") == 6
