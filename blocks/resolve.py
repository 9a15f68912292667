"""Open any store URL a user can give: ``s3://``, ``file://``, a local path, or
``block:chronos-store/NAME`` — a saved ChronosStore Prefect block, loaded from the Prefect API (Prefect
and prefect-aws are imported only in that case). Above both :mod:`blocks.store` (the adapters, no
Prefect) and :mod:`blocks.prefect_blocks` (the Block classes, which open their stores through
:func:`blocks.store.open_url`)."""

from __future__ import annotations

import os
from typing import Any

from blocks.store import open_url, store_block_name


def open_store(url: str | os.PathLike, *, check: bool = True, **kwargs: Any):
    """The store ``url`` names (see :func:`blocks.store.open_url` for ``kwargs``); with ``check``
    (default) verified reachable, else a :class:`~chronos_flows.core.errors.StoreError` naming it
    and the fix."""
    name = store_block_name(os.fspath(url))
    if name is not None:
        from blocks.prefect_blocks import load_store_block

        return load_store_block(name).open(check=check)
    return open_url(url, check=check, **kwargs)
