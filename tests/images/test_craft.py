"""Crafted images: what real qemu-img 7.2 makes of each, and what the prober reads by the rules.

Every recipe is built in ``tmp_path``. Tests marked ``qemu_img`` check that
qemu-img refuses or misreads the image the documented way (image-formats.md
§1-§2); the others check what ``Prober`` says under the libvirt and qemu
profiles, with expectations taken from the reference rules (libvirt-rules.md
§3.3-3.5 and §3.10, image-formats.md §6) and from what qemu-img does, never
from the prober's own output. Where the prober departs from the rules the test
says what the rules say and is marked as an expected failure naming the bug.

Top images are given to libvirt profiles with their format, as a domain's XML
does (a modern libvirt never probes a top image), and to the qemu profile without one,
as ``qemu-img info`` is run without ``-f``.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from images import qemu_img
from images.craft import (
    HOST_SECRET,
    HOST_SECRET_TEXT,
    RECIPES,
    craft,
    qcow_layout,
    qed_layout,
    vmdk_sparse_layout,
)
from images.qemu_img import QemuImgError
from simulator.formats.qcow2 import Qcow2Image, encode
from simulator.model import Chain, ChainError, ErrorCode
from simulator.prober import Prober
from simulator.profiles import get_profile

MIB = 1024 * 1024
LIBVIRT_HEADER = 0x8200
TOP_FORMATS = {".qcow2": "qcow2", ".qcow": "qcow", ".qed": "qed", ".vmdk": "vmdk", ".cow": "cow"}

needs_qemu_img = pytest.mark.qemu_img


# -- helpers ---------------------------------------------------------------------------


def top_format(top: Path) -> str:
    return TOP_FORMATS[top.suffix]


def probe(profile: str, top: Path, format: str | None = None) -> Chain:
    """The chain under ``profile``; libvirt profiles get the top's format, qemu probes it."""
    if format is None and profile != "qemu":
        format = top_format(top)
    return Prober(get_profile(profile)).probe(str(top), format)


def probe_error(profile: str, top: Path, format: str | None = None) -> ChainError:
    with pytest.raises(ChainError) as raised:
        probe(profile, top, format)
    return raised.value


def shape(chain: Chain) -> list[tuple[str, str]]:
    """Each layer's file name (last component) and format, top first."""
    return [(os.path.basename(layer.filename), layer.format) for layer in chain.layers]


def qemu_chain(top: Path, fmt: str | None = None) -> list[dict[str, Any]]:
    chain: list[dict[str, Any]] = qemu_img.info(top, backing_chain=True, fmt=fmt)
    return chain


def qemu_shape(chain: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(os.path.basename(image["filename"]), image["format"]) for image in chain]


def qemu_refusal(top: Path, fmt: str | None = None) -> str:
    """qemu-img's message when ``info --backing-chain`` refuses the image."""
    with pytest.raises(QemuImgError) as raised:
        qemu_img.info(top, backing_chain=True, fmt=fmt)
    return raised.value.stderr


def overlay_without_format(directory: Path, backing: str) -> Path:
    """A valid qcow2 naming ``backing`` and recording no backing format (pre-6.1 qemu-img).

    It makes the backing an image whose format is probed, the only place a
    modern libvirt probes at all (libvirt-rules.md §3.5).
    """
    path = directory / "overlay.qcow2"
    path.write_bytes(encode(Qcow2Image(MIB, backing.encode(), None)))
    return path


def header_u32(path: Path, offset: int) -> int:
    return int(struct.unpack_from(">I", path.read_bytes(), offset)[0])


def header_u64(path: Path, offset: int) -> int:
    return int(struct.unpack_from(">Q", path.read_bytes(), offset)[0])


def secret(directory: Path) -> str:
    return str((directory / HOST_SECRET).resolve())


# -- the catalogue ----------------------------------------------------------------------


def test_recipes_are_named_in_kebab_case_and_say_what_they_probe() -> None:
    for key, recipe in RECIPES.items():
        assert key == recipe.name
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", recipe.name), recipe.name
        assert recipe.summary and recipe.provenance, recipe.name


def test_the_required_recipes_are_all_there() -> None:
    required = {
        "qcow2-backing-name-1024",
        "qcow2-backing-name-2000",
        "qcow2-backing-name-beyond-libvirt-header",
        "qcow2-backing-name-past-eof",
        "qcow2-version-1",
        "qcow2-version-4",
        "qcow2-header-truncated-50",
        "qcow2-header-truncated-72",
        "qcow2-header-truncated-100",
        "qcow2-header-length-100",
        "qcow2-header-length-over-cluster",
        "qcow2-extension-length-huge",
        "qcow2-extension-unaligned-length",
        "qcow2-backing-format-duplicate",
        "qcow2-backing-format-length-16",
        "qcow2-virtual-size-huge",
        "qcow2-backing-name-nul",
        "qcow2-backing-name-newline",
        "qcow2-backing-name-non-utf8",
        "qcow2-data-file-host-file",
        "vmdk-extent-absolute-host-path",
        "vmdk-sparse-parent-absolute",
        "vmdk-descriptor-blank-line",
        "raw-guest-qcow2-header-format-recorded",
        "raw-guest-qcow2-header-format-probed",
        "qed-backing-offset-out-of-bounds",
        "qed-backing-size-out-of-bounds",
        "qed-image-size-unaligned",
        "qcow-backing-name-1024",
        "qcow-cluster-bits-bad",
        "cow-backing-name",
    }
    assert required <= set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_recipe_writes_only_inside_its_directory_and_returns_its_top(
    name: str, tmp_path: Path
) -> None:
    directory = tmp_path / "images"
    top = craft(name, directory)
    assert top.parent == directory
    assert top.name.startswith(f"{name}.")
    assert top.is_file()
    assert list(tmp_path.iterdir()) == [directory]
    first = top.read_bytes()
    assert craft(name, directory) == top
    assert top.read_bytes() == first


def test_all_recipes_can_share_one_directory(tmp_path: Path) -> None:
    tops = [craft(name, tmp_path) for name in RECIPES]
    assert len(set(tops)) == len(RECIPES)
    assert all(top.is_file() for top in tops)


def test_host_file_references_stay_inside_the_directory(tmp_path: Path) -> None:
    for name in (
        "qcow2-data-file-host-file",
        "vmdk-extent-absolute-host-path",
        "vmdk-sparse-parent-absolute",
        "raw-guest-qcow2-header-format-probed",
    ):
        top = craft(name, tmp_path)
        data = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
        assert os.fsencode(secret(tmp_path)) in data, top
        assert b"/etc/" not in data
    assert (tmp_path / HOST_SECRET).read_bytes() == HOST_SECRET_TEXT


def test_an_unknown_recipe_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="qcow2-version-4"):
        craft("no-such-recipe", tmp_path)


# -- the layouts are qemu-img's --------------------------------------------------------


@needs_qemu_img
def test_the_qcow_layout_is_byte_for_byte_what_qemu_img_writes(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "base.raw", "raw", MIB)
    qemu_img.create(tmp_path / "made.qcow", "qcow", MIB, backing="base.raw", backing_format="raw")
    assert qcow_layout(b"base.raw") == (tmp_path / "made.qcow").read_bytes()


@needs_qemu_img
def test_the_qed_layout_is_byte_for_byte_what_qemu_img_writes(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "base.raw", "raw", MIB)
    qemu_img.create(tmp_path / "made.qed", "qed", MIB, backing="base.raw", backing_format="raw")
    assert qed_layout() == (tmp_path / "made.qed").read_bytes()


@needs_qemu_img
def test_the_sparse_vmdk_layout_is_qemu_imgs_apart_from_the_descriptor(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "made.vmdk", "vmdk", MIB)
    made = (tmp_path / "made.vmdk").read_bytes()
    ours = vmdk_sparse_layout(b"# Disk DescriptorFile\n")
    descriptor = slice(512, 21 * 512)
    assert len(ours) == len(made)
    assert ours[:512] == made[:512]
    assert ours[descriptor.stop :] == made[descriptor.stop :]


@needs_qemu_img
@pytest.mark.parametrize(
    "name", ["qcow2-backing-name-beyond-libvirt-header", "raw-guest-qcow2-header-format-recorded"]
)
def test_an_image_built_on_the_encoder_passes_qemu_img_check(name: str, tmp_path: Path) -> None:
    assert qemu_img.check(craft(name, tmp_path)).clean


# -- qemu-img and the qemu profile refuse the same images ------------------------------

REFUSALS = {
    "qcow2-backing-name-1024": "Backing file name too long",
    "qcow2-backing-name-2000": "Backing file name too long",
    "qcow2-version-1": "Cluster size must be between 512 and 64k",
    "qcow2-version-4": "Unsupported qcow2 version 4",
    "qcow2-header-truncated-50": "qcow2 header too short",
    "qcow2-header-truncated-72": "qcow2 header too short",
    "qcow2-header-truncated-100": "qcow2 header too short",
    "qcow2-header-length-100": "qcow2 header too short",
    "qcow2-header-length-over-cluster": "qcow2 header exceeds cluster size",
    "qcow2-extension-length-huge": "Header extension too large",
    "qcow2-backing-format-duplicate": "Image is not in qcow2 format",
    "qcow2-backing-format-length-16": "ERROR: ext_backing_format: len=16 too large (>=16)",
    "qcow2-virtual-size-huge": "Image is too big",
    "qed-backing-offset-out-of-bounds": "QED backing filename offset is invalid",
    "qed-backing-size-out-of-bounds": "QED backing filename offset is invalid",
    "qed-image-size-unaligned": "QED image size is invalid",
    "qcow-backing-name-1024": "Backing file name too long",
    "qcow-cluster-bits-bad": "Cluster size must be between 512 and 64k",
    "vmdk-sparse-parent-absolute": "invalid VMDK image descriptor",
}
"""qemu-img info --backing-chain's reason for refusing each image (image-formats.md §1.3-§1.6,
§2.8; the QED size and the huge-size reasons as qemu-img 7.2 prints them)."""


@needs_qemu_img
@pytest.mark.parametrize(("name", "reason"), sorted(REFUSALS.items()))
def test_qemu_img_refuses_the_image_for_the_documented_reason(
    name: str, reason: str, tmp_path: Path
) -> None:
    assert reason in qemu_refusal(craft(name, tmp_path))


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_the_qemu_profile_refuses_the_image_as_an_invalid_header(name: str, tmp_path: Path) -> None:
    assert probe_error("qemu", craft(name, tmp_path)).code is ErrorCode.HEADER_INVALID


@pytest.mark.parametrize(("name", "reason"), sorted(REFUSALS.items()))
def test_the_qemu_profile_gives_qemu_imgs_reason(name: str, reason: str, tmp_path: Path) -> None:
    assert reason in probe_error("qemu", craft(name, tmp_path)).message


# -- backing names over 1023 bytes -----------------------------------------------------

LONG_NAMES = {
    "qcow2-backing-name-1024": 1024,
    "qcow2-backing-name-2000": 2000,
    "qcow-backing-name-1024": 1024,
}


@pytest.mark.parametrize(("name", "length"), sorted(LONG_NAMES.items()))
def test_the_backing_name_is_as_long_as_claimed_and_names_the_base(
    name: str, length: int, tmp_path: Path
) -> None:
    top = craft(name, tmp_path)
    offset = header_u64(top, 8)
    assert header_u32(top, 16) == length
    recorded = top.read_bytes()[offset : offset + length]
    assert (tmp_path / recorded.decode()).resolve() == (tmp_path / "base.raw").resolve()


@pytest.mark.parametrize("name", sorted(LONG_NAMES))
def test_modern_libvirt_reads_a_name_over_1023_bytes_as_no_backing(
    name: str, tmp_path: Path
) -> None:
    chain = probe("libvirt-modern", craft(name, tmp_path))
    assert chain.terminated
    assert len(chain) == 1
    assert chain.top.backing_raw is None


@pytest.mark.parametrize("profile", ["seed-v2", "libvirt-1.0"])
@pytest.mark.parametrize("name", sorted(LONG_NAMES))
def test_libvirt_before_the_2014_limit_follows_a_long_name(
    profile: str, name: str, tmp_path: Path
) -> None:
    top = craft(name, tmp_path)
    chain = probe(profile, top)
    assert shape(chain) == [(top.name, top_format(top)), ("base.raw", "raw")]


# -- a name libvirt's header buffer does not reach --------------------------------------


@needs_qemu_img
def test_qemu_img_follows_a_name_placed_beyond_0x8200(tmp_path: Path) -> None:
    top = craft("qcow2-backing-name-beyond-libvirt-header", tmp_path)
    assert LIBVIRT_HEADER < header_u64(top, 8) < 1 << 16
    chain = qemu_chain(top)
    assert qemu_shape(chain) == [(top.name, "qcow2"), ("base.raw", "raw")]
    assert chain[0]["backing-filename"] == "base.raw"


def test_the_qemu_profile_follows_a_name_placed_beyond_0x8200(tmp_path: Path) -> None:
    top = craft("qcow2-backing-name-beyond-libvirt-header", tmp_path)
    assert shape(probe("qemu", top)) == [(top.name, "qcow2"), ("base.raw", "raw")]


@pytest.mark.parametrize("profile", ["libvirt-modern", "libvirt-1.0"])
def test_libvirt_sees_no_backing_beyond_its_header_buffer(profile: str, tmp_path: Path) -> None:
    chain = probe(profile, craft("qcow2-backing-name-beyond-libvirt-header", tmp_path))
    assert chain.terminated
    assert len(chain) == 1
    assert chain.top.backing_raw is None


# -- a name running past the end of the file --------------------------------------------


@needs_qemu_img
def test_qemu_img_reads_past_the_end_of_the_file_as_zeros(tmp_path: Path) -> None:
    top = craft("qcow2-backing-name-past-eof", tmp_path)
    assert header_u64(top, 8) + header_u32(top, 16) > top.stat().st_size
    chain = qemu_chain(top)
    assert qemu_shape(chain) == [(top.name, "qcow2"), ("base.raw", "raw")]


def test_the_qemu_profile_follows_a_name_cut_by_the_end_of_the_file(tmp_path: Path) -> None:
    top = craft("qcow2-backing-name-past-eof", tmp_path)
    assert shape(probe("qemu", top)) == [(top.name, "qcow2"), ("base.raw", "raw")]


def test_modern_libvirt_sees_no_backing_past_the_end_of_the_file(tmp_path: Path) -> None:
    chain = probe("libvirt-modern", craft("qcow2-backing-name-past-eof", tmp_path))
    assert chain.terminated
    assert chain.top.backing_raw is None


# -- versions 1 and 4 ------------------------------------------------------------------


@needs_qemu_img
def test_qemu_img_opens_version_1_as_qcow2_only_when_told_and_refuses(tmp_path: Path) -> None:
    top = craft("qcow2-version-1", tmp_path)
    assert "Unsupported qcow2 version 1" in qemu_refusal(top, fmt="qcow2")


def test_the_qemu_profile_told_qcow2_refuses_version_1(tmp_path: Path) -> None:
    error = probe_error("qemu", craft("qcow2-version-1", tmp_path), "qcow2")
    assert "Unsupported qcow2 version 1" in error.message


@needs_qemu_img
@pytest.mark.parametrize(
    ("version", "reason"),
    [(1, "Cluster size must be between 512 and 64k"), (4, "Unsupported qcow2 version 4")],
)
def test_qemu_img_probes_a_backing_of_either_version_and_fails(
    version: int, reason: str, tmp_path: Path
) -> None:
    craft(f"qcow2-version-{version}", tmp_path)
    overlay = overlay_without_format(tmp_path, f"qcow2-version-{version}.qcow2")
    assert reason in qemu_refusal(overlay)


def test_modern_libvirt_probes_a_version_4_backing_as_raw(tmp_path: Path) -> None:
    craft("qcow2-version-4", tmp_path)
    overlay = overlay_without_format(tmp_path, "qcow2-version-4.qcow2")
    chain = probe("libvirt-modern", overlay)
    assert shape(chain) == [("overlay.qcow2", "qcow2"), ("qcow2-version-4.qcow2", "raw")]
    assert chain.terminated


def test_modern_libvirt_probes_a_version_1_backing_as_qcow_and_refuses_its_backing(
    tmp_path: Path,
) -> None:
    craft("qcow2-version-1", tmp_path)
    overlay = overlay_without_format(tmp_path, "qcow2-version-1.qcow2")
    error = probe_error("libvirt-modern", overlay)
    assert error.code is ErrorCode.BACKING_FORMAT_UNSPECIFIED


def test_modern_libvirt_told_qcow2_reads_no_backing_format_from_a_version_1_header(
    tmp_path: Path,
) -> None:
    chain = probe("libvirt-modern", craft("qcow2-version-1", tmp_path))
    assert chain.top.backing_raw == "base.raw"
    assert chain.top.backing_format_raw is None


# -- truncated headers and lying header lengths ----------------------------------------

TRUNCATED = {
    "qcow2-header-truncated-50": 50,
    "qcow2-header-truncated-72": 72,
    "qcow2-header-truncated-100": 100,
}


@pytest.mark.parametrize(("name", "length"), sorted(TRUNCATED.items()))
def test_modern_libvirt_reads_a_truncated_header_as_no_backing(
    name: str, length: int, tmp_path: Path
) -> None:
    top = craft(name, tmp_path)
    assert top.stat().st_size == length
    chain = probe("libvirt-modern", top)
    assert chain.terminated
    assert len(chain) == 1
    assert chain.top.backing_raw is None


@pytest.mark.parametrize(
    ("name", "header_length"),
    [("qcow2-header-length-100", 100), ("qcow2-header-length-over-cluster", (1 << 16) + 8)],
)
def test_modern_libvirt_misses_the_format_extension_behind_a_lying_header_length(
    name: str, header_length: int, tmp_path: Path
) -> None:
    top = craft(name, tmp_path)
    assert header_u32(top, 100) == header_length
    chain = probe("libvirt-modern", top)
    assert chain.top.backing_format_raw is None
    assert shape(chain) == [(top.name, "qcow2"), ("base.raw", "raw")]


# -- header extensions -----------------------------------------------------------------


def test_modern_libvirt_stops_at_an_extension_longer_than_its_buffer(tmp_path: Path) -> None:
    top = craft("qcow2-extension-length-huge", tmp_path)
    assert header_u32(top, 116) == 0x7FFFFFFF
    chain = probe("libvirt-modern", top)
    assert chain.top.backing_format_raw is None
    assert shape(chain) == [(top.name, "qcow2"), ("base.raw", "raw")]


@needs_qemu_img
def test_qemu_img_steps_over_padding_to_the_qcow2_backing_format(tmp_path: Path) -> None:
    top = craft("qcow2-extension-unaligned-length", tmp_path)
    chain = qemu_chain(top)
    assert chain[0]["backing-filename-format"] == "qcow2"
    assert qemu_shape(chain) == [(top.name, "qcow2"), ("base.qcow2", "qcow2")]


def test_unpadded_and_padded_extension_scans_give_different_backing_formats(
    tmp_path: Path,
) -> None:
    top = craft("qcow2-extension-unaligned-length", tmp_path)
    libvirt = probe("libvirt-modern", top)
    qemu = probe("qemu", top)
    assert (libvirt.top.backing_format_raw, qemu.top.backing_format_raw) == ("raw", "qcow2")
    assert shape(libvirt) == [(top.name, "qcow2"), ("base.qcow2", "raw")]
    assert shape(qemu) == [(top.name, "qcow2"), ("base.qcow2", "qcow2")]


@needs_qemu_img
def test_qemu_img_keeps_the_last_of_two_backing_format_extensions(tmp_path: Path) -> None:
    top = craft("qcow2-backing-format-duplicate", tmp_path)
    assert qemu_img.info(top)["backing-filename-format"] == "qcow2"


def test_modern_libvirt_never_reaches_the_second_backing_format_extension(
    tmp_path: Path,
) -> None:
    top = craft("qcow2-backing-format-duplicate", tmp_path)
    chain = probe("libvirt-modern", top)
    assert chain.top.backing_format_raw == "raw"
    assert shape(chain) == [(top.name, "qcow2"), ("base.raw", "raw")]


def test_modern_libvirt_reads_a_16_byte_format_as_a_c_string(tmp_path: Path) -> None:
    top = craft("qcow2-backing-format-length-16", tmp_path)
    assert header_u32(top, 116) == 16
    chain = probe("libvirt-modern", top)
    assert chain.top.backing_format_raw == "raw"
    assert shape(chain) == [(top.name, "qcow2"), ("base.raw", "raw")]


# -- a virtual size no L1 table can address ---------------------------------------------


def test_modern_libvirt_reads_a_huge_virtual_size_as_it_is(tmp_path: Path) -> None:
    top = craft("qcow2-virtual-size-huge", tmp_path)
    assert header_u64(top, 24) == (1 << 63) - 512
    chain = probe("libvirt-modern", top)
    assert chain.top.virtual_size == (1 << 63) - 512
    assert shape(chain) == [(top.name, "qcow2"), ("base.raw", "raw")]


# -- backing names with NUL, newline and non-UTF-8 bytes --------------------------------


@needs_qemu_img
def test_qemu_img_cuts_a_backing_name_at_its_nul(tmp_path: Path) -> None:
    top = craft("qcow2-backing-name-nul", tmp_path)
    assert header_u32(top, 16) == len(b"base\0xyz")
    chain = qemu_chain(top)
    assert chain[0]["backing-filename"] == "base"
    assert qemu_shape(chain) == [(top.name, "qcow2"), ("base", "raw")]


@pytest.mark.parametrize("profile", ["libvirt-modern", "qemu"])
def test_the_prober_cuts_a_backing_name_at_its_nul(profile: str, tmp_path: Path) -> None:
    top = craft("qcow2-backing-name-nul", tmp_path)
    chain = probe(profile, top)
    assert chain.top.backing_raw == "base"
    assert shape(chain) == [(top.name, "qcow2"), ("base", "raw")]


@needs_qemu_img
def test_qemu_img_follows_a_backing_name_holding_a_newline(tmp_path: Path) -> None:
    top = craft("qcow2-backing-name-newline", tmp_path)
    chain = qemu_chain(top)
    assert chain[0]["backing-filename"] == "base\n.raw"
    assert qemu_shape(chain) == [(top.name, "qcow2"), ("base\n.raw", "raw")]


@pytest.mark.parametrize("profile", ["libvirt-modern", "qemu"])
def test_the_prober_follows_a_backing_name_holding_a_newline(profile: str, tmp_path: Path) -> None:
    top = craft("qcow2-backing-name-newline", tmp_path)
    chain = probe(profile, top)
    assert chain.top.backing_raw == "base\n.raw"
    assert shape(chain) == [(top.name, "qcow2"), ("base\n.raw", "raw")]


@needs_qemu_img
def test_qemu_img_opens_a_non_utf8_name_and_prints_a_replacement_character(
    tmp_path: Path,
) -> None:
    top = craft("qcow2-backing-name-non-utf8", tmp_path)
    chain = qemu_chain(top)
    assert chain[0]["backing-filename"] == "base\ufffd.raw"
    assert chain[1]["format"] == "raw"
    assert chain[1]["virtual-size"] == MIB


@pytest.mark.parametrize("profile", ["libvirt-modern", "qemu"])
def test_the_prober_keeps_the_bytes_of_a_non_utf8_name(profile: str, tmp_path: Path) -> None:
    top = craft("qcow2-backing-name-non-utf8", tmp_path)
    chain = probe(profile, top)
    assert chain.top.backing_raw is not None
    assert os.fsencode(chain.top.backing_raw) == b"base\xff.raw"
    assert os.fsencode(chain.layers[1].filename).endswith(b"/base\xff.raw")
    assert chain.layers[1].format == "raw"


# -- the qcow2 external data file (CVE-2024-32498 class) -------------------------------


@needs_qemu_img
def test_qemu_img_shows_the_data_file_and_a_guest_reads_the_host_file(tmp_path: Path) -> None:
    top = craft("qcow2-data-file-host-file", tmp_path)
    described = qemu_img.info(top)
    data = described["format-specific"]["data"]
    assert data["data-file"] == secret(tmp_path)
    assert data["data-file-raw"] is True
    assert "backing-filename" not in described
    assert qemu_img.check(top).clean
    qemu_img.run(["convert", "-O", "raw", str(top), str(tmp_path / "guest-view.raw")])
    guest_view = (tmp_path / "guest-view.raw").read_bytes()
    assert guest_view.startswith(HOST_SECRET_TEXT)


def test_the_qemu_profile_reports_the_data_file(tmp_path: Path) -> None:
    top = craft("qcow2-data-file-host-file", tmp_path)
    chain = probe("qemu", top)
    assert len(chain) == 1
    assert chain.top.data_file == secret(tmp_path)


def test_modern_libvirt_does_not_read_the_data_file_extension(tmp_path: Path) -> None:
    chain = probe("libvirt-modern", craft("qcow2-data-file-host-file", tmp_path))
    assert len(chain) == 1
    assert chain.top.data_file is None


# -- a raw disk a guest filled with a qcow2 header (CVE-2008-2004, CVE-2010-2238) -------


@needs_qemu_img
def test_the_guest_disk_itself_probes_as_a_qcow2_naming_the_host_file(tmp_path: Path) -> None:
    craft("raw-guest-qcow2-header-format-recorded", tmp_path)
    guest = qemu_img.info(tmp_path / "guest.raw")
    assert guest["format"] == "qcow2"
    assert guest["backing-filename"] == secret(tmp_path)
    assert (tmp_path / "guest.raw").stat().st_size == MIB


@needs_qemu_img
def test_qemu_img_stops_at_the_raw_disk_when_its_format_is_recorded(tmp_path: Path) -> None:
    top = craft("raw-guest-qcow2-header-format-recorded", tmp_path)
    assert qemu_shape(qemu_chain(top)) == [(top.name, "qcow2"), ("guest.raw", "raw")]


@pytest.mark.parametrize("profile", ["libvirt-modern", "libvirt-1.0", "qemu"])
def test_the_prober_stops_at_the_raw_disk_when_its_format_is_recorded(
    profile: str, tmp_path: Path
) -> None:
    top = craft("raw-guest-qcow2-header-format-recorded", tmp_path)
    chain = probe(profile, top)
    assert shape(chain) == [(top.name, "qcow2"), ("guest.raw", "raw")]
    assert chain.terminated


@needs_qemu_img
def test_qemu_img_probes_the_raw_disk_and_reaches_the_host_file(tmp_path: Path) -> None:
    top = craft("raw-guest-qcow2-header-format-probed", tmp_path)
    chain = qemu_chain(top)
    assert "backing-filename-format" not in chain[0]
    assert qemu_shape(chain) == [
        (top.name, "qcow2"),
        ("guest.raw", "qcow2"),
        (HOST_SECRET, "raw"),
    ]
    assert chain[2]["filename"] == secret(tmp_path)


def test_the_qemu_profile_probes_the_raw_disk_and_reaches_the_host_file(tmp_path: Path) -> None:
    top = craft("raw-guest-qcow2-header-format-probed", tmp_path)
    chain = probe("qemu", top)
    assert shape(chain) == [(top.name, "qcow2"), ("guest.raw", "qcow2"), (HOST_SECRET, "raw")]
    assert chain.layers[2].filename == secret(tmp_path)


def test_modern_libvirt_refuses_a_probed_backing_that_has_a_backing(tmp_path: Path) -> None:
    error = probe_error("libvirt-modern", craft("raw-guest-qcow2-header-format-probed", tmp_path))
    assert error.code is ErrorCode.BACKING_FORMAT_UNSPECIFIED
    assert "was not specified in the image metadata" in error.message


def test_libvirt_1_0_without_probing_takes_the_unrecorded_backing_as_raw(tmp_path: Path) -> None:
    top = craft("raw-guest-qcow2-header-format-probed", tmp_path)
    chain = probe("libvirt-1.0", top)
    assert shape(chain) == [(top.name, "qcow2"), ("guest.raw", "raw")]


# -- qed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "offset", "size"),
    [
        ("qed-backing-offset-out-of-bounds", 0x20000, len("base.raw")),
        ("qed-backing-size-out-of-bounds", 64, 0x10000),
    ],
)
def test_modern_libvirt_sees_no_backing_behind_a_lying_qed_name(
    name: str, offset: int, size: int, tmp_path: Path
) -> None:
    top = craft(name, tmp_path)
    fields = struct.unpack_from("<II", top.read_bytes(), 56)
    assert fields == (offset, size)
    chain = probe("libvirt-modern", top)
    assert chain.terminated
    assert len(chain) == 1
    assert chain.top.backing_raw is None


def test_modern_libvirt_reads_an_unaligned_qed_size_and_follows_the_backing(
    tmp_path: Path,
) -> None:
    top = craft("qed-image-size-unaligned", tmp_path)
    chain = probe("libvirt-modern", top)
    assert chain.top.virtual_size == MIB + 1
    assert chain.top.backing_format_raw == "raw"
    assert shape(chain) == [(top.name, "qed"), ("base.raw", "raw")]


# -- qcow (v1) -------------------------------------------------------------------------


def test_modern_libvirt_ignores_qcow_cluster_bits_and_probes_the_backing(tmp_path: Path) -> None:
    top = craft("qcow-cluster-bits-bad", tmp_path)
    assert top.read_bytes()[32] == 17
    chain = probe("libvirt-modern", top)
    assert chain.top.backing_format_raw is None
    assert shape(chain) == [(top.name, "qcow"), ("base.raw", "raw")]


# -- vmdk ------------------------------------------------------------------------------


@needs_qemu_img
def test_qemu_img_accepts_an_absolute_extent_and_a_guest_reads_the_host_file(
    tmp_path: Path,
) -> None:
    top = craft("vmdk-extent-absolute-host-path", tmp_path)
    described = qemu_img.info(top)
    assert described["format"] == "vmdk"
    extents = described["format-specific"]["data"]["extents"]
    assert [extent["filename"] for extent in extents] == [secret(tmp_path)]
    qemu_img.run(["convert", "-O", "raw", str(top), str(tmp_path / "guest-view.raw")])
    assert (tmp_path / "guest-view.raw").read_bytes().startswith(HOST_SECRET_TEXT)


def test_the_qemu_profile_opens_the_descriptor_with_its_host_extent(tmp_path: Path) -> None:
    top = craft("vmdk-extent-absolute-host-path", tmp_path)
    chain = probe("qemu", top)
    assert shape(chain) == [(top.name, "vmdk")]
    assert chain.top.virtual_size == 2048 * 512


@needs_qemu_img
def test_qemu_img_probes_the_descriptor_below_an_overlay_as_vmdk(tmp_path: Path) -> None:
    craft("vmdk-extent-absolute-host-path", tmp_path)
    overlay = overlay_without_format(tmp_path, "vmdk-extent-absolute-host-path.vmdk")
    assert qemu_shape(qemu_chain(overlay)) == [
        ("overlay.qcow2", "qcow2"),
        ("vmdk-extent-absolute-host-path.vmdk", "vmdk"),
    ]


def test_modern_libvirt_probes_the_descriptor_below_an_overlay_as_raw(tmp_path: Path) -> None:
    craft("vmdk-extent-absolute-host-path", tmp_path)
    overlay = overlay_without_format(tmp_path, "vmdk-extent-absolute-host-path.vmdk")
    chain = probe("libvirt-modern", overlay)
    assert shape(chain) == [
        ("overlay.qcow2", "qcow2"),
        ("vmdk-extent-absolute-host-path.vmdk", "raw"),
    ]


@needs_qemu_img
def test_qemu_img_forces_the_absolute_parent_hint_to_vmdk(tmp_path: Path) -> None:
    top = craft("vmdk-sparse-parent-absolute", tmp_path)
    described = qemu_img.info(top)
    assert described["format-specific"]["data"]["create-type"] == "monolithicSparse"
    assert described["backing-filename"] == secret(tmp_path)
    assert described["backing-filename-format"] == "vmdk"


def test_modern_libvirt_probes_the_absolute_parent_hint_and_accepts_the_host_file(
    tmp_path: Path,
) -> None:
    top = craft("vmdk-sparse-parent-absolute", tmp_path)
    chain = probe("libvirt-modern", top)
    assert chain.top.backing_raw == secret(tmp_path)
    assert chain.top.backing_format_raw is None
    assert shape(chain) == [(top.name, "vmdk"), (HOST_SECRET, "raw")]


def one_space_copy(descriptor: Path) -> Path:
    """The same descriptor with its blank line holding one space: the probe's control case."""
    text = descriptor.read_bytes()
    assert b"\n\nversion=1\n" in text
    copy = descriptor.with_name("one-space.vmdk")
    copy.write_bytes(text.replace(b"\n\nversion=1\n", b"\n \nversion=1\n", 1))
    return copy


@needs_qemu_img
def test_qemu_img_probes_a_descriptor_with_a_blank_line_as_raw(tmp_path: Path) -> None:
    top = craft("vmdk-descriptor-blank-line", tmp_path)
    assert qemu_img.info(top)["format"] == "raw"
    told = qemu_img.info(top, fmt="vmdk")
    assert (told["format"], told["virtual-size"]) == ("vmdk", MIB)
    assert qemu_img.info(one_space_copy(top))["format"] == "vmdk"


def test_the_qemu_profile_probes_a_descriptor_with_a_blank_line_as_raw(tmp_path: Path) -> None:
    top = craft("vmdk-descriptor-blank-line", tmp_path)
    assert shape(probe("qemu", top)) == [(top.name, "raw")]
    told = probe("qemu", top, "vmdk")
    assert (told.top.format, told.top.virtual_size) == ("vmdk", MIB)
    assert probe("qemu", one_space_copy(top)).top.format == "vmdk"


# -- cow (User-Mode Linux) -------------------------------------------------------------


@needs_qemu_img
def test_qemu_img_has_no_cow_driver_and_probes_the_image_as_raw(tmp_path: Path) -> None:
    top = craft("cow-backing-name", tmp_path)
    described = qemu_img.info(top)
    assert (described["format"], described["virtual-size"]) == ("raw", top.stat().st_size)
    assert "backing-filename" not in described
    assert "Unknown driver 'cow'" in qemu_refusal(top, fmt="cow")


def test_the_qemu_profile_probes_the_cow_image_as_raw(tmp_path: Path) -> None:
    top = craft("cow-backing-name", tmp_path)
    chain = probe("qemu", top)
    assert shape(chain) == [(top.name, "raw")]


def test_modern_libvirt_follows_the_cow_backing_name_with_its_format_probed(
    tmp_path: Path,
) -> None:
    top = craft("cow-backing-name", tmp_path)
    chain = probe("libvirt-modern", top)
    assert chain.top.backing_raw == "base.raw"
    assert chain.top.backing_format_raw is None
    assert shape(chain) == [(top.name, "cow"), ("base.raw", "raw")]


def test_modern_libvirt_detects_a_cow_backing_and_refuses_its_unrecorded_backing(
    tmp_path: Path,
) -> None:
    craft("cow-backing-name", tmp_path)
    overlay = overlay_without_format(tmp_path, "cow-backing-name.cow")
    error = probe_error("libvirt-modern", overlay)
    assert error.code is ErrorCode.BACKING_FORMAT_UNSPECIFIED
