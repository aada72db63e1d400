"""A Piper voice's graph cut into parts, built once per model file and cached on disk.

A Piper (VITS) ``.onnx`` voice is one graph: text encoder and stochastic
duration predictor (``pre``: phoneme ids -> the prior ``z_p`` over ``T``
latent frames, the frame mask and how many frames each id lasts), the flow
(``z_p`` -> latent, convolutional) and the HiFi-GAN decoder (latent -> audio,
256 samples per frame, convolutional). Cut at those two points, the flow and
the decoder can run on windows of frames with context on both sides and give
the whole graph's samples: the first part of a sentence is ready after
``pre`` and one small window (chunked audio), and a sentence's two halves can
run on two cores at once.

Cutting needs the ``onnx`` tools (0.8 s of imports, a second of graph work,
all of it holding the GIL), so it never runs in the server process: on a cache
miss ``python -m companion_engine.speech.piper_graph MODEL OUT`` builds the
parts in a child process; later starts only load them with ONNX Runtime.

The cache lives in ``$COMPANION_CACHE_DIR`` (else ``$XDG_CACHE_HOME`` or
``~/.cache``, then ``companion-engine/piper``), one folder per model version:
``<voice id>-<key>`` where the key hashes the model's resolved path, size and
modification time and this module's ``FORMAT``, so a changed model (or a new
cut) is built again and the old folder removed. A folder is written under a
temporary name and renamed into place, so readers never see half of one;
anything unreadable in it (garbage, a truncated file) is removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

#: Bump when the cut or the layout of a cache folder changes.
FORMAT = 2
META = "split.json"
#: How long the child process may take to cut a voice.
BUILD_TIMEOUT_S = 300


class GraphError(RuntimeError):
    """The cut could not be built or read."""


@dataclass(frozen=True, slots=True)
class SplitGraph:
    """Where a voice's parts are and which tensors join them (``None`` parts: run whole)."""

    folder: Path
    #: Phoneme ids -> ``pre_outputs`` (None: the graph could not be cut; run the model whole).
    pre: Path | None
    pre_outputs: tuple[str, ...]
    #: Per-id frame counts (one of ``pre_outputs``).
    durations: str
    #: ``flow_inputs`` -> ``latent`` (None: ``latent`` is one of ``pre_outputs``).
    flow: Path | None
    flow_inputs: tuple[str, ...]
    latent: str
    #: ``latent`` + ``decoder_extra`` (a speaker embedding) -> audio.
    decoder: Path | None
    decoder_extra: tuple[str, ...]

    @property
    def split(self) -> bool:
        return self.pre is not None and self.decoder is not None


def cache_root() -> Path:
    """The folder cut voices are kept in."""
    explicit = os.environ.get("COMPANION_CACHE_DIR")
    if explicit:
        return Path(explicit) / "piper"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "companion-engine" / "piper"


def usable_root(root: Path) -> Path:
    """``root``, created if need be; when it cannot be (a read-only home), a folder in the
    system's temporary directory instead (cut again after a reboot, but still cut)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(dir=root, prefix=".probe-"))
        probe.rmdir()
        return root
    except OSError as exc:
        user = os.getuid() if hasattr(os, "getuid") else os.getpid()
        fallback = Path(tempfile.gettempdir()) / f"companion-engine-{user}" / "piper"
        logger.warning("Piper voice cache {} is not writable ({}); using {}", root, exc,
                       fallback)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def cache_key(model: Path) -> str:
    """Names one version of one model file (path, size, mtime) and of the cut."""
    st = model.stat()
    raw = f"{FORMAT}\0{model.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def voice_folder(model: Path, root: Path | None = None) -> Path:
    name = model.name.removesuffix(".onnx")
    return (root or cache_root()) / f"{name}-{cache_key(model)}"


def read_split(folder: Path) -> SplitGraph:
    """The cut in ``folder``; raises ``GraphError`` when anything in it is missing or wrong."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise GraphError(f"{folder / META}: not a format {FORMAT} cut")

        def part(key: str) -> Path | None:
            name = meta[key]
            if name is None:
                return None
            if not isinstance(name, str) or "/" in name or not (folder / name).is_file():
                raise GraphError(f"{folder}: part {key!r} is missing")
            return folder / name

        def names(key: str) -> tuple[str, ...]:
            value = meta[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise GraphError(f"{folder / META}: {key!r} is not a list of names")
            return tuple(value)

        graph = SplitGraph(folder=folder, pre=part("pre"), pre_outputs=names("pre_outputs"),
                           durations=str(meta["durations"]), flow=part("flow"),
                           flow_inputs=names("flow_inputs"), latent=str(meta["latent"]),
                           decoder=part("decoder"), decoder_extra=names("decoder_extra"))
    except GraphError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GraphError(f"{folder}: unreadable cut ({type(exc).__name__}: {exc})") from None
    if graph.split and graph.flow is None and graph.latent not in graph.pre_outputs:
        raise GraphError(f"{folder / META}: the latent comes from nowhere")
    return graph


def cached_split(model: Path, root: Path | None = None) -> tuple[SplitGraph, bool]:
    """The cut of ``model`` and whether it was built now (blocking: call in a thread).

    A readable cut in the cache is used as it is; a missing or broken one is built in a
    child process. Raises ``GraphError`` when the child fails."""
    folder = voice_folder(model, usable_root(root or cache_root()))
    if folder.exists():
        try:
            return read_split(folder), False
        except GraphError as exc:
            logger.warning("Piper voice cache: {}; building it again", exc)
            shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        cmd = [sys.executable, "-m", "companion_engine.speech.piper_graph", str(model), str(tmp)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                              check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise GraphError(f"cutting {model.name} failed: {tail[0]}")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process put it there first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(folder, model.resolve())
        return read_split(folder), True
    except subprocess.TimeoutExpired:
        raise GraphError(f"cutting {model.name} took over {BUILD_TIMEOUT_S} s") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _prune(keep: Path, model: Path) -> None:
    """Remove older cuts of the same model file (it changed); cuts of other files with the
    same name (another install's copy of the voice) are left alone."""
    stem = keep.name.rsplit("-", 1)[0]
    for other in keep.parent.glob(f"{stem}-*"):
        if other == keep or not other.is_dir():
            continue
        try:
            meta = json.loads((other / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours to judge (or being written)
        if isinstance(meta, dict) and meta.get("model") == str(model):
            shutil.rmtree(other, ignore_errors=True)


# --- the cut itself (runs in the child process) ---------------------------------------------


def _external_inputs(nodes: list[Any], constants: set[str]) -> list[str]:
    produced = {o for n in nodes for o in n.output}
    out: list[str] = []
    for n in nodes:
        for name in n.input:
            if name and name not in produced and name not in constants and name not in out:
                out.append(name)
    return out


def split_points(model: Any) -> dict[str, Any] | None:
    """Tensor names to cut a Piper VITS graph at, or None when it does not look like one:
    ``latent`` (the decoder's input), ``decoder_extra``, ``durations``, ``audio``, and
    ``flow_inputs`` (empty when the flow cannot be cut off on its own)."""
    g = model.graph
    constants = {i.name for i in g.initializer} | {
        o for n in g.node if n.op_type == "Constant" for o in n.output}
    dec_nodes = [n for n in g.node if n.name.startswith("/dec/")]
    ceil = [o for n in g.node if n.op_type == "Ceil" for o in n.output]
    if not dec_nodes or len(ceil) != 1:
        return None
    external = _external_inputs(dec_nodes, constants)
    produced = {o for n in dec_nodes for o in n.output}
    audio = {name for n in g.node if not n.name.startswith("/dec/") for name in n.input
             if name in produced}
    if not external or len(audio) != 1:
        return None
    conv_pre = next((n for n in dec_nodes if n.name.startswith("/dec/conv_pre")), None)
    latent = conv_pre.input[0] if conv_pre is not None else external[0]
    if latent not in external:
        return None
    # The flow's inputs: what its named nodes read from named nodes outside it (its unnamed
    # helper nodes, the WaveNet gates, are inside it). Checked numerically by the caller.
    flow_nodes = [n for n in g.node if n.name.startswith("/flow/")]
    by_output = {o: n for n in g.node for o in n.output}
    flow_inputs = [name for name in _external_inputs(flow_nodes, constants)
                   if name in by_output and by_output[name].name.startswith("/")
                   and not by_output[name].name.startswith("/flow/")]
    return {"latent": latent, "decoder_extra": [x for x in external if x != latent],
            "durations": ceil[0], "audio": audio.pop(), "flow_inputs": flow_inputs}


def build(model_path: Path, out: Path) -> dict[str, Any]:
    """Cut ``model_path`` into ``out`` (pre/flow/decoder ``.onnx`` and ``split.json``); a
    cut that does not reproduce the whole graph's audio falls back to a coarser one."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    meta: dict[str, Any] = {"format": FORMAT, "model": str(model_path.resolve()), "pre": None,
                            "pre_outputs": [], "durations": "", "flow": None,
                            "flow_inputs": [], "latent": "", "decoder": None,
                            "decoder_extra": []}
    points = split_points(model)
    if points is None:
        (out / META).write_text(json.dumps(meta), encoding="utf-8")
        return meta
    inputs = [i.name for i in model.graph.input]
    ex = onnx.utils.Extractor(model)
    latent, extra, durations = points["latent"], points["decoder_extra"], points["durations"]

    def save(name: str, ins: list[str], outs: list[str]) -> str:
        onnx.save(ex.extract_model(ins, outs), str(out / name))
        return name

    def session(name: str) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(out / name), options,
                                    providers=["CPUExecutionProvider"])

    meta.update(latent=latent, durations=durations, decoder_extra=extra,
                decoder=save("decoder.onnx", [latent, *extra], [points["audio"]]))
    whole = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _probe_inputs(whole, np)
    want = np.asarray(whole.run(None, feeds)[0]).reshape(-1)
    del whole

    def reproduces() -> bool:
        """The parts, chained, give the whole graph's audio (no sampling noise)."""
        got = dict(zip(meta["pre_outputs"], session(meta["pre"]).run(None, feeds),
                       strict=True))
        if meta["flow"] is not None:
            flow = session(meta["flow"])
            got[latent] = flow.run(None, {k: got[k] for k in meta["flow_inputs"]})[0]
        audio = np.asarray(session(meta["decoder"]).run(
            None, {k: got[k] for k in [latent, *extra]})[0]).reshape(-1)
        return audio.shape == want.shape and float(np.abs(audio - want).max()) < 1e-4

    flow_in = points["flow_inputs"]
    if flow_in:  # the finest cut first: pre | flow | decoder
        try:
            pre_out = [*flow_in, *[x for x in extra if x not in flow_in], durations]
            meta.update(pre=save("pre.onnx", inputs, pre_out), pre_outputs=pre_out,
                        flow=save("flow.onnx", flow_in, [latent]), flow_inputs=flow_in)
            if reproduces():
                return _finish(out, meta)
        except Exception as exc:  # the flow does not come off cleanly: keep it in ``pre``
            print(f"flow not cut: {type(exc).__name__}: {exc}", file=sys.stderr)
        (out / "flow.onnx").unlink(missing_ok=True)
    pre_out = [latent, *extra, durations]
    meta.update(pre=save("pre.onnx", inputs, pre_out), pre_outputs=pre_out, flow=None,
                flow_inputs=[])
    if not reproduces():
        for name in ("pre.onnx", "decoder.onnx"):
            (out / name).unlink(missing_ok=True)
        meta.update(pre=None, decoder=None, pre_outputs=[])
    return _finish(out, meta)


def _finish(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    (out / META).write_text(json.dumps(meta), encoding="utf-8")
    return meta


def _probe_inputs(session: Any, np: Any) -> dict[str, Any]:
    """Repeatable inputs for a Piper graph: a few phoneme ids, no sampling noise."""
    feeds: dict[str, Any] = {}
    for i in session.get_inputs():
        if i.name == "input":
            feeds[i.name] = np.array([[1, 0, 20, 0, 21, 0, 22, 0, 2]], dtype=np.int64)
        elif i.name == "input_lengths":
            feeds[i.name] = np.array([9], dtype=np.int64)
        elif i.name == "scales":
            feeds[i.name] = np.array([0.0, 1.0, 0.0], dtype=np.float32)
        elif i.name == "sid":
            feeds[i.name] = np.array([0], dtype=np.int64)
        else:
            raise GraphError(f"unknown Piper graph input {i.name!r}")
    return feeds


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m companion_engine.speech.piper_graph MODEL.onnx OUT_DIR",
              file=sys.stderr)
        return 2
    meta = build(Path(args[0]), Path(args[1]))
    print(json.dumps({k: meta[k] for k in ("pre", "flow", "decoder")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
