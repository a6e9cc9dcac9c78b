"""Monitoring: Prometheus's configuration for a fedsim deployment, and the scheduler's resource
view read from Prometheus (``promql``)."""
