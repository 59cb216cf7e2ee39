"""The native writer against qemu-img: the same spec built both ways reads back the same.

For every spec here (all of them chains qemu-img can make and open), each layer built
with ``BuildMethod.NATIVE`` and with ``BuildMethod.QEMU_IMG`` must give the same format,
backing-filename (the build directory written as ``$DIR``), backing-filename-format and
virtual-size in ``qemu-img info --output=json``, and both must pass ``qemu-img check``
(qcow v1 and raw have no check in qemu-img; both builds must then say so alike).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from images import native, qemu_img
from images.build import BuildMethod, BuiltChain, build
from images.spec import DIR_TOKEN, ChainSpec, LayerSpec, SymlinkSpec, deep, linear
from simulator.formats import qcow2

pytestmark = pytest.mark.qemu_img

COMPARED_KEYS = ("format", "backing-filename", "backing-filename-format", "virtual-size")
NO_CHECK = "This image format does not support checks"
LONG_NAME = "./" * 450 + "base.qcow2"


def _chain(name: str, *layers: LayerSpec, **fields: Any) -> ChainSpec:
    return ChainSpec(name, tuple(layers), **fields)


SPECS: dict[str, ChainSpec] = {
    "qcow2-on-raw": linear("qcow2-on-raw", ["qcow2", "raw"]),
    "qcow2-v2-on-raw": linear("qcow2-v2-on-raw", ["qcow2-v2", "raw"]),
    "qcow2-compat-mix": linear("qcow2-compat-mix", ["qcow2", "qcow2-v2", "qcow2"]),
    "qcow-on-raw": linear("qcow-on-raw", ["qcow", "raw"]),
    "qcow-on-qcow2": linear("qcow-on-qcow2", ["qcow", "qcow2"]),
    "qcow2-on-qcow": linear("qcow2-on-qcow", ["qcow2", "qcow", "raw"]),
    "qed-on-raw": linear("qed-on-raw", ["qed", "raw"]),
    "qed-on-qcow2": linear("qed-on-qcow2", ["qed", "qcow2"]),
    "qed-on-qed": linear("qed-on-qed", ["qed", "qed"]),
    "mixed-formats": linear("mixed-formats", ["qcow2", "qcow2-v2", "qed", "qcow", "raw"]),
    "vmdk-on-vmdk": linear("vmdk-on-vmdk", ["vmdk", "vmdk"]),
    "odd-sizes": _chain(
        "odd-sizes",
        LayerSpec("top.qcow2", "qcow2", "mid.qed", "qed", size=5_000_001),
        LayerSpec("mid.qed", "qed", "low.qcow", "qcow", size=3_000_001),
        LayerSpec("low.qcow", "qcow", "base.raw", "raw", size=1_000_001),
        LayerSpec("base.raw", "raw", size=1),
    ),
    "absolute": linear("absolute", ["qcow2", "qed", "qcow", "raw"], absolute=True),
    "dot-slash": _chain(
        "dot-slash",
        LayerSpec("top.qcow2", "qcow2", "./mid.qed", "qed"),
        LayerSpec("mid.qed", "qed", "./base.raw", "raw"),
        LayerSpec("base.raw", "raw"),
    ),
    "dot-dot": _chain(
        "dot-dot",
        LayerSpec("a/b/top.qcow2", "qcow2", "../mid.qcow", "qcow"),
        LayerSpec("a/mid.qcow", "qcow", "../base.qcow2", "qcow2"),
        LayerSpec("base.qcow2", "qcow2"),
        directories=("a", "a/b"),
    ),
    "symlinked-backing": _chain(
        "symlinked-backing",
        LayerSpec("top.qcow2", "qcow2", "alias.qcow2", "qcow2"),
        LayerSpec("store/base.qcow2", "qcow2"),
        symlinks=(SymlinkSpec("alias.qcow2", "store/base.qcow2"),),
        directories=("store",),
    ),
    "recorded-file": _chain(
        "recorded-file",
        LayerSpec("top.qcow2", "qcow2", "base.raw", "file"),
        LayerSpec("base.raw", "raw"),
    ),
    "recorded-raw-over-qcow2": _chain(
        "recorded-raw-over-qcow2",
        LayerSpec("top.qcow2", "qcow2", "base.qcow2", "raw"),
        LayerSpec("base.qcow2", "qcow2"),
    ),
    "json-name": _chain(
        "json-name",
        LayerSpec(
            "top.qcow2",
            "qcow2",
            'json:{"driver":"qcow2","file":{"driver":"file","filename":"'
            + DIR_TOKEN
            + '/base.qcow2"}}',
            "qcow2",
        ),
        LayerSpec("base.qcow2", "qcow2"),
    ),
    "long-names": _chain(
        "long-names",
        LayerSpec("top.qed", "qed", LONG_NAME.replace("base.qcow2", "mid.qcow"), "qcow"),
        LayerSpec("mid.qcow", "qcow", LONG_NAME, "qcow2"),
        LayerSpec("base.qcow2", "qcow2"),
    ),
    "deep-40": deep("deep-40", 40),
}


def readings(built: BuiltChain) -> dict[str, dict[str, Any]]:
    found = {}
    prefix = f"{built.directory}/"
    for layer in built.spec.layers:
        answer = qemu_img.info(built.path(layer.name))
        reading = {key: answer.get(key) for key in COMPARED_KEYS}
        backing = reading["backing-filename"]
        if isinstance(backing, str):
            reading["backing-filename"] = backing.replace(prefix, f"{DIR_TOKEN}/")
        found[layer.name] = reading
    return found


def check_outcomes(built: BuiltChain) -> dict[str, str]:
    outcomes = {}
    for layer in built.spec.layers:
        try:
            result = qemu_img.check(built.path(layer.name))
        except qemu_img.QemuImgError as error:
            assert NO_CHECK in error.stderr, error.stderr
            outcomes[layer.name] = "no check"
        else:
            assert result.clean, result.report
            outcomes[layer.name] = "clean"
    return outcomes


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_native_and_qemu_img_builds_read_back_alike(spec: ChainSpec, tmp_path: Path) -> None:
    natively = build(spec, tmp_path / "native", BuildMethod.NATIVE)
    with_qemu_img = build(spec, tmp_path / "qemu-img", BuildMethod.QEMU_IMG)
    assert set(with_qemu_img.methods.values()) == {BuildMethod.QEMU_IMG}
    if all(layer.format != "vmdk" for layer in spec.layers):
        assert set(natively.methods.values()) == {BuildMethod.NATIVE}
    assert readings(natively) == readings(with_qemu_img)
    assert check_outcomes(natively) == check_outcomes(with_qemu_img)


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_native_qcow_and_qed_are_byte_identical_to_qemu_img(
    spec: ChainSpec, tmp_path: Path
) -> None:
    natively = build(spec, tmp_path / "native", BuildMethod.NATIVE)
    with_qemu_img = build(spec, tmp_path / "qemu-img", BuildMethod.QEMU_IMG)
    for layer in spec.layers:
        if layer.format in ("qcow", "qed", "raw") and DIR_TOKEN not in (layer.backing or ""):
            native_bytes = natively.path(layer.name).read_bytes()
            assert native_bytes == with_qemu_img.path(layer.name).read_bytes(), layer.name


def test_the_whole_chain_opens_alike(tmp_path: Path) -> None:
    spec = SPECS["mixed-formats"]
    chains = []
    for method in (BuildMethod.NATIVE, BuildMethod.QEMU_IMG):
        built = build(spec, tmp_path / str(method), method)
        chain = qemu_img.info(built.top, backing_chain=True)
        chains.append([{key: entry.get(key) for key in COMPARED_KEYS} for entry in chain])
    assert chains[0] == chains[1]
    assert len(chains[0]) == len(spec.layers)


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("backing", [None, "b", "layer-7.qcow2", "x" * 900, LONG_NAME])
def test_native_qcow2_is_the_simulator_encoding(compat: str, backing: str | None) -> None:
    made = native.qcow2_image(3_000_001, backing, "qcow2", compat)
    direct = qcow2.encode(
        qcow2.Qcow2Image(
            virtual_size=native.rounded_size(3_000_001),
            backing_name=backing.encode() if backing else None,
            backing_format="qcow2" if backing else None,
            version=2 if compat == "0.10" else 3,
        )
    )
    assert made.to_bytes() == direct
    assert native.SparseImage.of(direct) == made
