"""images.build with the real qemu-img: every spec feature builds and reads back as the spec says.

Each built layer is read with ``qemu-img info --output=json`` on that image alone (no
``--backing-chain``: loops and missing files are among the specs), and must report the
format, the virtual size, and the backing name and backing format that the spec, through
what the format can record, says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from images import native, qemu_img
from images.build import (
    AUTO_NATIVE_ABOVE_LAYERS,
    MARKER,
    BuildError,
    BuildMethod,
    BuiltChain,
    build,
    build_cached,
)
from images.spec import DIR_TOKEN, ChainSpec, LayerSpec, SymlinkSpec, deep, linear, loop

pytestmark = pytest.mark.qemu_img

READ_KEYS = ("format", "virtual-size", "backing-filename", "backing-filename-format")


def _chain(name: str, *layers: LayerSpec, **fields: Any) -> ChainSpec:
    return ChainSpec(name, tuple(layers), **fields)


JSON_BACKING = (
    'json:{"driver":"qcow2","file":{"driver":"file","filename":"' + DIR_TOKEN + '/base.qcow2"}}'
)

SPECS: dict[str, ChainSpec] = {
    "qcow2-on-raw": linear("qcow2-on-raw", ["qcow2", "raw"]),
    "qcow2-compat-0.10": _chain(
        "qcow2-compat-0.10",
        LayerSpec("top.qcow2", "qcow2", "base.raw", "raw", compat="0.10"),
        LayerSpec("base.raw", "raw"),
    ),
    "qcow2-compat-1.1": _chain(
        "qcow2-compat-1.1",
        LayerSpec("top.qcow2", "qcow2", "base.qcow2", "qcow2", compat="1.1"),
        LayerSpec("base.qcow2", "qcow2", compat="0.10"),
    ),
    "qcow-on-raw": linear("qcow-on-raw", ["qcow", "raw"]),
    "qed-on-raw": linear("qed-on-raw", ["qed", "raw"]),
    "qed-on-qcow2": linear("qed-on-qcow2", ["qed", "qcow2"]),
    "vmdk-on-vmdk": linear("vmdk-on-vmdk", ["vmdk", "vmdk"]),
    "vmdk-format-unrecorded": _chain(
        "vmdk-format-unrecorded",
        LayerSpec("top.vmdk", "vmdk", "base.vmdk"),
        LayerSpec("base.vmdk", "vmdk"),
    ),
    "raw-alone": linear("raw-alone", ["raw"], size=1000),
    "mixed-formats": linear("mixed-formats", ["qcow2", "qcow2-v2", "qed", "qcow", "raw"]),
    "odd-size": linear("odd-size", ["qcow2", "qed", "qcow", "raw"], size=3_000_001),
    "absolute": linear("absolute", ["qcow2", "qcow2", "raw"], absolute=True),
    "dot-slash": _chain(
        "dot-slash",
        LayerSpec("top.qcow2", "qcow2", "./base.qcow2", "qcow2"),
        LayerSpec("base.qcow2", "qcow2"),
    ),
    "dot-dot": _chain(
        "dot-dot",
        LayerSpec("imgs/sub/top.qcow2", "qcow2", "../base.raw", "raw"),
        LayerSpec("imgs/base.raw", "raw"),
        directories=("imgs", "imgs/sub"),
    ),
    "symlinked-top": _chain(
        "symlinked-top",
        LayerSpec("imgs/top.qcow2", "qcow2", "base.qcow2", "qcow2"),
        LayerSpec("imgs/base.qcow2", "qcow2"),
        symlinks=(SymlinkSpec("links/top.qcow2", "../imgs/top.qcow2"),),
        directories=("imgs", "links"),
        top="links/top.qcow2",
    ),
    "symlinked-backing": _chain(
        "symlinked-backing",
        LayerSpec("top.qcow2", "qcow2", "alias.qcow2", "qcow2"),
        LayerSpec("store/base.qcow2", "qcow2"),
        symlinks=(SymlinkSpec("alias.qcow2", "store/base.qcow2"),),
        directories=("store",),
    ),
    "symlinked-directory": _chain(
        "symlinked-directory",
        LayerSpec("alias/top.qcow2", "qcow2", "base.raw", "raw"),
        LayerSpec("real/base.raw", "raw"),
        symlinks=(SymlinkSpec("alias", "real"),),
        directories=("real",),
    ),
    "absolute-symlink": _chain(
        "absolute-symlink",
        LayerSpec("top.qcow2", "qcow2", f"{DIR_TOKEN}/alias.raw", "raw"),
        LayerSpec("base.raw", "raw"),
        symlinks=(SymlinkSpec("alias.raw", f"{DIR_TOKEN}/base.raw"),),
    ),
    "json-name": _chain(
        "json-name",
        LayerSpec("top.qcow2", "qcow2", JSON_BACKING, "qcow2"),
        LayerSpec("base.qcow2", "qcow2"),
    ),
    "nbd-uri": _chain(
        "nbd-uri", LayerSpec("top.qcow2", "qcow2", "nbd://localhost:10809/export", "raw")
    ),
    "nbd-colon": _chain("nbd-colon", LayerSpec("top.qcow2", "qcow2", "nbd:localhost:10809", "nbd")),
    "recorded-none": linear("recorded-none", ["qcow2", "qcow2", "raw"], record_formats=False),
    "recorded-none-qed-qcow": linear(
        "recorded-none-qed-qcow", ["qed", "qcow", "raw"], record_formats=False
    ),
    "recorded-file": _chain(
        "recorded-file",
        LayerSpec("top.qcow2", "qcow2", "base.raw", "file"),
        LayerSpec("base.raw", "raw"),
    ),
    "recorded-nbd": _chain(
        "recorded-nbd",
        LayerSpec("top.qcow2", "qcow2", "base.raw", "nbd"),
        LayerSpec("base.raw", "raw"),
    ),
    "missing-base": _chain(
        "missing-base",
        LayerSpec("top.qcow2", "qcow2", "gone.qcow2", "qcow2"),
        LayerSpec("gone.qcow2", "qcow2", missing=True),
    ),
    "missing-middle": _chain(
        "missing-middle",
        LayerSpec("top.qcow2", "qcow2", "mid.qcow2", "qcow2"),
        LayerSpec("mid.qcow2", "qcow2", "base.raw", "raw", missing=True),
        LayerSpec("base.raw", "raw"),
    ),
    "loop-self": _chain("loop-self", LayerSpec("self.qcow2", "qcow2", "self.qcow2", "qcow2")),
    "loop-self-qed": _chain("loop-self-qed", LayerSpec("self.qed", "qed", "self.qed", "qed")),
    "loop-mutual": loop("loop-mutual", 2),
    "loop-ring": loop("loop-ring", 3),
    "loop-alias": loop("loop-alias", 1, alias=True),
    "loop-below-top": _chain(
        "loop-below-top",
        LayerSpec("top.qcow2", "qcow2", "a.qcow2", "qcow2"),
        LayerSpec("a.qcow2", "qcow2", "b.qcow2", "qcow2"),
        LayerSpec("b.qcow2", "qcow2", "a.qcow2", "qcow2"),
    ),
}

QEMU_IMG_REFUSES = {"recorded-none", "recorded-none-qed-qcow"}
"""Specs with a backing but no recorded format: qemu-img >= 6.1 will not make them."""


def expected_reading(layer: LayerSpec, directory: Path) -> dict[str, Any]:
    """What qemu-img info reports for ``layer``, by what its format can record."""
    backing = layer.backing.replace(DIR_TOKEN, str(directory)) if layer.backing else None
    return {
        "format": layer.format,
        "virtual-size": native.rounded_size(layer.size),
        "backing-filename": native.recorded_backing_name(layer.format, backing),
        "backing-filename-format": native.recorded_backing_format(
            layer.format, backing, layer.backing_format
        ),
    }


def reading(path: Path) -> dict[str, Any]:
    answer = qemu_img.info(path)
    return {key: answer.get(key) for key in READ_KEYS}


def assert_reads_as_spec(built: BuiltChain) -> None:
    for layer in built.spec.layers:
        path = built.path(layer.name)
        if layer.missing:
            assert not os.path.lexists(path), layer.name
            continue
        assert reading(path) == expected_reading(layer, built.directory), layer.name
    top = os.path.realpath(built.top)
    (top_layer,) = [
        layer for layer in built.spec.layers if os.path.realpath(built.path(layer.name)) == top
    ]
    assert reading(built.top) == expected_reading(top_layer, built.directory)


def file_bytes(directory: Path) -> dict[str, bytes]:
    """Every regular file under ``directory`` (symlinks as their text), by relative name."""
    found = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink():
            found[name] = os.readlink(path).encode()
        elif path.is_file():
            found[name] = path.read_bytes()
    return found


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
@pytest.mark.parametrize("method", [BuildMethod.AUTO, BuildMethod.NATIVE, BuildMethod.QEMU_IMG])
def test_every_spec_reads_back_as_it_says(
    spec: ChainSpec, method: BuildMethod, tmp_path: Path
) -> None:
    if method is BuildMethod.QEMU_IMG and spec.name in QEMU_IMG_REFUSES:
        pytest.skip("qemu-img refuses this spec; see test_qemu_img_refusal_is_a_build_error")
    built = build(spec, tmp_path / "chain", method)
    assert built.directory == (tmp_path / "chain").resolve()
    assert built.top == built.directory / spec.top
    assert_reads_as_spec(built)
    made = {layer.name for layer in spec.layers if not layer.missing}
    assert set(built.methods) == made


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_auto_uses_qemu_img_unless_it_refuses(spec: ChainSpec, tmp_path: Path) -> None:
    built = build(spec, tmp_path)
    for layer in built.layers:
        spec_layer = spec.layer(layer.name)
        refused = spec_layer.backing is not None and spec_layer.backing_format is None
        if refused and spec_layer.format != "vmdk":
            assert layer.method is BuildMethod.NATIVE
            assert "backing format" in layer.reason
            assert layer.commands == ((f"native:{spec_layer.format}", layer.name),)
        else:
            assert layer.method is BuildMethod.QEMU_IMG, layer.reason
            assert all(command[0] == "qemu-img" for command in layer.commands)


def test_native_method_still_makes_vmdk_with_qemu_img(tmp_path: Path) -> None:
    built = build(SPECS["vmdk-on-vmdk"], tmp_path, BuildMethod.NATIVE)
    assert set(built.methods.values()) == {BuildMethod.QEMU_IMG}


def test_openable_backings_are_created_without_unsafe(tmp_path: Path) -> None:
    built = build(SPECS["mixed-formats"], tmp_path)
    assert built.commands == [
        ["qemu-img", "create", "-q", "-f", "raw", "layer-4.raw", "1048576"],
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow",
            "-b",
            "layer-4.raw",
            "-F",
            "raw",
            "layer-3.qcow",
            "1048576",
        ],
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qed",
            "-b",
            "layer-3.qcow",
            "-F",
            "qcow",
            "layer-2.qed",
            "1048576",
        ],
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "-b",
            "layer-2.qed",
            "-F",
            "qed",
            "layer-1.qcow2",
            "1048576",
        ],
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "layer-1.qcow2",
            "-F",
            "qcow2",
            "layer-0.qcow2",
            "1048576",
        ],
    ]


@pytest.mark.parametrize(
    "name",
    [
        "missing-base",
        "missing-middle",
        "loop-mutual",
        "loop-ring",
        "loop-alias",
        "json-name",
        "nbd-uri",
        "nbd-colon",
        "recorded-file",
        "recorded-nbd",
        "loop-below-top",
    ],
)
def test_unopenable_backings_are_created_unsafe(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    built = build(spec, tmp_path)
    for layer in built.layers:
        if spec.layer(layer.name).backing is not None:
            (create,) = layer.commands
            assert create[1] == "create"
            assert "-u" in create
            assert create[-1] == str(spec.layer(layer.name).size)


def test_loop_below_top_only_the_loop_is_unsafe(tmp_path: Path) -> None:
    built = build(SPECS["loop-below-top"], tmp_path)
    unsafe = {layer.name for layer in built.layers if "-u" in layer.commands[0]}
    assert unsafe == {"top.qcow2", "a.qcow2", "b.qcow2"}


@pytest.mark.parametrize("name", ["loop-self", "loop-self-qed"])
def test_a_backing_named_as_the_image_itself_is_set_with_rebase(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    (layer,) = spec.layers
    built = build(spec, tmp_path)
    assert built.commands == [
        ["qemu-img", "create", "-q", "-f", layer.format, layer.name, "1048576"],
        [
            "qemu-img",
            "rebase",
            "-q",
            "-u",
            "-f",
            layer.format,
            "-b",
            layer.name,
            "-F",
            layer.format,
            layer.name,
        ],
    ]


def test_loops_fail_qemu_img_info_with_backing_chain(tmp_path: Path) -> None:
    built = build(SPECS["loop-ring"], tmp_path)
    with pytest.raises(qemu_img.QemuImgError, match="creates an infinite loop"):
        qemu_img.info(built.top, backing_chain=True)


def test_absolute_names_name_the_resolved_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to("real")
    built = build(SPECS["absolute"], tmp_path / "alias")
    resolved = (tmp_path / "real").resolve()
    assert built.directory == resolved
    assert reading(built.top)["backing-filename"] == f"{resolved}/layer-1.qcow2"
    chain = qemu_img.info(built.top, backing_chain=True)
    assert [entry["filename"] for entry in chain][1:] == [
        f"{resolved}/layer-1.qcow2",
        f"{resolved}/layer-2.raw",
    ]


def test_symlinks_keep_their_text(tmp_path: Path) -> None:
    built = build(SPECS["symlinked-top"], tmp_path)
    assert os.readlink(built.top) == "../imgs/top.qcow2"
    built = build(SPECS["absolute-symlink"], tmp_path / "absolute")
    assert os.readlink(built.path("alias.raw")) == f"{built.directory}/base.raw"


def test_symlinked_top_in_another_directory_breaks_the_relative_chain(tmp_path: Path) -> None:
    built = build(SPECS["symlinked-top"], tmp_path)
    with pytest.raises(qemu_img.QemuImgError, match=re.escape("links/base.qcow2")):
        qemu_img.info(built.top, backing_chain=True)


def test_deep_chain_reads_back_whole(tmp_path: Path) -> None:
    spec = deep("deep-300", 300)
    built = build(spec, tmp_path)
    assert len(spec.layers) > AUTO_NATIVE_ABOVE_LAYERS
    assert set(built.methods.values()) == {BuildMethod.NATIVE}
    chain = qemu_img.info(built.top, backing_chain=True)
    assert len(chain) == 300
    for entry, layer in zip(chain, spec.layers, strict=True):
        expected = expected_reading(layer, built.directory)
        assert {key: entry.get(key) for key in READ_KEYS} == expected
    assert qemu_img.check(built.top).clean


def test_qemu_img_refusal_is_a_build_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="backing format"):
        build(SPECS["recorded-none"], tmp_path / "chain", BuildMethod.QEMU_IMG)
    assert not (tmp_path / "chain").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "unrelated").write_text("mine")
    with pytest.raises(BuildError, match="backing format"):
        build(SPECS["recorded-none"], tmp_path / "kept", BuildMethod.QEMU_IMG)
    assert file_bytes(tmp_path / "kept") == {"unrelated": b"mine"}


def test_an_unknown_backing_format_falls_back_to_native_in_auto(tmp_path: Path) -> None:
    spec = _chain("zzz", LayerSpec("top.qcow2", "qcow2", "base.raw", "zzz"))
    built = build(spec, tmp_path)
    (layer,) = built.layers
    assert layer.method is BuildMethod.NATIVE
    assert "zzz" in layer.reason
    assert reading(built.top)["backing-filename-format"] == "zzz"
    with pytest.raises(BuildError, match="zzz"):
        build(spec, tmp_path / "strict", BuildMethod.QEMU_IMG)


def test_vmdk_on_a_missing_backing_cannot_be_built(tmp_path: Path) -> None:
    spec = _chain("vmdk-missing", LayerSpec("top.vmdk", "vmdk", "gone.vmdk", "vmdk"))
    with pytest.raises(BuildError, match=re.escape("gone.vmdk")):
        build(spec, tmp_path / "chain")
    assert not (tmp_path / "chain").exists()


# Idempotence and determinism


def test_a_second_build_does_nothing_and_returns_the_same(tmp_path: Path) -> None:
    spec = SPECS["mixed-formats"]
    first = build(spec, tmp_path)
    stamps = {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    second = build(spec, tmp_path)
    assert second == first
    assert {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == stamps
    marker = json.loads((tmp_path / MARKER).read_text())
    assert marker["digest"] == spec.digest()
    assert marker["complete"] is True


@pytest.mark.parametrize("method", [BuildMethod.AUTO, BuildMethod.NATIVE])
@pytest.mark.parametrize(
    "name", ["mixed-formats", "odd-size", "recorded-none", "loop-ring", "symlinked-top", "absolute"]
)
def test_rebuilding_gives_identical_bytes(name: str, method: BuildMethod, tmp_path: Path) -> None:
    spec = SPECS[name]
    first = build(spec, tmp_path / "chain", method)
    before = file_bytes(tmp_path / "chain")
    shutil.rmtree(tmp_path / "chain")
    second = build(spec, tmp_path / "chain", method)
    assert file_bytes(tmp_path / "chain") == before
    assert second == first


def test_relative_chains_are_identical_in_any_directory(tmp_path: Path) -> None:
    spec = SPECS["mixed-formats"]
    build(spec, tmp_path / "one")
    build(spec, tmp_path / "two")
    assert file_bytes(tmp_path / "one") == file_bytes(tmp_path / "two")


def test_vmdk_rebuilds_differ_only_in_the_random_cids(tmp_path: Path) -> None:
    spec = SPECS["vmdk-on-vmdk"]
    build(spec, tmp_path / "one")
    build(spec, tmp_path / "two")
    one, two = file_bytes(tmp_path / "one"), file_bytes(tmp_path / "two")
    assert one.keys() == two.keys()
    descriptor = slice(0x200, 0x200 + 20 * 512)
    cid = re.compile(rb"^(parentCID|CID)=[0-9a-f]{1,8}$", re.MULTILINE)
    for name in one:
        if not name.endswith(".vmdk"):
            assert one[name] == two[name]
            continue
        outside = [
            data[: descriptor.start] + data[descriptor.stop :] for data in (one[name], two[name])
        ]
        assert outside[0] == outside[1]
        texts = [cid.sub(b"", data[descriptor]).rstrip(b"\0") for data in (one[name], two[name])]
        assert texts[0] == texts[1]


def test_a_different_method_rebuilds_its_own_files(tmp_path: Path) -> None:
    spec = SPECS["qcow2-on-raw"]
    first = build(spec, tmp_path, BuildMethod.QEMU_IMG)
    second = build(spec, tmp_path, BuildMethod.NATIVE)
    assert set(first.methods.values()) == {BuildMethod.QEMU_IMG}
    assert set(second.methods.values()) == {BuildMethod.NATIVE}
    assert_reads_as_spec(second)
    assert build(spec, tmp_path, BuildMethod.NATIVE) == second


# Foreign files


def test_foreign_files_with_colliding_names_are_refused(tmp_path: Path) -> None:
    spec = SPECS["qcow2-on-raw"]
    (tmp_path / "layer-1.raw").write_text("precious")
    (tmp_path / "notes.txt").write_text("also mine")
    with pytest.raises(BuildError, match=r"layer-1\.raw"):
        build(spec, tmp_path)
    assert file_bytes(tmp_path) == {"layer-1.raw": b"precious", "notes.txt": b"also mine"}


def test_a_file_where_the_spec_wants_a_missing_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "gone.qcow2").write_text("present after all")
    with pytest.raises(BuildError, match=re.escape("gone.qcow2 (the spec says it is missing)")):
        build(SPECS["missing-base"], tmp_path)
    assert file_bytes(tmp_path) == {"gone.qcow2": b"present after all"}


def test_a_file_where_the_spec_wants_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "imgs").write_text("a file")
    with pytest.raises(BuildError, match=re.escape("imgs (the spec needs a directory there)")):
        build(SPECS["dot-dot"], tmp_path)


def test_a_build_of_another_spec_is_not_overwritten(tmp_path: Path) -> None:
    build(SPECS["qcow2-on-raw"], tmp_path)
    before = file_bytes(tmp_path)
    with pytest.raises(BuildError, match="another spec"):
        build(SPECS["qed-on-raw"], tmp_path)
    assert file_bytes(tmp_path) == before


def test_paths_outside_the_directory_are_refused(tmp_path: Path) -> None:
    spec = _chain(
        "escape",
        LayerSpec("top.qcow2"),
        symlinks=(SymlinkSpec("../outside", "top.qcow2"),),
    )
    with pytest.raises(BuildError, match="outside"):
        build(spec, tmp_path / "chain")
    assert not (tmp_path / "outside").exists()


def test_an_interrupted_build_of_the_same_spec_is_completed(tmp_path: Path) -> None:
    spec = SPECS["qcow2-on-raw"]
    (tmp_path / MARKER).write_text(json.dumps({"digest": spec.digest(), "complete": False}))
    (tmp_path / "layer-1.raw").write_text("half-made")
    built = build(spec, tmp_path)
    assert_reads_as_spec(built)


# The cache


def test_the_cache_builds_once_into_the_digest_directory(tmp_path: Path) -> None:
    spec = SPECS["mixed-formats"]
    first = build_cached(spec, tmp_path / "cache")
    assert first.directory == (tmp_path / "cache" / spec.digest()).resolve()
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [spec.digest()]
    assert_reads_as_spec(first)
    stamps = {path: path.stat().st_mtime_ns for path in first.directory.iterdir()}
    second = build_cached(spec, tmp_path / "cache")
    assert second == first
    assert {path: path.stat().st_mtime_ns for path in first.directory.iterdir()} == stamps
    assert build(spec, first.directory) == first


def test_the_cache_names_its_final_directory_in_absolute_names(tmp_path: Path) -> None:
    spec = SPECS["absolute"]
    built = build_cached(spec, tmp_path / "cache")
    assert_reads_as_spec(built)
    chain = qemu_img.info(built.top, backing_chain=True)
    assert chain[-1]["filename"] == f"{built.directory}/layer-2.raw"
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [spec.digest()]


def test_the_cache_replaces_a_build_made_with_another_method(tmp_path: Path) -> None:
    spec = SPECS["qcow2-on-raw"]
    native_build = build_cached(spec, tmp_path, BuildMethod.NATIVE)
    qemu_build = build_cached(spec, tmp_path, BuildMethod.QEMU_IMG)
    assert qemu_build.directory == native_build.directory
    assert set(qemu_build.methods.values()) == {BuildMethod.QEMU_IMG}
    assert [path.name for path in tmp_path.iterdir()] == [spec.digest()]


def test_a_failed_cached_build_leaves_no_trace(tmp_path: Path) -> None:
    with pytest.raises(BuildError):
        build_cached(SPECS["recorded-none"], tmp_path, BuildMethod.QEMU_IMG)
    assert list(tmp_path.iterdir()) == []


def test_the_manifest_entry_is_json(tmp_path: Path) -> None:
    built = build(SPECS["loop-self"], tmp_path)
    document = json.loads(json.dumps(built.to_json()))
    assert document["digest"] == built.spec.digest()
    assert ChainSpec.from_json(document["spec"]) == built.spec
    assert document["layers"][0]["commands"] == built.commands
