"""Model runtime: loading, prompt/position bookkeeping per family, prefill and decode."""

from videoqa.worker.model import tv_shim as _tv_shim  # noqa: F401  (must precede transformers)
