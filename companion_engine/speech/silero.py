"""Silero VAD through ONNX Runtime directly: the model file of the ``silero-vad`` wheel, no torch.

The wheel declares torch as a dependency, but its ONNX model needs none of it, so
it is installed with ``pip install --no-deps silero-vad`` (``make`` does) and only
its data file is read: the package itself is never imported (its ``__init__``
imports torch). One ``InferenceSession`` per model file serves the whole process
(``run`` is thread-safe; the recurrent state travels with each call), so a hot
reload or a second profile loads nothing again.

The model scores 512 samples at 16 kHz with 64 samples of context from the frame
before, and carries a ``(2, 1, 128)`` state from frame to frame, exactly as the
wheel's own ``OnnxWrapper`` does.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

MODEL_FILE = "silero_vad.onnx"
FRAME_SAMPLES = 512
CONTEXT_SAMPLES = 64
SAMPLE_RATE = 16000

INSTALL_HINT = ("install it without torch: pip install --no-deps silero-vad "
                "(and onnxruntime, numpy: pip install 'companion-engine[talk]')")


class SileroUnavailable(RuntimeError):
    """The model file or ONNX Runtime is missing."""


def model_path() -> Path:
    """The ONNX model inside the installed ``silero-vad`` wheel (without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise SileroUnavailable(f"the silero-vad wheel is not installed; {INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / MODEL_FILE
        if path.is_file():
            return path
    raise SileroUnavailable(f"silero-vad is installed but has no data/{MODEL_FILE}")


def check_available() -> Path:
    """The model file, once ONNX Runtime and numpy are known to be installed (found, not
    imported: they cost ~40 MB, paid when the first frame is scored)."""
    path = model_path()
    for module in ("numpy", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise SileroUnavailable(f"{module} is not installed; {INSTALL_HINT}")
    return path


_SESSIONS: dict[Path, Any] = {}
_LOCK = threading.Lock()


def load(path: Path | None = None) -> SileroModel:
    """The shared model for ``path`` (default: the wheel's); blocking, call on a thread."""
    path = path or model_path()
    with _LOCK:
        session = _SESSIONS.get(path)
        if session is None:
            try:
                import numpy  # noqa: F401
                import onnxruntime as ort
            except ImportError as exc:
                raise SileroUnavailable(f"{exc.name} is not installed; {INSTALL_HINT}") from None
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(path), sess_options=opts,
                                           providers=["CPUExecutionProvider"])
            _SESSIONS[path] = session
    return SileroModel(session)


class SileroState:
    """One stream's recurrent state and the last 64 samples of the frame before."""

    __slots__ = ("context", "state")

    def __init__(self) -> None:
        import numpy as np

        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32)


class SileroModel:
    """Scores frames with a shared session."""

    def __init__(self, session: Any) -> None:
        import numpy as np

        self._np = np
        self._session = session
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def probability(self, frame: bytes, state: SileroState) -> float:
        np = self._np
        x = np.frombuffer(frame, dtype="<i2").astype(np.float32)[None, :] / 32768.0
        inp = np.concatenate([state.context, x], axis=1)
        out, state.state = self._session.run(
            None, {"input": inp, "state": state.state, "sr": self._sr})
        state.context = inp[:, -CONTEXT_SAMPLES:]
        return float(out[0][0])
