"""A wrong gradient from XLA's SPMD-partitioned CPU program: why jaxcnn uses lax.conv on a mesh.

Run:   JAX_NUM_CPU_DEVICES=8 python experiments/xla_spmd_patches_repro.py
Seen:  jax/jaxlib 0.10.2, 2-core x86-64 CPU, 8 host-platform devices: the gradient of the kernel
       differs from the single-device one by about 5.4 (on values of about 20); with 2 devices, or
       any one piece below removed, the two agree to 1e-5.

Pure JAX, no jaxcnn: a 3x3 SAME convolution written as padded slices concatenated on the channel
axis times a matrix (jaxcnn's "patches" lowering), a batch normalization whose statistics are
weighted by a mask with some zeros (padding), and a 2x2 max pooling written as reshape and max;
the batch is split over the devices. Each piece is needed: lax.conv instead of the patches, a sum
of shifted slices instead of the concatenation, an all-ones mask, or the mean without the variance,
and the gradients agree. jaxcnn therefore makes every automatic convolution (LoweringContext.partitioned)
lax.conv when a step is traced for a mesh of more than one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

B = 32


def loss(kernel: jax.Array, x: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + 8, j:j + 8, :] for i in range(3) for j in range(3)], axis=-1)
    y = jnp.einsum("bhwk,kf->bhwf", patches, kernel)
    w = mask.reshape(-1, 1, 1, 1)
    n = jnp.sum(w) * 64
    mean = jnp.sum(y * w, (0, 1, 2)) / n
    var = jnp.sum(jnp.square(y - mean) * w, (0, 1, 2)) / n
    y = (y - mean) * lax.rsqrt(var + 1e-3)
    y = y.reshape(B, 4, 2, 4, 2, 8).max(axis=(2, 4))
    return jnp.sum(y * target * w)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, 8, 8, 1)).astype(np.float32)
    mask = np.ones(B, np.float32)
    mask[30:] = 0.0  # two padded examples
    kernel = rng.normal(size=(9, 8)).astype(np.float32)
    target = rng.normal(size=(B, 4, 4, 8)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    split, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    grad = jax.grad(loss)
    one = jax.jit(grad)(kernel, x, mask, target)
    many = jax.jit(grad, in_shardings=(replicated, split, split, split))(kernel, x, mask, target)
    difference = float(np.abs(np.asarray(one) - np.asarray(many)).max())
    print(f"jax {jax.__version__}, {jax.device_count()} devices: largest difference of the kernel gradient "
          f"{difference:.3g} (gradient up to {float(np.abs(np.asarray(one)).max()):.3g}); "
          f"{'WRONG' if difference > 1e-3 else 'agrees'}")


if __name__ == "__main__":
    main()
