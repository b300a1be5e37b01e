"""cnnjax: the Fashion-MNIST and CIFAR-10 CNN studies, in JAX/Flax."""
__version__ = '0.1.0'
