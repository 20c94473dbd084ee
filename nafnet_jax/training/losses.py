"""Pixel losses and their weighted combination, as `train.loss` names them.

Every loss takes (pred, target) of shape (N, H, W, C) (plus keyword arguments
from the config) and returns a float32 scalar, a mean over the batch given;
with gradient accumulation the step averages equal-sized micro-batch values,
which is the same global mean.

`train.loss` is either a name (`"psnr"`, the original's) or a mapping from
names to a weight or to `{"weight": w, **kwargs}`:

    config.train.loss = {"psnr": 1.0, "fft_l1": {"weight": 0.05}}
    config.train.loss = {"charbonnier": {"weight": 1.0, "eps": 1e-3}}
    --config.train.loss='{"psnr": 1, "fft_l1": {"weight": 0.05}}'

`parse_loss_spec` checks it (names, keyword arguments, weights) before any
work starts; `get_loss` builds the `WeightedLoss` the step trains with, whose
`components` also returns every term's unweighted value for the logs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
LossFn = Callable[[Array, Array], Array]

LOSS_KEY = "train.loss"


def per_sample_mse(pred: Array, target: Array) -> Array:
    """(N,) mean squared error per image, in float32."""
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


def psnr_loss(pred: Array, target: Array) -> Array:
    """The original's PSNRLoss (toY=False, weight 1): -PSNR per image, mean over the batch.

    (10 / ln 10) * mean_n(log(mse_n + 1e-8)); negative by design.
    """
    return (10.0 / math.log(10.0)) * jnp.mean(jnp.log(per_sample_mse(pred, target) + 1e-8))


def l1_loss(pred: Array, target: Array) -> Array:
    """Mean absolute error over every pixel and channel, in float32."""
    return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def mse_loss(pred: Array, target: Array) -> Array:
    """Mean squared error over every pixel and channel, in float32."""
    return jnp.mean(per_sample_mse(pred, target))


def charbonnier_loss(pred: Array, target: Array, eps: float = 1e-3) -> Array:
    """mean(sqrt(diff^2 + eps^2)): a smooth L1 (eps in the images' [0, 1] units)."""
    if not eps > 0:
        raise ValueError(f"eps={eps!r}: expected > 0")
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.sqrt(jnp.square(diff) + eps * eps))


FFT_NORMS = ("backward", "ortho", "forward")


def fft_l1_loss(pred: Array, target: Array, norm: str = "backward") -> Array:
    """Frequency-domain L1: the mean absolute difference of the 2-D real FFTs over (H, W).

    Per image and channel, `rfft2` over H and W gives H x (W // 2 + 1) complex
    coefficients; the loss is the mean, over batch, channels, coefficients and
    the real and imaginary parts taken separately, of |rfft2(pred) - rfft2(gt)|.
    That is MIMO-UNet's FFT loss (`torch.fft.rfft2`, real and imaginary parts
    stacked, then `nn.L1Loss`), which later restoration work weights by
    0.05-0.1 beside a pixel loss.

    Normalisation (`norm`, as numpy/torch name it): 'backward' (default, as
    MIMO-UNet) leaves the forward transform unscaled, so the DC coefficient is
    H * W times the mean difference and the loss grows with the crop size;
    'ortho' scales by 1 / sqrt(H * W) (Parseval: the loss then measures the
    same energy as a pixel loss); 'forward' by 1 / (H * W). Computed in float32
    whatever the model's dtype.
    """
    if norm not in FFT_NORMS:
        raise ValueError(f"norm={norm!r}: expected one of {FFT_NORMS}")
    diff = jnp.fft.rfft2(pred.astype(jnp.float32) - target.astype(jnp.float32), axes=(1, 2), norm=norm)
    # rfft2 is linear, so the FFT of the difference is the difference of the FFTs.
    return 0.5 * (jnp.mean(jnp.abs(diff.real)) + jnp.mean(jnp.abs(diff.imag)))


LOSSES: Dict[str, Callable[..., Array]] = {
    "psnr": psnr_loss,
    "l1": l1_loss,
    "mse": mse_loss,
    "charbonnier": charbonnier_loss,
    "fft_l1": fft_l1_loss,
}


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One weighted term of the training loss.

    Attributes:
      name: a key of `LOSSES`.
      weight: its factor in the total (>= 0).
      kwargs: keyword arguments for the loss function, as sorted (key, value) pairs.
    """

    name: str
    weight: float = 1.0
    kwargs: Tuple[Tuple[str, Any], ...] = ()

    def __call__(self, pred: Array, target: Array) -> Array:
        """The unweighted value of this term."""
        return LOSSES[self.name](pred, target, **dict(self.kwargs))


@dataclasses.dataclass(frozen=True)
class WeightedLoss:
    """sum_i weight_i * loss_i(pred, target): the training loss `train.loss` describes.

    Calling it gives the weighted total (a `LossFn`); `components` also gives
    each term's unweighted value, keyed 'loss/<name>', for the step's metrics.
    """

    terms: Tuple[LossTerm, ...]

    def components(self, pred: Array, target: Array) -> Tuple[Array, Dict[str, Array]]:
        """(weighted total, {'loss/<name>': unweighted value}), float32 scalars."""
        values, total = {}, None
        for term in self.terms:
            value = values[f"loss/{term.name}"] = term(pred, target)
            # A weight-1 term enters as is, so the lone 'psnr' loss is the original's bit for bit.
            weighted = value if term.weight == 1.0 else term.weight * value
            total = weighted if total is None else total + weighted
        return total, values

    def __call__(self, pred: Array, target: Array) -> Array:
        return self.components(pred, target)[0]


def loss_components(loss_fn: LossFn, pred: Array, target: Array) -> Tuple[Array, Dict[str, Array]]:
    """(total, per-term values) of any loss: a `WeightedLoss` names its terms, a plain function none."""
    if isinstance(loss_fn, WeightedLoss):
        return loss_fn.components(pred, target)
    return loss_fn(pred, target), {}


def _bad(key: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"invalid config value {key}={value!r}: expected {expected}")


def _keyword_names(fn: Callable[..., Array]) -> Tuple[str, ...]:
    """The keyword arguments a loss takes after (pred, target)."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _as_plain(value: Any) -> Any:
    """ConfigDicts (and FrozenConfigDicts) as plain dicts; anything else as is."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_term(name: Any, entry: Any) -> LossTerm:
    key = f"{LOSS_KEY}.{name}"
    if name not in LOSSES:
        raise ValueError(f"invalid config key {key}: {name!r} is not a known loss; "
                         f"choose from {sorted(LOSSES)}")
    entry = _as_plain(entry)
    if _is_number(entry):
        weight, kwargs = float(entry), {}
    elif isinstance(entry, Mapping):
        kwargs = dict(entry)
        weight = kwargs.pop("weight", 1.0)
        if not _is_number(weight):
            raise _bad(f"{key}.weight", weight, "a finite number >= 0")
        weight = float(weight)
        allowed = _keyword_names(LOSSES[name])
        for arg in kwargs:
            if arg not in allowed:
                raise ValueError(f"invalid config key {key}.{arg}: the {name!r} loss takes "
                                 f"{['weight', *allowed]}")
    else:
        raise _bad(key, entry, "a weight or a mapping {'weight': w, **keyword arguments}")
    if weight < 0:
        raise _bad(f"{key}.weight" if isinstance(entry, Mapping) else key, weight, "a finite number >= 0")
    term = LossTerm(name, weight, tuple(sorted(kwargs.items())))
    # Trace the term on a tiny abstract batch so a bad argument value (an unknown FFT norm, a
    # negative eps, a string for a number) fails here, naming its key, not mid-compile.
    spec = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    try:
        jax.eval_shape(term, spec, spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid config value {key}={entry!r}: {e}") from None
    return term


def parse_loss_spec(spec: Any) -> Tuple[LossTerm, ...]:
    """Checks `train.loss` and returns its terms.

    Args:
      spec: a loss name ('psnr'), a mapping {name: weight | {'weight': w,
        **kwargs}} (dict or ConfigDict), or that mapping as a JSON string.
    Raises:
      ValueError naming the key (`train.loss.<name>[.<arg>]`) for an unknown
      loss or keyword argument, a bad weight or argument value, or no term
      with a positive weight.
    """
    spec = _as_plain(spec)
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as e:
                raise _bad(LOSS_KEY, spec, f"a loss name or a JSON mapping ({e})") from None
        elif text not in LOSSES:
            raise _bad(LOSS_KEY, spec, f"one of {sorted(LOSSES)} or a weighted mapping of them")
        else:
            return (_parse_term(text, 1.0),)
    if not isinstance(spec, Mapping) or not spec:
        raise _bad(LOSS_KEY, spec, f"one of {sorted(LOSSES)} or a non-empty mapping {{name: weight}}")
    terms = tuple(_parse_term(name, entry) for name, entry in spec.items())
    if not any(t.weight > 0 for t in terms):
        raise _bad(LOSS_KEY, spec, "at least one term with a weight > 0")
    return terms


def get_loss(spec: Any) -> WeightedLoss:
    """The training loss `train.loss` describes (see `parse_loss_spec`)."""
    return WeightedLoss(parse_loss_spec(spec))
