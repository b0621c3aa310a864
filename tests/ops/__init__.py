"""Observability: the Grafana dashboard and Prometheus rules checked with real promtool/Prometheus."""
