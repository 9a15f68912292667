"""The task runner that fans chunks of series out (baseline backtests, batch forecasts): local or Dask."""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from chronos_flows.config.params import ComputeConfig


def chunk_runner(compute: ComputeConfig) -> TaskRunner:
    """The task runner of chunks of series (baseline backtests, batch forecasts): ``local`` runs them one after another (each fits
    its series in the family's process pool), ``dask`` on a Dask cluster via prefect-dask."""
    if compute.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if compute.dask_address:
            return DaskTaskRunner(address=compute.dask_address)
        return DaskTaskRunner(cluster_class=compute.dask_cluster_class or "distributed.LocalCluster",
                              cluster_kwargs=dict(compute.dask_cluster_kwargs))
    return ThreadPoolTaskRunner(max_workers=1)

