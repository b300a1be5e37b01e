"""Patch whitening: first-layer filters computed from the training images, not drawn at random.

A k x k convolution over C channels sees patches of k*k*C numbers. The
eigenvectors of their covariance, each divided by sqrt(eigenvalue + eps),
map patches to uncorrelated outputs of variance eigenvalue / (eigenvalue + eps):
near 1 for the directions the images use, near 0 below `eps` (JPEG noise, pixel
noise). Each filter is kept with its negative, so the ReLU or GELU after the
stem discards no direction. Held fixed, these filters give every later layer
decorrelated inputs from the first step on, which is what lets a small CNN
reach its accuracy in a few epochs: `cnn_fast` with `stem='whitening'`.
"""
import numpy as np

DEFAULT_EPS = 5e-4   # On inputs in [0, 1]: damps directions of variance below about 1/2000.


def image_patches(images: np.ndarray, kernel_size: int) -> np.ndarray:
  """Every 'valid' k x k patch of (N, H, W, C) `images`, flattened in (row, column, channel)
  order: the order of a Flax (k, k, C, features) kernel's first three axes."""
  windows = np.lib.stride_tricks.sliding_window_view(images, (kernel_size, kernel_size),
                                                     axis=(1, 2))  # (N, H', W', C, k, k)
  return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kernel_size * kernel_size
                                                     * images.shape[-1])


def whitening_kernel(images: np.ndarray, kernel_size: int, eps: float = DEFAULT_EPS
                     ) -> np.ndarray:
  """A (k, k, C, 2*k*k*C) float32 kernel: the whitening filters of `images`' k x k patches
  (inputs as the model sees them, e.g. scaled to [0, 1]), then their negatives."""
  patches = image_patches(np.asarray(images, np.float64), kernel_size)
  eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches, rowvar=False))
  filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)
  both = np.concatenate([filters, -filters], axis=1)
  return both.reshape(kernel_size, kernel_size, images.shape[-1], -1).astype(np.float32)
