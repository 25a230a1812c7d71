"""Prefect layer: the root config, task wrappers, flows, deployments and the `mtl` CLI. No ML logic."""
