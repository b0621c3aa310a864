"""One file per pruning method; importing this package registers them all."""

from videoqa.worker.pruning.methods import (  # noqa: F401
    csp,
    das,
    fastv,
    full,
    h2o,
    look_m,
    madakv,
    pyramidkv,
    random,
    snapkv,
    streaming_llm,
)
