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

Where the wheel ships it (6.2 on), the *sequence* export of the same network is
used instead (``silero_vad_16k_sequence.onnx``): it scores a block of frames in
one ``run`` with the state carried inside the graph, giving bit-identical
probabilities and states (a test compares them). Each ``run`` has a fixed cost
that dominates a frame's own (measured in the engine: ~0.3 ms for one frame
after the 20-30 ms between a live stream's hand-offs, 0.09 ms in a tight loop),
so scoring a stream's frames a block at a time costs less than one at a time.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

MODEL_FILE = "silero_vad.onnx"
#: The same network exported to score a sequence of frames per call (silero-vad 6.2+).
SEQUENCE_FILE = "silero_vad_16k_sequence.onnx"
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


def _session(path: Path) -> Any:
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
    return session


def load(path: Path | None = None, *, sequence: bool = True) -> SileroModel:
    """The shared model for ``path`` (default: the wheel's); blocking, call on a thread.
    With ``sequence`` (the default), the sequence export beside it when there is one."""
    path = path or model_path()
    seq = path.with_name(SEQUENCE_FILE)
    if sequence and seq.is_file():
        return SileroModel(_session(seq), sequence=True)
    return SileroModel(_session(path), sequence=False)


class SileroState:
    """One stream's recurrent state and the last 64 samples of the frame before (the same
    for both exports: a stream may move from one to the other)."""

    __slots__ = ("context", "state")

    def __init__(self) -> None:
        import numpy as np

        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)


class SileroModel:
    """Scores frames with a shared session (``sequence``: the block-at-a-time export)."""

    def __init__(self, session: Any, *, sequence: bool = False) -> None:
        import numpy as np

        self._np = np
        self._session = session
        self.sequence = sequence
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._scale = np.float32(1 / 32768)

    def probability(self, frame: bytes, state: SileroState) -> float:
        return self.probabilities(frame, state)[0]

    def probabilities(self, frames: bytes, state: SileroState) -> list[float]:
        """One probability per whole frame of ``frames`` (PCM16, ``FRAME_SAMPLES`` each,
        in stream order), updating ``state``."""
        np = self._np
        pcm = np.frombuffer(frames, dtype="<i2")
        n = len(pcm) // FRAME_SAMPLES
        if not n:
            return []
        # Each row: the 64 samples before the frame, then the frame, scaled to [-1, 1) in
        # one pass (int16 -> float32 and a power-of-two scale are exact).
        block = np.empty((n, CONTEXT_SAMPLES + FRAME_SAMPLES), dtype=np.float32)
        np.multiply(pcm[:n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES), self._scale,
                    out=block[:, CONTEXT_SAMPLES:])
        block[0, :CONTEXT_SAMPLES] = state.context
        if n > 1:
            block[1:, :CONTEXT_SAMPLES] = block[:-1, -CONTEXT_SAMPLES:]
        state.context = block[-1, -CONTEXT_SAMPLES:].copy()
        if self.sequence:
            probs, h, c = self._session.run(
                ["speech_probs", "hn", "cn"],
                {"input": block, "h": state.state[:1], "c": state.state[1:]})
            state.state = np.concatenate((h, c))
            return probs.reshape(-1).tolist()  # type: ignore[no-any-return]
        out: list[float] = []
        for row in range(n):
            p, state.state = self._session.run(
                None, {"input": block[row:row + 1], "state": state.state, "sr": self._sr})
            out.append(float(p[0][0]))
        return out
