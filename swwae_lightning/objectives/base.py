"""The training objective: L = L_NLL + sum over registered terms of weight * term.

A term is one class registered with ``@TERMS.register``. It names its weight setting (0
switches it off), its own options, and what it ``needs`` from a training step: the decoder,
the unlabeled batch, extra views of that batch, the EMA teacher, or the network's one-vs-all
heads. ``Objective`` computes only what the active terms need, in as few forward passes as it
can, and is the one loss code used by the LightningModule, the benchmark's plain loop and the
tests. A term may also say which unlabeled rows the other terms train on (``unlabeled_rows``):
an image judged to be of no known class then pulls no class toward it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import settings as S
from ..network import StackedWhatWhere, SWWAEOutput
from ..registry import Registry

# What a term may need from a step. The views are drawn by the data path only when needed.
DECODER, UNLABELED, TEACHER, OPEN_SET = "decoder", "unlabeled", "teacher", "open_set"
VIEWS = ("strong", "second")  # a strongly augmented view, a second weakly augmented view
NEEDS = (DECODER, UNLABELED, TEACHER, OPEN_SET, *VIEWS)


BATCH_PARTS = ("labeled", "unlabeled", *VIEWS)  # what ``StepContext.logits`` can give


class TermContractError(ValueError):
    """A term read from a step something it did not declare: the message names the term and the declaration."""


class LossTerm:
    """One weighted term of the objective: everything the module, the report and the benchmark read
    from a term is declared here. ``options`` holds the values of its ``settings``."""

    name: ClassVar[str]
    """Its name: logged as ``train/<name>``, shown in the report's tables."""
    weight: ClassVar[S.Setting]
    """Its weight setting (``lambda_<name>``); 0 switches the term off and costs nothing."""
    settings: ClassVar[tuple[S.Setting, ...]] = ()
    """Its own options, which become flags and config keys like every other setting."""
    needs: ClassVar[frozenset[str]] = frozenset()
    """What it needs from a step, of ``NEEDS``: "decoder" (``step.output``; the report then shows the
    pooling and unpooling), "unlabeled", the views "strong" / "second", "teacher" (``step.teacher_logits``),
    "open_set" (the network is built with one-vs-all heads; ``step.open_set_logits``)."""
    logits_for: ClassVar[tuple[str, ...]] = ()
    """The batch parts whose student logits it reads with ``step.logits`` ("labeled" is always there)."""
    validation_metrics: ClassVar[tuple[str, ...]] = ()
    """Metrics it adds to every validation, logged as ``val/<name>_<metric>`` (see ``validation_counts``)."""

    def __init__(self, **options):
        own = {s.name: s for s in self.settings}
        unknown = sorted(set(options) - set(own))
        if unknown:
            raise ValueError(f"loss term {self.name!r} got unknown option(s) {unknown}; it takes {sorted(own)}")
        values = S.check_all({**{n: s.default for n, s in own.items()}, **options}, style="python")
        self.options = {name: values[name] for name in own}

    def __call__(self, step: "StepContext") -> Tensor:
        """The term's value for one training step (a scalar; its weight is applied by ``Objective``)."""
        raise NotImplementedError

    def weight_scale(self, progress: float) -> float:
        """What multiplies the term's weight at ``progress`` (0: the first step, 1: the end of training)."""
        return 1.0

    def unlabeled_rows(self, step: "StepContext") -> Tensor | None:
        """Which rows of the unlabeled batch the other terms may train on (a boolean mask), or None: all.
        Asked before any other term runs, with every row in view."""
        return None

    def validation_counts(self, logits: Tensor, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """For each of ``validation_metrics``, (value, weight) on one validation batch; the logged value is the
        weighted mean over the validation set."""
        return {}

    @classmethod
    def uses_decoder(cls) -> bool:
        return DECODER in cls.needs


def _register_term(name: str, cls: type[LossTerm]) -> None:
    unknown = set(cls.needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"loss term {name!r} needs {sorted(unknown)}; a term may need {list(NEEDS)}")
    parts = set(cls.logits_for) - set(BATCH_PARTS)
    if parts:
        raise ValueError(
            f"loss term {name!r} declares logits_for {sorted(parts)}; a step has logits of {list(BATCH_PARTS)}"
        )
    undrawn = [p for p in cls.logits_for if p in VIEWS and p not in cls.needs]
    if undrawn:
        raise ValueError(
            f"loss term {name!r} reads the logits of the view(s) {undrawn} without needing them: "
            f"add them to its needs, or they are never drawn"
        )
    owned = lambda s: dataclasses.replace(s, group="objectives")  # noqa: E731
    cls.weight = owned(cls.weight)
    cls.settings = tuple(owned(s) for s in cls.settings)
    S.declare(cls.weight, *cls.settings)


TERMS: Registry[type[LossTerm]] = Registry("loss term", on_register=_register_term)


def objective_settings() -> list[str]:
    return S.names_in(["objectives"])


def active_terms(cfg: dict) -> list[type[LossTerm]]:
    """The registered terms whose weight in ``cfg`` is positive (defaults where ``cfg`` is silent)."""
    return [t for t in TERMS if cfg.get(t.weight.name, t.weight.default) > 0]


def is_baseline(cfg: dict) -> bool:
    """The supervised-only baseline: no term besides the NLL is switched on."""
    return not active_terms(cfg)


def needs_of(cfg: dict) -> set[str]:
    return {need for term in active_terms(cfg) for need in term.needs}


def views_needed(cfg: dict) -> tuple[str, ...]:
    """The extra views of the unlabeled batch the data path must draw for these settings."""
    needs = needs_of(cfg)
    return tuple(v for v in VIEWS if v in needs)


@dataclass
class LossParts:
    """The total, each term's value (for the logs and the NaN guard) and extra metrics."""

    total: Tensor
    terms: dict[str, Tensor]
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def parts(self) -> dict[str, Tensor]:
        return {"loss": self.total, **self.terms}


class StepContext:
    """One training step's inputs and the forward passes the active terms ask for, each run once.

    ``labeled`` is (images, labels) or None, ``unlabeled`` the weakly augmented unlabeled
    images or None, ``views`` the extra views by name, ``teacher`` the EMA teacher or None.
    """

    def __init__(
        self,
        net: StackedWhatWhere,
        labeled: tuple[Tensor, Tensor] | None,
        unlabeled: Tensor | None,
        views: dict[str, Tensor],
        teacher: nn.Module | None,
        decoder: bool,
        logits_for: set[str],
    ):
        self.net, self.teacher, self._views = net, teacher, views
        self.labeled_images, self.labels = labeled if labeled is not None else (None, None)
        self._unlabeled = unlabeled
        self.decoder = decoder
        self._logits_for = logits_for
        self.metrics: dict[str, Tensor] = {}
        self.asking: LossTerm | None = None  # the term being computed: what it reads must be declared
        self.kept: Tensor | None = None  # the unlabeled rows the terms see (indices); None: all

    def keep_unlabeled(self, rows: Tensor) -> None:
        """From now on the terms see only these unlabeled rows (a boolean mask over the batch) and their views."""
        self.kept = rows.nonzero().squeeze(1)

    def _rows(self, name: str, batch: Tensor) -> Tensor:
        return batch if self.kept is None or name == "labeled" else batch.index_select(0, self.kept)

    def _require(self, need: str, what: str) -> None:
        if self.asking is not None and need not in self.asking.needs:
            raise TermContractError(
                f"loss term {self.asking.name!r} reads {what} but does not declare it: add {need!r} to its needs"
            )

    @property
    def views(self) -> dict[str, Tensor]:
        """The extra views drawn for this step; a term reads only those in its ``needs``."""
        return {
            name: self._rows(name, view)
            for name, view in self._views.items()
            if self.asking is None or name in self.asking.needs
        }

    @property
    def unlabeled(self) -> Tensor | None:
        """The weakly augmented unlabeled images (the kept rows)."""
        return None if self._unlabeled is None else self._rows("unlabeled", self._unlabeled)

    @property
    def num_labeled(self) -> int:
        return 0 if self.labels is None else self.labels.shape[0]

    @cached_property
    def inputs(self) -> Tensor:
        """The labeled rows followed by the unlabeled ones: what the decoder reconstructs."""
        parts = [t for t in (self.labeled_images, self._unlabeled) if t is not None]
        if not parts:
            raise ValueError("a training step needs a labeled or an unlabeled batch")
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    @property
    def output(self) -> SWWAEOutput:
        """The full forward pass (encoder, classifier, decoder) over ``inputs``, for terms that need "decoder"."""
        self._require(DECODER, "step.output (the decoder's pass)")
        return self._output

    @cached_property
    def _output(self) -> SWWAEOutput:
        return self.net(self.inputs, self.labels)

    @cached_property
    def _encoded(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        """Student logits (and one-vs-all logits, where the network has the heads) of every batch part a
        term asked for, of every row, in one encoder pass where possible."""
        parts: dict[str, tuple[Tensor, Tensor | None]] = {}

        def split(encoded: tuple[Tensor, Tensor | None], names: list[str], sizes: list[int]) -> None:
            logits, open_set = encoded
            chunks = zip(logits.split(sizes), open_set.split(sizes) if open_set is not None else [None] * len(sizes))
            parts.update(zip(names, chunks))

        if self.decoder:
            output = self._output
            names = [n for n, t in (("labeled", self.labeled_images), ("unlabeled", self._unlabeled)) if t is not None]
            split((output.logits, output.open_set_logits), names, [len(self._images(n, every_row=True)) for n in names])
            wanted = [v for v in VIEWS if v in self._logits_for]
        else:
            wanted = [name for name in ("labeled", "unlabeled", *VIEWS) if name in self._logits_for]
        batches = [self._images(name, every_row=True) for name in wanted]
        if batches:
            images = torch.cat(batches) if len(batches) > 1 else batches[0]
            encoded = self.net.encode_open(images) if self.net.open_set is not None else (self.net.encode(images), None)
            split(encoded, wanted, [len(b) for b in batches])
        return parts

    def _images(self, name: str, every_row: bool = False) -> Tensor:
        images = {"labeled": self.labeled_images, "unlabeled": self._unlabeled, **self._views}.get(name)
        if images is None:
            raise ValueError(f"this step has no {name!r} batch (mode or views do not provide it)")
        return images if every_row else self._rows(name, images)

    def logits(self, name: str) -> Tensor:
        """Student logits of 'labeled', 'unlabeled' or a view; a term reads those in its ``logits_for``."""
        if self.asking is not None and name != "labeled" and name not in self.asking.logits_for:
            raise TermContractError(
                f"loss term {self.asking.name!r} reads step.logits({name!r}) but does not "
                f"declare it: add {name!r} to its logits_for"
            )
        if name not in self._encoded:
            raise ValueError(f"this step has no logits of {name!r} (mode or views do not provide it)")
        return self._rows(name, self._encoded[name][0])

    def open_set_logits(self, name: str) -> Tensor:
        """The one-vs-all heads' (N, 2, classes) logits of a batch part in ``logits_for``: [:, 1] says "of the
        class", [:, 0] "not of it"."""
        self._require(OPEN_SET, "step.open_set_logits (the one-vs-all heads)")
        self.logits(name)  # the same checks
        open_set = self._encoded[name][1]
        if open_set is None:
            raise ValueError("this network has no one-vs-all heads (build it with open_set_heads=True)")
        return self._rows(name, open_set)

    @torch.no_grad()
    def teacher_logits(self, name: str) -> Tensor:
        """The EMA teacher's logits (eval mode: running BN statistics, no dropout) of a batch part."""
        self._require(TEACHER, "step.teacher_logits (the EMA teacher)")
        if self.teacher is None:
            raise ValueError("this step has no EMA teacher")
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            return self.teacher.module.encode(self._images(name))
        finally:
            self.teacher.train(was_training)


class Objective:
    """NLL on the labeled rows plus each term times its weight: ``Objective({VirtualAdversarial(vat_epsilon=6.0):
    1.0, EntropyMinimization(): 1.0})``; ``Objective()`` is the NLL alone. ``from_settings`` builds every
    registered term from flat settings (flags, a config file, a checkpoint's hyper-parameters).

    Terms with weight 0 are left out, except those whose needs the step meets anyway (the
    reconstruction terms when the decoder runs): they are reported, detached, so a run
    logs what it would cost without training on it.
    """

    def __init__(self, weights: Mapping[LossTerm, float] | None = None):
        given = dict(weights or {})
        for term, weight in given.items():
            S.check_all({type(term).weight.name: weight}, style="python")
        rank = {t.name: i for i, t in enumerate(TERMS)}  # the registry's order: the sum's order
        ordered = sorted(given, key=lambda term: rank.get(term.name, len(rank)))
        if len({term.name for term in ordered}) < len(ordered):
            raise ValueError(f"Objective got one term twice: {[term.name for term in ordered]}")
        self.terms = {term.name: term for term in ordered}
        self.weights = {term.name: float(given[term]) for term in ordered}
        self.needs = {need for name, term in self.terms.items() if self.weights[name] > 0 for need in term.needs}
        self.uses_decoder = DECODER in self.needs
        free = {DECODER} if self.uses_decoder else set()
        self.computed = [
            name for name, term in self.terms.items() if self.weights[name] > 0 or (term.needs and term.needs <= free)
        ]
        self.logits_for = {"labeled"} | {n for name in self.computed for n in self.terms[name].logits_for}

    @classmethod
    def from_settings(cls, **settings) -> "Objective":
        """Every registered term, weighted and configured by its settings (defaults where ``settings`` is silent)."""
        values = S.complete(settings, objective_settings(), "Objective")
        return cls({t(**{s.name: values[s.name] for s in t.settings}): values[t.weight.name] for t in TERMS})

    def settings(self) -> dict:
        """The flat settings that rebuild it with ``from_settings``: a registered term it lacks has weight 0."""
        values = {}
        for t in TERMS:
            term = self.terms.get(t.name)
            values[t.weight.name] = self.weights[t.name] if term is not None else 0.0
            values.update(term.options if term is not None else {s.name: s.default for s in t.settings})
        return values

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(v for v in VIEWS if v in self.needs)

    @property
    def needs_teacher(self) -> bool:
        return TEACHER in self.needs

    @property
    def needs_open_set(self) -> bool:
        """The network must be built with one-vs-all heads."""
        return OPEN_SET in self.needs

    def context(self, net: StackedWhatWhere, batch: dict, teacher: nn.Module | None = None) -> StepContext:
        labeled, unlabeled = batch.get("labeled"), batch.get("unlabeled")
        if labeled is None and not self.uses_decoder:
            raise ValueError("no reconstruction term and no labeled data leaves nothing to train")
        logits_for = self.logits_for if labeled is not None else self.logits_for - {"labeled"}
        return StepContext(net, labeled, unlabeled, batch.get("views", {}), teacher, self.uses_decoder, logits_for)

    def __call__(
        self, net: StackedWhatWhere, batch: dict, teacher: nn.Module | None = None, progress: float = 1.0
    ) -> LossParts:
        """The loss of one batch ``{"labeled": (x, y), "unlabeled": x, "views": {...}}`` (parts may be absent),
        ``progress`` of the way through training (the share of optimizer steps done; terms may warm up on it)."""
        step = self.context(net, batch, teacher)
        if step.labels is not None and step.num_labeled > 0:
            nll = F.cross_entropy(step.logits("labeled").float(), step.labels)
        else:
            nll = (step.output.reconstruction if self.uses_decoder else step.inputs).new_zeros((), dtype=torch.float32)
        total, values = nll, {"nll": nll}
        gating = [n for n in self.computed if type(self.terms[n]).unlabeled_rows is not LossTerm.unlabeled_rows]
        others = [n for n in self.computed if n not in gating]
        for name in gating + others:  # the gates see every row, the others the rows the gates keep
            if gating and others and name == others[0]:
                self._keep_unlabeled(step, gating)
            step.asking = self.terms[name]
            if step.kept is not None and not len(step.kept) and UNLABELED in self.terms[name].needs:
                value = nll.new_zeros(())  # no unlabeled row left to train on
            else:
                value = self.terms[name](step)
            step.asking = None
            weight = self.weights[name] * self.terms[name].weight_scale(progress)
            value = value if weight else value.detach()  # a zero weight reports its term but sends no gradient
            values[name] = value
            total = total + weight * value
        return LossParts(total, values, step.metrics)

    def _keep_unlabeled(self, step: StepContext, gating: list[str]) -> None:
        """Restrict the step's unlabeled rows to those every gating term keeps."""
        rows = None
        for name in gating:
            step.asking = self.terms[name]
            mask = self.terms[name].unlabeled_rows(step)
            rows = rows if mask is None else mask if rows is None else rows & mask
        step.asking = None
        if rows is not None:
            step.keep_unlabeled(rows)
            step.metrics["unlabeled_kept"] = rows.float().mean()
