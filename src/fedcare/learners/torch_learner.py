"""A :class:`~fedcare.core.learning.Learner` for any PyTorch module.

The learner holds one model and is handed weights and a site's arrays on every call, so a
process simulating many sites keeps one model. ``fit`` is the simulation's hot path (tens of
sites x hundreds of rounds of tiny models), hence the choices below:

* weights move in and out through numpy views of the model's own tensors, cached once, so
  loading is one ``numpy.copyto`` per array and exporting one copy per array;
* features are shared with torch zero-copy (``torch.from_numpy``) and mini-batches are taken
  with ``index_select`` on the whole tensor (no DataLoader);
* FedProx and SCAFFOLD gradient terms are applied with ``torch._foreach_*`` ops.

Two options of :class:`~fedcare.core.messages.TrainConfig` shape a fit without changing what
it exchanges: ``lr_schedule = "cosine"`` (:func:`cosine_lr`, over the fit's own steps, so it
needs nothing but the task) and ``augment`` (:func:`augment_images`: training batches only,
drawn from a generator seeded by the fit's seed, so a run stays reproducible and the batch
order is the one an unaugmented fit takes).

DP-SGD (Abadi et al. 2016) is an option of the learner (:class:`DpSgdOptions`), trained with
Opacus' ``GradSampleModule`` (per-example gradients) and ``DPOptimizer`` (clip each example's
gradient to ``max_grad_norm``, add N(0, (z C)^2) to the sum). Opacus is imported only when DP
is on, so the plain path stays as it is. See :meth:`TorchLearner._train_dp` for why fedcare
does its own Poisson sampling instead of ``PrivacyEngine.make_private``.

Exchanged parameters are the model's floating-point ``state_dict`` entries (parameters and
float buffers) in ``state_dict`` order. Integer buffers are left out: they are counters (e.g.
BatchNorm's ``num_batches_tracked``) with no meaningful federated average, and
:class:`~fedcare.core.params.Parameters` only carries floating-point arrays.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, DataError, ValidationError
from fedcare.core.learning import DpSgdFacts, FitResult
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters, ParamSpec, check_finite
from fedcare.learners.metrics import task_metrics
from fedcare.learners.options import ModelOptions

#: Rows per forward pass in ``evaluate`` (bounds memory on large test sets).
EVAL_BATCH = 4096
#: Evaluation holds one batch's activations; a wide model gets fewer rows per batch so they
#: stay near this many values (~256 MB in float32). A 500 MB MLP evaluated 114 rows in one
#: batch through a 13 M-unit layer: 6 GB.
EVAL_ACTIVATION_BUDGET = 64 * 1024**2


def eval_batch_rows(n_params: int, row_size: int) -> int:
    """Rows per evaluation batch: ``n_params / row_size`` approximates the activations one
    row produces in a dense network (weights fan out from each input value)."""
    per_row = max(1, n_params // max(1, row_size))
    return max(1, min(EVAL_BATCH, EVAL_ACTIVATION_BUDGET // per_row))
OPTIMIZERS = ("sgd", "adam")
#: Second word of the augmentation generator's seed: its stream is independent of the batch
#: order's (``default_rng(seed)``), which augmentation therefore leaves unchanged.
_AUGMENT_STREAM = 0xA06


def cosine_lr(lr: float, step: int, total: int) -> float:
    """Learning rate of step ``step`` (0-based) of ``total``: ``lr`` at the first step, down
    to 0 along half a cosine (Loshchilov & Hutter 2017, without restarts inside a fit)."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def augment_images(x: torch.Tensor, mode: str, shift: int,
                   rng: np.random.Generator) -> torch.Tensor:
    """A randomly changed copy of the image batch ``x`` (n, C, H, W); ``x`` is left alone.

    ``flip``: each image is mirrored left-right with probability 1/2. ``shift``: each image is
    translated by (dy, dx), each uniform in ``-shift..shift``, the edge pixels repeated into
    the space it leaves. ``flip_shift``: both. The draws come from ``rng`` only.
    """
    if x.dim() != 4:
        raise DataError(f"train.augment = {mode!r} needs image batches (n, channels, height, "
                        f"width), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if mode in ("flip", "flip_shift"):
        mirror = torch.from_numpy(rng.random(n) < 0.5)
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    if mode in ("shift", "flip_shift"):
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        dy = torch.from_numpy(rng.integers(0, 2 * shift + 1, n))
        dx = torch.from_numpy(rng.integers(0, 2 * shift + 1, n))
        rows = dy[:, None] + torch.arange(h)
        cols = dx[:, None] + torch.arange(w)
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    return x


def fit_steps(rows: int, config: TrainConfig) -> int:
    """Steps one (non-DP) fit on ``rows`` rows takes: ``local_steps``, else one step per
    mini-batch of every epoch."""
    if config.local_steps > 0:
        return config.local_steps
    return config.local_epochs * math.ceil(rows / config.batch_size)


def _set_lr(opt: Any, lr: float) -> None:
    if isinstance(opt, PlainSGD):
        opt.lr = lr
    else:
        for group in opt.param_groups:
            group["lr"] = lr


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    """Zero-copy view of ``arr``; read-only arrays are shared too (training never writes x)."""
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(arr)


@dataclass(frozen=True)
class DpSgdOptions:
    """Record-level DP-SGD at the site.

    ``noise_multiplier`` z and ``max_grad_norm`` C: every step adds N(0, (z C)^2) to the sum of
    per-example gradients clipped to C.

    Both random parts of DP-SGD - which rows each step's Poisson sample takes, and the noise -
    must be secret to the site: the accountant's amplification by subsampling (q = batch /
    rows) assumes the adversary, here the hub, does not know which rows were sampled, and the
    noise protects nothing if it can be recomputed. ``seeded=False`` (the default; nodes and
    simulations) draws both from fresh :mod:`secrets` seeds on every fit. ``seeded=True``
    derives both from the fit's seed, which the hub knows (study seed, round, site index):
    reproducible, and so no privacy at all against whoever knows the study - an explicit
    opt-in for tests only. Opacus' own ``secure_mode`` needs ``torchcsprng``, which is not
    installed, so neither stream is a CSPRNG stream; their seeds (128-bit for the sampler,
    63-bit for torch's noise generator) are what is secret.
    """

    noise_multiplier: float
    max_grad_norm: float
    seeded: bool = False

    def __post_init__(self) -> None:
        problems = []
        for key, value, ok in (
                ("privacy.noise_multiplier", self.noise_multiplier, lambda v: v >= 0),
                ("privacy.clip", self.max_grad_norm, lambda v: v > 0)):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or not ok(value)):
                problems.append(f"{key} must be a finite number "
                                f"{'>= 0' if key.endswith('multiplier') else '> 0'}, "
                                f"got {value!r}")
        if problems:
            raise ConfigError(problems)


def dp_sgd_sample_rate(rows: int, batch_size: int) -> float:
    """DP-SGD's Poisson sampling rate: each row joins each step's batch with ``batch / rows``."""
    if rows < 1 or batch_size < 1:
        raise DataError(f"DP-SGD needs rows >= 1 and batch_size >= 1, got {rows}, {batch_size}")
    return min(1.0, batch_size / rows)


def dp_sgd_steps(rows: int, config: TrainConfig) -> int:
    """Steps one DP-SGD fit takes: ``local_steps``, else ``local_epochs * ceil(rows / batch)``
    (an "epoch" is the number of steps that sees ``rows`` rows in expectation)."""
    if config.local_steps > 0:
        return config.local_steps
    return config.local_epochs * math.ceil(rows / config.batch_size)


def check_dp_compatible(model: nn.Module, name: str) -> None:
    """Raise :class:`ConfigError` if Opacus cannot compute per-example gradients for ``model``.

    In the zoo: logreg, mlp and cnn (GroupNorm) work; lstm, gru (nn.LSTM/nn.GRU) and
    transformer (nn.MultiheadAttention) are refused. Opacus offers replacements (DPLSTM,
    DPMultiheadAttention) with other parameter layouts; fedcare does not swap them in silently.
    """
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = sorted({str(e).split(".")[0] for e in errors})
        raise ConfigError([f"model {name!r} cannot be trained with DP-SGD (Opacus refuses it): "
                           + "; ".join(reasons),
                           "DP-SGD works with the zoo models logreg, mlp and cnn"])


class Stepper(Protocol):
    def step(self) -> Any: ...


class PlainSGD:
    """SGD with optional momentum and weight decay, as ``torch.optim.SGD`` defines it
    (dampening 0, no Nesterov), written by hand on ``torch._foreach_*`` ops.

    Why not ``torch.optim.SGD``: on the small models sites often train, its per-step wrapper
    (profiler scope, grad-mode decorator, hooks) costs ~80 us, more than the step itself, and
    constructing the first optimizer in a process imports ``torch._dynamo`` (~3.7 s here). The
    arithmetic is the same foreach calls ``torch.optim.SGD`` makes, so results are identical;
    ``tests/unit/test_learners_torch.py`` checks it against ``torch.optim.SGD``.
    """

    def __init__(self, params: list[torch.Tensor], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params, self.lr = params, lr
        self.momentum, self.weight_decay = momentum, weight_decay
        self._buffers: dict[int, torch.Tensor] = {}  # momentum, per parameter position

    @torch.no_grad()
    def step(self) -> None:
        live = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [p for _, p in live]
        grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        if self.weight_decay:
            grads = list(torch._foreach_add(grads, params, alpha=self.weight_decay))
        if self.momentum:
            for k, (i, _) in enumerate(live):  # buf = momentum * buf + g; first step buf = g
                buf = self._buffers.get(i)
                if buf is None:
                    buf = self._buffers[i] = torch.clone(grads[k]).detach()
                else:
                    buf.mul_(self.momentum).add_(grads[k])
                grads[k] = buf
        torch._foreach_add_(params, grads, alpha=-self.lr)


class TorchLearner:
    """Trains and evaluates a PyTorch module on numpy arrays (see the module docstring).

    ``threads``, when given, calls :func:`torch.set_num_threads`, which is a per-process
    setting: it affects every model in the process, not only this learner's.
    """

    def __init__(self, model: nn.Module, task: TaskType, *, name: str = "torch",
                 threads: int | None = None, dp: DpSgdOptions | None = None) -> None:
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        self.model = model
        self.task = TaskType(task)
        self.name = name
        state = model.state_dict(keep_vars=True)
        self._names = [k for k, t in state.items() if t.is_floating_point()]
        # numpy views sharing memory with the model's tensors: writes load weights, copies
        # export them. Valid as long as nobody rebinds ``param.data`` (this learner never does).
        self._views = [state[k].detach().numpy() for k in self._names]
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        self._trainable: list[tuple[str, torch.Tensor]] = []
        for k in self._names:  # a tied weight appears once, under its first name
            if id(state[k]) in trainable:
                trainable.discard(id(state[k]))
                self._trainable.append((k, state[k]))
        self._params = [p for _, p in self._trainable]
        self._dtype = self._views[0].dtype if self._views else np.dtype(np.float32)
        self._spec = ParamSpec.of(dict(zip(self._names, self._views, strict=True)))
        self._layout = [(v.shape, v.dtype) for v in self._views]
        self._stochastic = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                               for m in model.modules()) or any(
            isinstance(m, nn.RNNBase) and m.dropout > 0 for m in model.modules())
        #: per-example input shape, when known (set by :meth:`from_zoo`); checked on every call
        self.input_shape: tuple[int, ...] | None = None
        self.dp = dp
        self._grad_module: nn.Module | None = None
        if dp is not None:
            if not isinstance(dp, DpSgdOptions):
                raise ConfigError("dp must be DpSgdOptions")
            check_dp_compatible(model, name)
            from opacus import GradSampleModule

            # Hooks are registered once: they record activations only in training mode with
            # grad enabled, so ``evaluate`` (eval mode, inference_mode) does not pay for them.
            self._grad_module = GradSampleModule(model, loss_reduction="mean")

    @classmethod
    def from_zoo(cls, model_name: str, input_shape: tuple[int, ...], num_outputs: int,
                 task: TaskType, options: Mapping[str, Any] | ModelOptions | None = None,
                 seed: int = 0, *,
                 threads: int | None = None, dp: DpSgdOptions | None = None) -> TorchLearner:
        """A learner around :func:`fedcare.learners.models.build_model`'s ``model_name``."""
        from fedcare.learners.models import build_model

        model = build_model(model_name, input_shape, num_outputs,
                            {} if options is None else options, seed)
        learner = cls(model, task, name=model_name, threads=threads, dp=dp)
        learner.input_shape = tuple(int(d) for d in input_shape)
        return learner

    # ------------------------------------------------------------------------------ weights
    @property
    def spec(self) -> ParamSpec:
        """The layout every incoming :class:`Parameters` must have."""
        return self._spec

    def initial_parameters(self) -> Parameters:
        return self._export()

    def _export(self) -> Parameters:
        return Parameters(dict(zip(self._names, [v.copy() for v in self._views], strict=True)))

    def _load(self, parameters: Parameters) -> None:
        """Validate ``parameters`` against the model's layout and copy them into the model."""
        arrays = [parameters.get(k) for k in self._names]
        if len(parameters) != len(self._names) or any(
                a is None or a.shape != shape or a.dtype != dtype
                for a, (shape, dtype) in zip(arrays, self._layout, strict=True)):
            self._spec.validate(parameters, what=f"parameters for model {self.name!r}")
            raise ValidationError(f"parameters do not match model {self.name!r}")  # unreachable
        check_finite(parameters, what=f"parameters for model {self.name!r}")
        for view, arr in zip(self._views, arrays, strict=True):
            np.copyto(view, arr)  # type: ignore[arg-type]

    def _set_mode(self, training: bool) -> None:
        if self.model.training is not training:  # train() walks every submodule: skip if set
            self.model.train(training)

    # ------------------------------------------------------------------------------- arrays
    def _x(self, x: np.ndarray) -> torch.Tensor:
        x = np.asarray(x)
        if self.input_shape is not None and x.shape[1:] != self.input_shape:
            raise DataError(f"model {self.name!r} expects rows shaped {self.input_shape}, got "
                            f"{x.shape[1:]}")
        if x.dtype != self._dtype or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=self._dtype)
        return _as_tensor(x)

    def _y(self, y: np.ndarray) -> torch.Tensor:
        y = np.asarray(y)
        if self.task is TaskType.MULTICLASS:
            return _as_tensor(np.ascontiguousarray(y.reshape(-1), dtype=np.int64))
        return torch.from_numpy(y.reshape(-1, 1).astype(self._dtype))

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch: BCE-with-logits, cross-entropy or MSE."""
        if self.task is TaskType.BINARY:
            return F.binary_cross_entropy_with_logits(out, target)
        if self.task is TaskType.MULTICLASS:
            return F.cross_entropy(out, target)
        return F.mse_loss(out, target)

    def _optimizer(self, config: TrainConfig) -> Stepper:
        if config.optimizer == "sgd":
            return PlainSGD(self._params, lr=config.lr, momentum=config.momentum,
                            weight_decay=config.weight_decay)
        if config.optimizer == "adam":
            return torch.optim.Adam(self._params, lr=config.lr, weight_decay=config.weight_decay)
        raise ConfigError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")

    def _correction(self, correction: Parameters) -> list[torch.Tensor]:
        """SCAFFOLD's ``c - c_i`` per trainable parameter (float buffers' entries ignored)."""
        names = set(self._names)
        unknown = [k for k in correction if k not in names]
        out, problems = [], [f"unexpected {unknown}"] if unknown else []
        for name, p in self._trainable:
            arr = correction.get(name)
            if arr is None or tuple(arr.shape) != tuple(p.shape):
                problems.append(f"{name!r} missing or shaped "
                                f"{None if arr is None else tuple(arr.shape)}")
                continue
            out.append(torch.from_numpy(np.array(arr, dtype=self._dtype)))
        if problems:
            raise ValidationError("correction does not match the model: " + "; ".join(problems))
        return out

    # --------------------------------------------------------------------------------- fit
    def fit(self, parameters: Parameters, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            *, seed: int, correction: Parameters | None = None) -> FitResult:
        """Local training from ``parameters``; see :meth:`Learner.fit` for the contract.

        FedProx (Li et al. 2020) adds ``mu * (w - w_global)`` to each gradient, the gradient
        of ``mu/2 * ||w - w_global||^2``; SCAFFOLD (Karimireddy et al. 2020) adds the control
        variate difference ``c - c_i``. Both are applied after ``backward`` and before the
        optimizer step, so they compose with any optimizer.
        """
        n = len(x)
        if n == 0:
            raise DataError("cannot train on zero rows")
        if len(y) != n:
            raise DataError(f"x has {n} rows but y has {len(y)}")
        self._load(parameters)
        corr = self._correction(correction) if correction is not None else None
        xt, yt = self._x(x), self._y(y)
        params = self._params
        mu = config.proximal_mu
        anchor = [p.detach().clone() for p in params] if mu > 0 else None
        if self.dp is not None:
            return self._fit_dp(xt, yt, config, seed, anchor, corr)
        opt = self._optimizer(config)
        self._set_mode(True)
        if self._stochastic:  # dropout draws from torch's RNG: seed it, restore it after
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                loss_sum, steps = self._train(xt, yt, config, seed, opt, anchor, corr)
        else:
            loss_sum, steps = self._train(xt, yt, config, seed, opt, anchor, corr)
        return FitResult(self._export(), num_examples=n, num_steps=steps,
                         metrics={"train_loss": loss_sum[0] / loss_sum[1]})

    def _train(self, xt: torch.Tensor, yt: torch.Tensor, config: TrainConfig, seed: int,
               opt: Stepper, anchor: list[torch.Tensor] | None,
               corr: list[torch.Tensor] | None) -> tuple[tuple[float, int], int]:
        """The step loop; returns ((sum of batch loss x batch size, rows seen), steps)."""
        n, bs, limit = len(xt), config.batch_size, config.local_steps
        epochs = config.local_epochs if limit == 0 else -1  # local_steps > 0: until the limit
        rng = np.random.default_rng(seed)
        model, loss_fn, params, mu = self.model, self._loss, self._params, config.proximal_mu
        adjust = anchor is not None or corr is not None
        augment = config.augment != "none"
        aug_rng = np.random.default_rng([seed, _AUGMENT_STREAM]) if augment else None
        cosine = config.lr_schedule == "cosine"
        planned = fit_steps(n, config)
        total, seen, step, epoch = 0.0, 0, 0, 0
        while epoch != epochs:
            epoch += 1
            perm = rng.permutation(n)
            # Slicing the numpy permutation is ~0.25 ms/epoch cheaper than Tensor.split.
            for start in range(0, n, bs):
                idx = torch.from_numpy(perm[start:start + bs])
                for p in params:
                    p.grad = None  # zero_grad(set_to_none=True) without the optimizer hooks
                xb = xt.index_select(0, idx)
                if aug_rng is not None:
                    xb = augment_images(xb, config.augment, config.augment_shift, aug_rng)
                if cosine:
                    _set_lr(opt, cosine_lr(config.lr, step, planned))
                loss = loss_fn(model(xb), yt.index_select(0, idx))
                step += 1
                value = loss.item()
                if not math.isfinite(value):
                    raise DataError(f"training diverged (loss is NaN/Inf) at step {step}; "
                                    "lower the learning rate")
                loss.backward()
                if adjust:
                    self._adjust_grads(params, anchor, mu, corr)
                opt.step()
                total += value * len(idx)
                seen += len(idx)
                if step == limit:
                    return (total, seen), step
        return (total, seen), step

    # ------------------------------------------------------------------------------ DP-SGD
    def _fit_dp(self, xt: torch.Tensor, yt: torch.Tensor, config: TrainConfig, seed: int,
                anchor: list[torch.Tensor] | None,
                corr: list[torch.Tensor] | None) -> FitResult:
        """DP-SGD fit; ``dp`` holds the sample rate, noise multiplier, clip and steps
        (:class:`DpSgdFacts`) so the site's ledger and the hub's report account exactly."""
        from opacus.optimizers import DPOptimizer

        dp = self.dp
        assert dp is not None
        n = len(xt)
        q = dp_sgd_sample_rate(n, config.batch_size)
        base: torch.optim.Optimizer
        if config.optimizer == "sgd":
            base = torch.optim.SGD(self._params, lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
        elif config.optimizer == "adam":
            base = torch.optim.Adam(self._params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            raise ConfigError(f"unknown optimizer {config.optimizer!r}; valid: "
                              f"{', '.join(OPTIMIZERS)}")
        noise_gen = torch.Generator()
        noise_gen.manual_seed(seed if dp.seeded else secrets.randbits(63))
        # Its own secret seed, not derived from the noise's: either stream alone reveals
        # nothing about the other.
        sampler = np.random.default_rng(seed if dp.seeded else secrets.randbits(128))
        opt = DPOptimizer(base, noise_multiplier=dp.noise_multiplier,
                          max_grad_norm=dp.max_grad_norm,
                          expected_batch_size=max(1, round(q * n)), generator=noise_gen)
        self._set_mode(True)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)  # dropout: seeded, caller's RNG untouched
            # Opacus' backward hooks fire on outputs because inputs need no gradient: expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            (total, seen), steps = self._train_dp(xt, yt, config, sampler, q, opt, anchor,
                                                  corr)
        return FitResult(self._export(), num_examples=n, num_steps=steps,
                         metrics={"train_loss": total / seen if seen else 0.0},
                         dp=DpSgdFacts(q, float(dp.noise_multiplier),
                                       float(dp.max_grad_norm), steps))

    def _train_dp(self, xt: torch.Tensor, yt: torch.Tensor, config: TrainConfig,
                  sampler: np.random.Generator, q: float, opt: Any,
                  anchor: list[torch.Tensor] | None,
                  corr: list[torch.Tensor] | None) -> tuple[tuple[float, int], int]:
        """The DP-SGD step loop with Poisson sampling done here, not by a DataLoader.

        Why not ``PrivacyEngine.make_private``: it needs a ``DataLoader`` and wraps the module
        anew on every call, while this learner batches with ``index_select`` and keeps one
        ``GradSampleModule``. The sampling is the one Opacus' ``DPDataLoader`` does: each row
        joins each step independently with probability ``q`` (Poisson, so the accountant's
        amplification holds; batches vary in size and may be empty - an empty step still
        adds noise, as the accountant assumes). The rows are drawn from ``sampler``, secret to
        the site unless the options are ``seeded`` (see :class:`DpSgdOptions`).

        FedProx/SCAFFOLD terms do not depend on the data, so they are added after Opacus has
        clipped and noised (post-processing) and before the underlying optimizer's step.
        """
        gm = self._grad_module
        assert gm is not None
        n, limit = len(xt), dp_sgd_steps(len(xt), config)
        loss_fn, params, mu = self._loss, self._params, config.proximal_mu
        adjust = anchor is not None or corr is not None
        # Augmentation changes each sampled example by itself (a per-example transform), so
        # the per-example clipping, and the accounting, are unchanged; it draws from the
        # sampler's stream, secret like the sampling.
        augment = config.augment != "none"
        total, seen = 0.0, 0
        for step in range(1, limit + 1):
            idx = torch.from_numpy(np.flatnonzero(sampler.random(n) < q))
            opt.zero_grad(set_to_none=True)
            xb = xt.index_select(0, idx)
            if augment and len(idx):
                xb = augment_images(xb, config.augment, config.augment_shift, sampler)
            if config.lr_schedule == "cosine":
                _set_lr(opt.original_optimizer, cosine_lr(config.lr, step - 1, limit))
            loss = loss_fn(gm(xb), yt.index_select(0, idx))
            if len(idx):  # the mean loss of an empty batch is NaN; its gradient is empty
                value = loss.item()
                if not math.isfinite(value):
                    raise DataError(f"training diverged (loss is NaN/Inf) at step {step}; "
                                    "lower the learning rate")
                total += value * len(idx)
                seen += len(idx)
            loss.backward()
            if opt.pre_step():  # clip per example, sum, add noise, scale
                if adjust:
                    self._adjust_grads(params, anchor, mu, corr)
                opt.original_optimizer.step()
        return (total, seen), limit

    @staticmethod
    @torch.no_grad()
    def _adjust_grads(params: list[torch.Tensor], anchor: list[torch.Tensor] | None, mu: float,
                      corr: list[torch.Tensor] | None) -> None:
        grads: list[torch.Tensor] = []
        for p in params:
            if p.grad is None:  # unused in this forward pass: the extra terms still apply
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if anchor is not None:
            torch._foreach_add_(grads, torch._foreach_sub(params, anchor), alpha=mu)
        if corr is not None:
            torch._foreach_add_(grads, corr)  # type: ignore[arg-type]

    # ---------------------------------------------------------------------------- evaluate
    def evaluate(self, parameters: Parameters, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Loss plus accuracy/auc (binary), accuracy (multiclass) or mse/mae (regression)."""
        if len(x) == 0:
            return {}
        return task_metrics(self.task, self.scores(parameters, x), np.asarray(y))

    def scores(self, parameters: Parameters, x: np.ndarray) -> np.ndarray:
        """The model's outputs for rows ``x`` (logits; values for regression), float64
        (n, outputs): what evaluation scores and what a saved model predicts with."""
        self._load(parameters)
        xt = self._x(x)
        self._set_mode(False)
        with torch.inference_mode():
            step = eval_batch_rows(sum(p.numel() for p in self.model.parameters()),
                                   int(np.prod(xt.shape[1:])))
            out = torch.cat([self.model(xt[i:i + step]) for i in range(0, len(xt), step)])
        return out.double().numpy()
