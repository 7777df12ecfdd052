"""kunet: the U-Net of Ronneberger, Fischer & Brox (2015) for microscopy segmentation.

Importing the package is cheap: TensorFlow is imported by the modules that need it
(``kunet.model``, ``kunet.pipeline``, ...), not here.
"""

__version__ = "0.1.0"
