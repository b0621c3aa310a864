"""One file per pruning method; importing this package registers them all."""

from videoqa.worker.pruning.methods import (  # noqa: F401
    csp,
    das,
    fastv,
    full,
    h2o,
    hae,
    look_m,
    madakv,
    pyramidkv,
    random,
    retentive_kv,
    snapkv,
    streaming_llm,
)
