"""The compliance DAG, its compiler entry point, the local runner and the `unlearn pipeline` commands."""
