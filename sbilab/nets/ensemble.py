r"""Ensembles of K independently initialised copies of a network, trained at once.

The K members' parameters are stacked along a leading axis (:func:`torch.func.stack_module_state`)
and registered as parameters of the :class:`Ensemble`, so one optimizer trains all members in one
step; the forward pass maps the template over the members with :func:`torch.func.functional_call`
and :func:`torch.vmap`. Deep ensembles estimate the epistemic uncertainty of a learned quantity
by the spread of its members (Lakshminarayanan, Pritzel, Blundell, arXiv:1612.01474).

Templates whose forward pass ``vmap`` cannot trace (data-dependent control flow, ``.item()``,
operators with data-dependent output shapes, in-place updates of unbatched tensors by batched
values) are evaluated by a loop over members instead, with one :class:`RuntimeWarning`; the
result is the same, only slower. Only ``vmap``'s own refusals fall back: any other error of
the template's forward (a wrong shape, a bad argument) is raised as it is.

The estimators' view of an ensemble is :class:`~sbilab.estimators.ensembles.EnsembleMean`,
which reduces the members to one output per estimator kind.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from ..exceptions import ConfigError, ShapeMismatchError
from ..registry import build_module, module_spec, register_publishable
from .init import draw_seeds, reset_parameters

__all__ = ["Ensemble"]

_SEP = "__"  # parameter names may not contain dots; "inp.weight" is stored as "inp__weight"


def _fresh_members(template: nn.Module, seeds: list[int]) -> list[nn.Module]:
    """Copies of ``template``, copy ``i`` with parameters drawn by ``reset_parameters`` from ``seeds[i]``."""
    members = []
    for seed in seeds:
        member = copy.deepcopy(template)
        reset_parameters(member, seed)
        members.append(member)
    return members


def _vmap_refused(err: RuntimeError) -> bool:
    """Whether ``err`` is :func:`torch.vmap` refusing to trace (not an error of the traced code itself).

    vmap's refusals (data-dependent control flow, ``.item()``, dynamic output shapes, in-place
    writes of batched values into unbatched tensors) all start with ``"vmap:"``; operators
    without a batching rule say ``"Batching rule not implemented"``.
    """
    message = str(err)
    return message.startswith("vmap") or "Batching rule not implemented" in message


@register_publishable
class Ensemble(nn.Module):
    r"""K copies of ``template`` with independent initial weights, evaluated in one batched call.

    Args:
        template: The network to replicate. Its ``forward`` defines the members' forward;
            its parameters are re-initialised for every member (every submodule's
            ``reset_parameters``), its buffers (e.g. standardisation constants) are copied.
        k: Number of members ``K >= 1``.
        generator: Source of the K initialisation seeds (default: torch's global RNG).
        vectorize: ``True`` evaluates members with :func:`torch.vmap`, ``False`` with a loop,
            ``None`` (default) tries ``vmap`` and falls back to the loop for good (warning once)
            if ``vmap`` refuses to trace the template.

    Calling ``ens(*args, stacked=False)`` returns the members' outputs stacked on a leading
    axis, e.g. ``(K, N)`` for a template returning ``(N,)``. With ``stacked=False`` every tensor
    argument is shared by all members; with ``stacked=True`` every tensor argument has a
    leading ``K`` axis and member ``k`` sees slice ``k`` — the way to get per-member input
    gradients:

    .. code-block:: python

        theta_k = theta.expand(K, N, P).clone().requires_grad_()
        out = ens(x.expand(K, N, D), theta_k, stacked=True)          # (K, N)
        (grad,) = torch.autograd.grad(out.sum(), theta_k, create_graph=True)  # (K, N, P)

    Keyword arguments are passed unchanged to every member.

    Example:
        >>> ens = Ensemble(nn.Linear(3, 1), 4, generator=torch.Generator().manual_seed(0))
        >>> ens(torch.zeros(5, 3)).shape
        torch.Size([4, 5, 1])
        >>> bool(torch.allclose(ens(torch.ones(2, 3))[2], ens.member(2)(torch.ones(2, 3))))
        True
    """

    def __init__(self, template: nn.Module, k: int, *, generator: torch.Generator | None = None,
                 vectorize: bool | None = None) -> None:
        super().__init__()
        if not isinstance(template, nn.Module):
            raise ConfigError(f"Ensemble: template must be a torch.nn.Module, got {type(template).__name__}.")
        if isinstance(template, Ensemble):
            raise ConfigError("Ensemble: template is already an Ensemble; nest members, not ensembles.")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"Ensemble: k must be a positive integer, got {k!r}.")
        members = _fresh_members(template, draw_seeds(k, generator))
        params, buffers = stack_module_state(members)
        if k > 1 and params and all(torch.equal(p[0], p[1]) for p in params.values()):
            warnings.warn(
                f"Ensemble: re-initialising {type(template).__name__} gave all {k} members the same weights "
                "(no submodule draws random initial values in reset_parameters()); they will train alike.",
                stacklevel=2,
            )
        # not a registered submodule (no parameters of its own): the stacked tensors are swapped in per call
        object.__setattr__(self, "_template", copy.deepcopy(template))
        self._param_names = tuple(params)
        self._buffer_names = tuple(buffers)
        self.k = k
        self.vectorize = vectorize
        self.stack = nn.Module()
        for name, value in params.items():
            self.stack.register_parameter(name.replace(".", _SEP), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.stack.register_buffer(name.replace(".", _SEP), value.detach().clone())

    # ------------------------------------------------------------------ state
    def stacked_parameters(self) -> dict[str, Tensor]:
        """The members' parameters by the template's names, each ``(K, ...)``."""
        return {name: getattr(self.stack, name.replace(".", _SEP)) for name in self._param_names}

    def stacked_buffers(self) -> dict[str, Tensor]:
        """The members' buffers by the template's names, each ``(K, ...)``."""
        return {name: getattr(self.stack, name.replace(".", _SEP)) for name in self._buffer_names}

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every member's parameters again (one seed per member from ``generator``); buffers are kept.

        With the same ``generator`` state the members start exactly as those of
        ``Ensemble(template, k, generator=...)`` do. Called by
        :func:`~sbilab.nets.init.reinitialise` (and so by ``fit(..., init="seed")``).
        """
        members = _fresh_members(self._template, draw_seeds(self.k, generator))
        params, _ = stack_module_state(members)
        for name, value in params.items():
            getattr(self.stack, name.replace(".", _SEP)).copy_(value)

    def member(self, i: int) -> nn.Module:
        """Member ``i`` as a plain, independent module (a copy of the template holding its weights)."""
        if not -self.k <= i < self.k:
            raise ConfigError(f"Ensemble.member: index {i} out of range for an ensemble of {self.k} members.")
        module = copy.deepcopy(self._template)
        params, buffers = self.stacked_parameters(), self.stacked_buffers()
        device = next(iter(params.values())).device if params else None
        module.to(device)
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(params[name][i])
            for name, b in module.named_buffers():
                b.copy_(buffers[name][i])
        return module.train(self.training)

    @property
    def template(self) -> nn.Module:
        """The replicated network (holding the initial weights, not the members'; see :meth:`member`).

        Its class, attributes and buffers describe every member: estimators read the parameter
        space, the reference point or the loss conventions from it.
        """
        return self._template

    def train(self, mode: bool = True) -> "Ensemble":
        super().train(mode)
        self._template.train(mode)
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, stacked: bool = False, **kwargs: Any) -> Tensor:
        """Outputs of all members, stacked on a leading ``K`` axis (see the class docstring)."""
        if stacked:
            for i, a in enumerate(args):
                if isinstance(a, Tensor) and (a.dim() == 0 or a.shape[0] != self.k):
                    raise ShapeMismatchError(
                        f"Ensemble(stacked=True): positional argument {i} has shape {tuple(a.shape)}; "
                        f"it needs a leading axis of size K={self.k}. Use stacked=False to share inputs."
                    )
        params, buffers = self.stacked_parameters(), self.stacked_buffers()
        if self.vectorize is not False:
            try:
                return self._vmapped(params, buffers, args, kwargs, stacked)
            except RuntimeError as err:
                if self.vectorize is True or not _vmap_refused(err):
                    raise
                reason = str(err).splitlines()[0].split(". ")[0][:200]
                out = self._looped(params, buffers, args, kwargs, stacked)
                self.vectorize = False  # vmap cannot trace this template: loop from now on
                warnings.warn(
                    f"Ensemble: torch.vmap cannot trace {type(self._template).__name__}.forward ({reason}); "
                    f"evaluating the {self.k} members in a loop from now on (same results, slower). "
                    "Pass vectorize=False to choose the loop explicitly.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return out
        return self._looped(params, buffers, args, kwargs, stacked)

    def _vmapped(self, params: dict, buffers: dict, args: tuple, kwargs: dict, stacked: bool) -> Tensor:
        template = self._template

        def call(p: dict, b: dict, *a: Any) -> Tensor:
            return functional_call(template, (p, b), a, kwargs)

        in_dims = (0, 0) + tuple(0 if stacked and isinstance(a, Tensor) else None for a in args)
        out = torch.vmap(call, in_dims=in_dims, randomness="different")(params, buffers, *args)
        if self.vectorize is None:
            self.vectorize = True
        return out

    def _looped(self, params: dict, buffers: dict, args: tuple, kwargs: dict, stacked: bool) -> Tensor:
        outs = []
        for i in range(self.k):
            a_i = tuple(a[i] if stacked and isinstance(a, Tensor) else a for a in args)
            p_i = {n: v[i] for n, v in params.items()}
            b_i = {n: v[i] for n, v in buffers.items()}
            outs.append(functional_call(self._template, (p_i, b_i), a_i, kwargs))
        return torch.stack(outs)

    # ------------------------------------------------------------------ publishing
    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``k`` and the template's registered kind and spec.

        Raises:
            PublishError: the template's class is not registered with ``@register_publishable``.
        """
        return {"k": self.k, "template": module_spec(self._template)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Ensemble":
        """Rebuild an (untrained) ensemble from :meth:`spec`, the template via the publish registry only."""
        return cls(build_module(spec["template"]), int(spec["k"]))

    def extra_repr(self) -> str:
        return f"k={self.k}, template={type(self._template).__name__}, vectorize={self.vectorize}"
