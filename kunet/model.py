"""The U-Net of Ronneberger, Fischer & Brox (MICCAI 2015) as a Keras 3 functional model.

Two faithful variants and the options people need around them:

* ``variant="paper"``: the network of the paper's Fig. 1. Per level two unpadded 3x3 convolutions each
  followed by a ReLU, 2x2 max-pooling, 64 -> 1024 channels over depth 4, dropout at the end of the
  contracting path, 2x2 up-convolutions that halve the channels, crop-and-concatenate with the skip and a
  final 1x1 convolution to ``num_classes`` logits. 31,030,658 parameters for 1 channel and 2 classes.
* ``variant="release2015"``: the authors' released Caffe net (phseg_v5): a ReLU after every
  up-convolution, the last up-convolution keeps 128 channels, dropout 0.5 on the 512- and 1024-channel
  levels, concatenation order [upsampled, skip]. 31,100,354 parameters.

The input is ``(None, None, C)``: one model object runs at every valid size. For valid padding the skip
crops are constant per level (4, 16, 40, 88 px at depth 4, deepest first), so fixed ``Cropping2D`` layers
serve every valid input; :func:`output_size` and :func:`valid_input_size` do the size arithmetic.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from keras import layers

from kunet.sizes import (  # noqa: F401  (re-exported: the size arithmetic is part of the model's interface)
    MAX_DEPTH,
    PADDINGS,
    check_depth,
    nearest_valid_sizes,
    output_size,
    size_error,
    size_rule,
    skip_crops,
    smallest_valid_input,
    valid_input_size,
)
from kunet.sizes import check_choice as _check_choice

VARIANTS = ("paper", "release2015")
OUTPUTS = ("logits", "softmax")
ACTIVATIONS = ("relu", "leaky_relu")


@keras.saving.register_keras_serializable(package="kunet")
class UNet(keras.Model):
    """U-Net (Ronneberger et al., 2015) as a functional Keras model with every option in ``get_config()``.

    Args:
        input_channels: Channels of the input image (1 for gray microscopy).
        num_classes: Number of output classes (2 in the paper: background/foreground).
        variant: ``"paper"`` (Fig. 1) or ``"release2015"`` (the authors' Caffe release).
        base_filters: Channels of the first level (64 in the paper); doubled at every level.
        depth: Number of 2x2 max-pool steps (4 in the paper).
        padding: ``"valid"`` (the paper: output smaller than input) or ``"same"``.
        batch_norm: Batch normalisation after every 3x3 convolution (not in the paper).
        dropout: Dropout rate at the end of the contracting path (paper) or on the two deepest levels
            (release2015). ``None`` uses the variant's default of 0.5; 0 disables it.
        activation: ``"relu"`` (paper) or ``"leaky_relu"`` (slope 0.1, as in Falk et al. 2019).
        output: ``"logits"`` (default; use with a from-logits loss) or ``"softmax"`` probabilities.
        compute_dtype: Keras dtype policy for every layer, e.g. ``"mixed_bfloat16"``; outputs are always
            float32. Passed per layer rather than through the global policy so models never interfere.
        seed: Seed of the weight initialisers (Gaussian, std sqrt(2/N), N = fan-in) and of dropout.
        metadata: JSON-serialisable inference settings that travel with the model inside the ``.keras``
            file (normalisation, class values, decision threshold, post-processing); see
            :mod:`kunet.inference`.

    Example:
        >>> model = UNet(input_channels=1, num_classes=2)
        >>> model(np.zeros((1, 572, 572, 1), "float32")).shape
        TensorShape([1, 388, 388, 2])
    """

    def __init__(
        self,
        input_channels: int = 1,
        num_classes: int = 2,
        variant: str = "paper",
        base_filters: int = 64,
        depth: int = 4,
        padding: str = "valid",
        batch_norm: bool = False,
        dropout: float | None = None,
        activation: str = "relu",
        output: str = "logits",
        compute_dtype: str | None = None,
        seed: int | None = None,
        metadata: dict | None = None,
        **kwargs,
    ):
        _check_choice("variant", variant, VARIANTS)
        _check_choice("padding", padding, PADDINGS)
        _check_choice("output", output, OUTPUTS)
        _check_choice("activation", activation, ACTIVATIONS)
        check_depth(depth)
        if base_filters < 1 or input_channels < 1 or num_classes < 1:
            raise ValueError("base_filters, input_channels and num_classes must be positive")
        effective_dropout = 0.5 if dropout is None else float(dropout)
        if not 0.0 <= effective_dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")

        builder = _UNetGraphBuilder(
            variant=variant,
            base_filters=base_filters,
            depth=depth,
            padding=padding,
            batch_norm=batch_norm,
            dropout=effective_dropout,
            activation=activation,
            dtype=compute_dtype,
            seed=seed,
        )
        inputs = keras.Input(shape=(None, None, input_channels), name="image")
        logits = builder.build(inputs, num_classes)
        if output == "softmax":
            outputs = layers.Softmax(axis=-1, dtype="float32", name="probabilities")(logits)
        else:
            outputs = layers.Activation("linear", dtype="float32", name="logits_float32")(logits)
        kwargs.setdefault("name", f"unet_{variant}")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        self.input_channels = input_channels
        self.num_classes = num_classes
        self.variant = variant
        self.base_filters = base_filters
        self.depth = depth
        self.padding = padding
        self.batch_norm = batch_norm
        self.dropout = dropout
        self.activation = activation
        self.output_type = output
        self.compute_dtype_policy = compute_dtype
        self.seed = seed
        self.metadata = dict(metadata or {})

    def output_size(self, input_size: int) -> int:
        """Output size of this model for one spatial dimension (see :func:`output_size`)."""
        return output_size(input_size, self.depth, self.padding)

    def valid_input_size(self, min_output: int) -> int:
        """Smallest valid input whose output covers ``min_output`` pixels (see :func:`valid_input_size`)."""
        return valid_input_size(min_output, self.depth, self.padding)

    def __call__(self, inputs, *args, **kwargs):
        # Static shapes are known for NumPy inputs and concrete tensors: fail with the nearest valid
        # sizes instead of the incompatible-concatenation error a wrong size raises deep inside the graph.
        shape = getattr(inputs, "shape", None)
        if shape is not None and len(shape) == 4:
            for dim in (shape[1], shape[2]):
                if dim is not None:
                    output_size(int(dim), self.depth, self.padding)
            # A graph traced with unknown sizes (a relaxed predict function, an input signature of None)
            # checks them when it runs. KerasTensors (functional construction) have no values to check.
            if (shape[1] is None or shape[2] is None) and isinstance(inputs, tf.Tensor) and not tf.executing_eagerly():
                inputs = checked_input_sizes(inputs, self.depth, self.padding)
        return super().__call__(inputs, *args, **kwargs)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_channels": self.input_channels,
            "num_classes": self.num_classes,
            "variant": self.variant,
            "base_filters": self.base_filters,
            "depth": self.depth,
            "padding": self.padding,
            "batch_norm": self.batch_norm,
            "dropout": self.dropout,
            "activation": self.activation,
            "output": self.output_type,
            "compute_dtype": self.compute_dtype_policy,
            "seed": self.seed,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_config(cls, config: dict) -> UNet:
        return cls(**config)


def checked_input_sizes(images: tf.Tensor, depth: int, padding: str) -> tf.Tensor:
    """``images`` behind an in-graph check of each spatial size unknown at trace time, with the eager message.

    A size that does not fit raises InvalidArgumentError naming the size, the rule and the nearest valid
    sizes, instead of a ConcatOp shape mismatch deep in the expanding path. Under XLA (``jit_compile``) the
    Assert op is compiled away, so there the check does nothing and costs nothing.
    """
    first, step = size_rule(depth, padding)
    template = size_error(depth, padding).format(size="{}", below="{}", above="{}")
    with tf.name_scope("input_size_check"):
        dynamic_shape = tf.shape(images)
        checks = []
        for axis in (1, 2):
            if images.shape[axis] is not None:
                continue
            size = dynamic_shape[axis]
            below = first + tf.maximum(size - first, 0) // step * step
            above = tf.where(size <= below, below, below + step)
            # Height before width, as in the eager check: the first size that does not fit is the one named.
            with tf.control_dependencies(checks):
                fits = tf.logical_and(size >= first, (size - first) % step == 0)
                checks = [tf.debugging.Assert(fits, [tf.strings.format(template, (size, below, above))])]
        with tf.control_dependencies(checks):
            return tf.identity(images)


@dataclasses.dataclass
class _UNetGraphBuilder:
    """Wires the layers of one U-Net; kept apart from ``UNet`` so the class only holds configuration."""

    variant: str
    base_filters: int
    depth: int
    padding: str
    batch_norm: bool
    dropout: float
    activation: str
    dtype: object
    seed: int | None
    _layer_count: int = 0

    def _next_seed(self) -> int | None:
        self._layer_count += 1
        return None if self.seed is None else self.seed * 1000 + self._layer_count

    def _initializer(self):
        # Paper: Gaussian with std sqrt(2/N), N = fan-in. Keras' HeNormal truncates the Gaussian.
        return keras.initializers.VarianceScaling(
            scale=2.0, mode="fan_in", distribution="untruncated_normal", seed=self._next_seed()
        )

    def _activate(self, x, name):
        if self.activation == "leaky_relu":
            return layers.LeakyReLU(negative_slope=0.1, dtype=self.dtype, name=name)(x)
        return layers.ReLU(dtype=self.dtype, name=name)(x)

    def _conv_block(self, x, filters, name):
        for i in (1, 2):
            x = layers.Conv2D(
                filters,
                3,
                padding=self.padding,
                use_bias=not self.batch_norm,
                kernel_initializer=self._initializer(),
                dtype=self.dtype,
                name=f"{name}_conv{i}",
            )(x)
            if self.batch_norm:
                x = layers.BatchNormalization(dtype=self.dtype, name=f"{name}_bn{i}")(x)
            x = self._activate(x, f"{name}_act{i}")
        return x

    def _dropout_levels(self) -> set[int]:
        if self.dropout <= 0:
            return set()
        if self.variant == "release2015":
            return {self.depth - 1, self.depth} if self.depth >= 1 else {self.depth}
        return {self.depth}

    def build(self, inputs, num_classes):
        crops = skip_crops(self.depth) if self.padding == "valid" else [0] * self.depth
        dropout_levels = self._dropout_levels()
        skips = []
        x = inputs
        for level in range(self.depth + 1):
            filters = self.base_filters * 2**level
            x = self._conv_block(x, filters, f"down{level}")
            if level in dropout_levels:
                # The Caffe release drops out in place, so the skip also sees the dropped map.
                x = layers.Dropout(self.dropout, seed=self._next_seed(), dtype=self.dtype, name=f"down{level}_dropout")(
                    x
                )
            if level < self.depth:
                skips.append(x)
                x = layers.MaxPooling2D(2, dtype=self.dtype, name=f"down{level}_pool")(x)

        for level in reversed(range(self.depth)):
            filters = self.base_filters * 2**level
            up_filters = filters
            if self.variant == "release2015" and level == 0:
                up_filters = 2 * filters  # the released net's last up-convolution keeps 128 channels
            x = layers.Conv2DTranspose(
                up_filters,
                2,
                strides=2,
                kernel_initializer=self._initializer(),
                dtype=self.dtype,
                name=f"up{level}_upconv",
            )(x)
            if self.variant == "release2015":
                x = self._activate(x, f"up{level}_upconv_act")
            skip = skips[level]
            if crops[level]:
                skip = layers.Cropping2D(crops[level], dtype=self.dtype, name=f"up{level}_crop")(skip)
            pair = [x, skip] if self.variant == "release2015" else [skip, x]
            x = layers.Concatenate(axis=-1, dtype=self.dtype, name=f"up{level}_concat")(pair)
            x = self._conv_block(x, filters, f"up{level}")

        return layers.Conv2D(
            num_classes, 1, kernel_initializer=self._initializer(), dtype=self.dtype, name="classifier"
        )(x)
