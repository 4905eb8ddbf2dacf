"""Time spent compiling, measured apart from the time spent running.

The first call of a jitted function traces, lowers and compiles it; later
calls with the same shapes reuse the program. A wall-clock time of a call
therefore depends on whether some earlier call already paid for the
compilation. :class:`CompileClock` sums JAX's own compilation events
(tracing, lowering to MLIR and the XLA backend compile) that occur while it
is open, so callers can report compile seconds and run seconds apart.
"""

from __future__ import annotations

import threading
import time

_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_lock = threading.Lock()
_total = 0.0
_registered = False


def _listen(event: str, duration: float, **_kwargs) -> None:
    global _total
    if event in _EVENTS:
        with _lock:
            _total += float(duration)


def _register() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        _registered = True
    from jax import monitoring

    monitoring.register_event_duration_secs_listener(_listen)


def compile_seconds_so_far() -> float:
    """Seconds of compilation recorded since the clock was first used."""
    _register()
    with _lock:
        return _total


class CompileClock:
    """Wall seconds of a block, split into compilation and the rest.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> with CompileClock() as clock:
      ...     _ = jax.jit(lambda x: x * 2)(jnp.ones(3))
      >>> clock.compile_seconds > 0 and clock.run_seconds >= 0
      True
    """

    wall_seconds: float = 0.0
    compile_seconds: float = 0.0

    def __enter__(self) -> CompileClock:
        self._compiled = compile_seconds_so_far()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_exc) -> None:
        self.wall_seconds = time.perf_counter() - self._started
        compiled = compile_seconds_so_far() - self._compiled
        # Nested jits can report overlapping events; never exceed the wall.
        self.compile_seconds = min(compiled, self.wall_seconds)

    @property
    def run_seconds(self) -> float:
        """Wall seconds without compilation."""
        return max(self.wall_seconds - self.compile_seconds, 0.0)
