"""Flow options a recipe sets: retries, timeout, and a webhook notification on failure.

:func:`flow_options` turns ``recipe.execution`` into keyword arguments for
``build_dataset.with_options(...)``; ``eoforge build`` and scheduled deployments use the same.
The failure hook POSTs one JSON document to ``execution.notify_url``::

    {"text": "eoforge build <recipe> failed: <message>", "recipe": ..., "flow_run": ...,
     "flow_run_id": ..., "state": "Failed", "message": ...}

(``text`` is what Slack and Teams incoming webhooks show). A webhook that cannot be reached is
logged (host only: webhook URLs carry tokens) and never hides the build's own failure.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from schemas.recipe import Recipe

__all__ = ["failure_payload", "flow_options", "notify_on_failure"]

logger = logging.getLogger(__name__)

NOTIFY_TIMEOUT_S = 10.0


def failure_payload(recipe_name: str, flow_run: Any, state: Any) -> dict[str, Any]:
    """The JSON document sent for a failed flow run (module docstring)."""
    message = str(getattr(state, "message", "") or "no message")
    return {
        "text": f"eoforge build {recipe_name} failed: {message}",
        "recipe": recipe_name,
        "flow_run": str(getattr(flow_run, "name", "")),
        "flow_run_id": str(getattr(flow_run, "id", "")),
        "state": str(getattr(state, "name", "Failed")),
        "message": message,
    }


def notify_on_failure(url: str, recipe_name: str) -> Callable[[Any, Any, Any], None]:
    """A Prefect ``on_failure`` hook that POSTs :func:`failure_payload` to ``url``."""
    host = urlparse(url).hostname or "?"

    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        body = json.dumps(failure_payload(recipe_name, flow_run, state)).encode()
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=NOTIFY_TIMEOUT_S) as response:
                response.read()
            logger.info("sent the failure notification to %s", host)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", None) or err.__class__.__name__
            logger.warning("could not send the failure notification to %s: %s", host, reason)

    hook.__name__ = "notify_on_failure"
    return hook


def flow_options(recipe: Recipe) -> dict[str, Any]:
    """``with_options`` keyword arguments from ``recipe.execution`` (module docstring)."""
    execution = recipe.execution
    options: dict[str, Any] = {
        "retries": execution.retries,
        "retry_delay_seconds": execution.retry_delay_seconds,
    }
    if execution.timeout_seconds is not None:
        options["timeout_seconds"] = execution.timeout_seconds
    if execution.notify_url is not None:
        options["on_failure"] = [notify_on_failure(execution.notify_url, recipe.name)]
    return options
