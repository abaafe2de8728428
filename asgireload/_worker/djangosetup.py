"""Django's app registry in a project layer: seen in the worker, set up in the layer, checked after.

A Django project's models cannot be imported before `django.setup()` has populated the app
registry, which the app's module runs (`get_asgi_application()`). So a worker notes, after the
app's import, whether that import set Django up (`after_import`): the settings module as the
app saw it, the environment variables the app's import set (`os.environ.setdefault(
"DJANGO_SETTINGS_MODULE", ...)`: the settings may read others), and the project modules that
ran while the registry was populating (app packages, `apps.py`, models, admin, what `ready()`
imported). A layer whose plan holds all of those runs `django.setup()` itself with those
variables set (`set_up_in_layer`, the variables taken back afterwards, as a fresh process has
them before the app's module runs), so the registry, the models and the installed apps' models
are inherited. In a worker forked from it, the app's own `django.setup()` finds the registry
ready and registers nothing twice; if the app's import set other variables than those the layer
used (the app's module was edited to name another settings module, say), the layer's settings
would not be the app's: `seen` says so and the load fails rather than serve them.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from .._protocol import Failure, Files

if TYPE_CHECKING:
    from .imports import ImportGraphRecorder

SETTINGS_VARIABLE = "DJANGO_SETTINGS_MODULE"
DjangoPlan = tuple[str, dict[str, str]]  # the settings module, the variables the app's import set


def populating() -> bool:
    """Whether Django's app registry is being populated right now (a module running is one
    `django.setup()` imports: an app, its models, what a `ready()` imports)."""
    registry = sys.modules.get("django.apps.registry")
    apps = getattr(registry, "apps", None)
    return bool(getattr(apps, "loading", False)) and not getattr(apps, "ready", True)


def after_import(
    env_before: dict[str, str], env_at_settings: dict[str, str] | None
) -> tuple[str, dict[str, str]] | None:
    """The settings module and the variables the app's import had set when the settings module
    ran (not those Django's settings set, such as TZ), if that import set Django up."""
    registry = sys.modules.get("django.apps.registry")
    conf = sys.modules.get("django.conf")
    if registry is None or conf is None or not getattr(registry.apps, "ready", False):
        return None
    settings: Any = conf.settings
    if not settings.configured:
        return None
    name = getattr(settings, "SETTINGS_MODULE", None)  # None: settings.configure() was used
    if not isinstance(name, str) or not name:
        return None
    return name, env_set_since(env_before, env_at_settings)


def env_set_since(before: dict[str, str], now: dict[str, str] | None = None) -> dict[str, str]:
    """The variables set or changed since `before` (a variable taken out is not carried)."""
    return {key: value for key, value in (now or os.environ).items() if before.get(key) != value}


def set_up_in_layer(env: dict[str, str]) -> None:
    """`django.setup()` as the app's import ran it, with the variables it had set; they are
    taken back afterwards (the app's module sets them again in each worker); what Django's
    settings set themselves (TZ) stays, as in a fresh process once the app set Django up."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        importlib.import_module("django").setup(set_prefix=False)  # as get_asgi_application() calls it
    finally:
        for key, value in saved.items():
            if os.environ.get(key) != env[key]:
                continue  # Django set it itself
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def seen(
    env_before: dict[str, str], env_at_settings: dict[str, str] | None, layer: DjangoPlan | None
) -> tuple[str, dict[str, str], Failure | None] | None:
    """After the app's import: how it set Django up (None: it did not), and in a worker forked from
    a layer that set Django up, a Failure if the app's import set the layer's variables otherwise
    (its settings would not be the app's). What is said then is what the app set now."""
    if layer is None:
        setup = after_import(env_before, env_at_settings)
        return None if setup is None else (*setup, None)
    settings, layer_env = layer
    now = env_set_since(env_before)
    env = {key: now.get(key, "") for key in layer_env}
    changed = sorted(key for key, value in layer_env.items() if env[key] != value)
    if not changed:
        return settings, env, None
    summary = (
        f"the project layer set Django up with {settings} and {', '.join(changed)} as they were; "
        "the app's import now sets them otherwise"
    )
    return settings, env, Failure("stale-layer", summary)  # loaded again in a fresh worker


def report(env_before: dict[str, str], graph: ImportGraphRecorder) -> tuple[Files | None, Failure | None]:
    """After the app's import: the message that says how it set Django up (None: it did not), and
    the failure of a worker whose project layer set Django up otherwise than its app asks."""
    layered = getattr(sys.modules.get("asgireload._worker.layer"), "INHERITED", None)
    found = seen(env_before, graph.env_at_settings, layered.django if layered is not None else None)
    if found is None:
        return None, None
    settings, env, failure = found
    said = Files(
        (), django_settings=settings, django_env=tuple(env.items()), django_setup=tuple(graph.django_setup)
    )
    return said, failure
