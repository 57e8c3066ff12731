"""The SandboxPool the sandbox test modules share: one per module, on the module's Ray cluster."""
import contextlib

from sandbox_workers import SandboxPool


@contextlib.contextmanager
def module_pool(name_prefix: str, **options):
    """A pool named `<name_prefix>-<i>`: one worker, 256 MiB, tests run whatever the format (the evaluation
    rule), unless `options` say otherwise; shut down on exit."""
    pool = SandboxPool(name_prefix=name_prefix, **{"num_workers": 1, "memory_mb": 256, "require_format": False,
                                                   **options})
    try:
        yield pool
    finally:
        pool.shutdown()
