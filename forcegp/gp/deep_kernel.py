"""The deep kernel h: a small tanh MLP from the standardised descriptor to the features u the
soft interpolation acts on, with forward-mode tangents written out layer by layer
(docs/method.md §3)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class DeepKernel(eqx.Module):
    """Small MLP h: R^P -> R^p, applied to the standardised descriptor."""

    mlp: eqx.nn.MLP

    def __init__(self, in_size: int, out_size: int, width: int, depth: int, *, key: jax.Array):
        self.mlp = eqx.nn.MLP(
            in_size, out_size, width, depth, activation=jnp.tanh, dtype=jnp.float64, key=key
        )

    def __call__(self, v: jax.Array) -> jax.Array:
        return self.mlp(v)

    def first_weight(self) -> jax.Array:
        """The first layer's weight (width, P)."""
        return self.mlp.layers[0].weight

    def after_first_product(self, v: jax.Array, dh: jax.Array) -> tuple[jax.Array, jax.Array]:
        """h(v) (p,) and the tangents (D, p) of h, given the tangent rows dh (D, width) of the
        first layer's product weight @ v (inverse_distance_tangents computes them without dv/dx;
        with dense tangent rows dv (D, P) they are dv @ weight.T). The rest is forward mode
        written out layer by layer as matrix products: tangents are rows, so under vmap every
        layer is one (rows x in) @ (in x out) product with no transposes around it, and so is
        its reverse-mode pass. The MLP's own activations are used; they act elementwise."""
        layers = self.mlp.layers
        for k, layer in enumerate(layers):
            act = self.mlp.activation if k < len(layers) - 1 else self.mlp.final_activation
            if k > 0:
                dh = dh @ layer.weight.T
            h = layer.weight @ v + layer.bias
            v, slope = jax.jvp(act, (h,), (jnp.ones_like(h),))
            dh = dh * slope[None, :]
        return v, dh
