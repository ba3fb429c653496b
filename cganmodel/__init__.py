"""cganmodel: class-conditional GANs (configs, nets, training, sampling, data).

The package root stays light: import the submodules you need, e.g.
``from cganmodel.gan import GANConfig`` or ``from cganmodel.sampling import generate``.
"""

__version__ = "0.1.0"
