"""The public functions of fastbn and their reference twins, in one place.

The equivalence, bad-input and nothing-lost tests draw their functions from
here (as bottleneck's ``tests/util.py`` ``func_dict()`` does): adding a
normalization to fastbn is one :class:`Forward` entry and one line in
:data:`BACKWARD`, and every table-driven test then covers it.

``fastbn.<name>`` is the dispatching function, ``fastbn.compiled.<name>`` and
``fastbn.reference.<name>`` the two backends (:func:`twins`).
"""
from dataclasses import dataclass

import numpy as np

import fastbn
from fastbn import compiled, reference

BACKENDS = ["cython", "numpy"]


@dataclass(frozen=True)
class Forward:
    """A public forward function and what its table-driven tests need to call it."""
    name: str
    ndim: int
    param: str          # name of the dict argument: 'bn_param', 'ln_param', ...
    running: bool       # keeps running statistics (and so has a mode)
    group_axis: int     # axis indexing the groups that are normalized separately
    extra: tuple = ()   # (name, valid value) of positional arguments between beta and param


FORWARD = {f.name: f for f in [
    Forward("batchnorm_forward", 2, "bn_param", True, group_axis=1),
    Forward("spatial_batchnorm_forward", 4, "bn_param", True, group_axis=1),
    Forward("layernorm_forward", 2, "ln_param", False, group_axis=0),
]}

# backward name -> the forward that makes its cache
BACKWARD = {
    "batchnorm_backward": "batchnorm_forward",
    "batchnorm_backward_alt": "batchnorm_forward",
    "spatial_batchnorm_backward": "spatial_batchnorm_forward",
    "layernorm_backward": "layernorm_forward",
}

SHAPE = {2: (5, 3), 4: (3, 2, 4, 5)}


def public_names():
    """The normalization functions fastbn exports (what the registry must cover)."""
    return {n for n in fastbn.__all__ if n.endswith(("_forward", "_backward", "_backward_alt"))}


def twins(name):
    """``(compiled function, reference function)`` for a public name."""
    return getattr(compiled, name), getattr(reference, name)


def valid_args(spec, dtype=np.float64, seed=0):
    """A valid call of forward ``spec`` as a dict of its arguments."""
    rng = np.random.default_rng(seed)
    shape = SHAPE[spec.ndim]
    D = shape[1]
    args = {"x": rng.standard_normal(shape).astype(dtype),
            "gamma": (1 + rng.random(D)).astype(dtype),
            "beta": rng.standard_normal(D).astype(dtype),
            "param": {"eps": 1e-5}}
    args.update(spec.extra)
    if spec.running:
        args["param"].update(mode="train", momentum=0.9,
                             running_mean=rng.standard_normal(D).astype(dtype),
                             running_var=(1 + rng.random(D)).astype(dtype))
    return args


def call_forward(name, args, module=fastbn, **kw):
    """Call forward ``name`` of ``module`` with the arguments in ``args``."""
    spec = FORWARD[name]
    extra = [args[k] for k, _ in spec.extra]
    return getattr(module, name)(args["x"], args["gamma"], args["beta"], *extra, args["param"],
                                 **kw)
