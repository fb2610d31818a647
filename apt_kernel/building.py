"""Building a planned run's components: import the planned plugins, then call each factory in build order
(data, encoders, model, loss, callbacks, trainer), each result checked against its kind's protocol."""

from __future__ import annotations

from typing import Any

from .conformance import shape_problem
from .context import BuildContext
from .errors import OptionError, PluginError, PluginLoadError, UserError
from .kernel import Kernel
from .pipeline import Source
from .planning import SPEC_KEYS, Plan, section


def load_components(kernel: Kernel, plan: Plan) -> None:
    """Import the planned plugins; a failure of one the pipeline needs is the user's error (exit 2)."""
    kernel.load(plan.plugins)
    for name in plan.plugins:
        info = kernel.plugins[name]
        if name not in kernel.loaded:
            raise PluginLoadError(f"plugin {name!r} failed to load: {info.reason}")
    for table, kind, spec in plan.config.components():
        if table not in plan.sandboxed:
            kernel.registration(kind, spec.use, plan.providers[table].name)


def build_component(kernel: Kernel, kind: str, name: str, options: dict, context: BuildContext, source: Source,
                    table: str) -> Any:
    """Call the factory of ``kind`` ``name``; what it raises or returns in the wrong shape is attributed to its
    plugin, an ``OptionError`` located in the pipeline."""
    registration = kernel.registry.get(kind, name)
    factory = registration.factory
    where = f"{kind} factory {name!r}"
    if kernel.profiler is not None:
        factory = kernel.profiler.timed(registration.plugin, f"{kind} factory {name}", factory)
    try:
        component = factory(dict(options), context)
    except OptionError as exc:  # the factory names the key; the pipeline's file and line are ours to add
        raise source.error(exc.table or table, exc.key, exc.detail) from None
    except UserError:
        raise
    except Exception as exc:
        raise PluginError(registration.plugin, where, exc) from exc
    problem = shape_problem(kind, component)
    if problem is not None:  # now, not as an AttributeError at the first step of training
        raise PluginError(registration.plugin, where, TypeError(problem))
    return component


def build_components(kernel: Kernel, plan: Plan, context: BuildContext, boxes: list[Any]) -> None:
    """Build every component into ``context``; the stand-ins of sandboxed callbacks are appended to ``boxes``
    as they start, for the caller to close whatever happens."""
    for table, kind, spec in plan.config.components():
        options = {k: v for k, v in section(plan.data, table).items() if k not in SPEC_KEYS}
        if table in plan.sandboxed:
            from .sandbox.callback import SandboxedCallback

            info = plan.providers[table]
            needs = tuple(kernel.plugins[d] for d in info.manifest.requires if d in kernel.plugins)
            built = SandboxedCallback(info, spec.use, options, plan.limits[table], context, needs)
            boxes.append(built)
        else:
            built = build_component(kernel, kind, spec.use, options, context, plan.source, table)
        if kind == "encoder":
            context.encoders[table.split(".", 1)[1]] = built
        elif kind == "callback":
            context.callbacks.add(built, plan.providers[table].name, spec.use)
        else:
            setattr(context, kind, built)


def watch_for_profile(kernel: Kernel, plan: Plan, context: BuildContext) -> None:
    """With --profile: time the model's forward, the loss and the data (callbacks and hooks are timed
    where they are dispatched). Wrappers and torch's module hooks only: no plugin object is patched."""
    profiler = kernel.profiler
    owner = {kind: kernel.registry.get(kind, spec.use).plugin for table, kind, spec in plan.config.components()
             if table in ("model", "data", "loss")}
    profiler.watch_model(context.model, owner["model"], plan.config.model.use)
    context.data = profiler.timed_data(context.data, owner["data"], plan.config.data.use)
    context.loss = profiler.timed(owner["loss"], f"loss {plan.config.loss.use}", context.loss)
