"""Example workloads that run on fabric: DAG YAMLs under `jobs/dags` and the node code they name."""
