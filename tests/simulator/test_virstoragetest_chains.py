"""libvirt's tests/virstoragetest.c chain cases, rebuilt with real qemu-img images.

Each test makes the images of one ``TEST_CHAIN`` case (libvirt-rules.md §4.1) in its own
tmp_path, probes them with ``Prober(get_profile(name)).probe(path, format)`` and checks
the whole chain. Expected values come from the rules in the reference, not from the
code: libvirt-modern follows libvirt 9.0 (§3, §4.1); libvirt-1.0 follows the 2012 rules
(§1, §3.5 and §3.8 "by era", §4.2, the 2013 version of this test); qemu follows
``qemu-img info --backing-chain`` (image-formats.md §2) where a case says something for it.

Format arguments as virstoragetest passes them: RAW, QCOW2, QED, DIR are the format
names; AUTO is ``None`` (unspecified); NONE is ``"none"``.

qcow2 images are made with ``compat=0.10`` (the only qcow2 version libvirt 1.0 knew),
except where a case says otherwise (``testPrepImages``' chain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulator.model import Chain, ChainError, ErrorCode, LayerType, NetworkHost
from simulator.prober import Prober
from simulator.profiles import get_profile
from tests.chains import create, create_without_backing_format, rebase_unsafe, symlink

pytestmark = pytest.mark.qemu_img

MODERN = "libvirt-modern"
LIBVIRT_1_0 = "libvirt-1.0"
QEMU = "qemu"
COMPAT = "0.10"
NBD_URI = "nbd+tcp://example.org:6000/blah"
KBASE_HINT = "(See https://libvirt.org/kbase/backing_chains.html for troubleshooting)"


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """virstoragetestdata/images: a directory reached by a path without symlinks."""
    directory = tmp_path.resolve() / "images"
    directory.mkdir()
    return directory


def probe(profile: str, path: Path | str, format: str | None) -> Chain:
    return Prober(get_profile(profile)).probe(str(path), format)


def probe_error(profile: str, path: Path | str, format: str | None) -> ChainError:
    with pytest.raises(ChainError) as raised:
        probe(profile, path, format)
    return raised.value


def layer(
    filename: Path | str,
    format: str,
    index: int,
    *,
    type: LayerType = LayerType.FILE,
    rel: str | None = None,
    backing: str | None = None,
    backing_format: str | None = None,
) -> dict[str, Any]:
    """One expected element, as virstoragetest prints it (path, rawfmt, relPath, type...)."""
    return {
        "filename": str(filename),
        "format": format,
        "type": type,
        "relative_path": rel,
        "backing_raw": backing,
        "backing_format_raw": backing_format,
        "index": index,
    }


LAYER_FIELDS = (
    "filename",
    "format",
    "type",
    "relative_path",
    "backing_raw",
    "backing_format_raw",
    "index",
)


def layers(chain: Chain) -> list[dict[str, Any]]:
    return [{name: getattr(item, name) for name in LAYER_FIELDS} for item in chain.layers]


def assert_chain(chain: Chain, expected: list[dict[str, Any]], *, terminated: bool) -> None:
    assert layers(chain) == expected
    assert chain.terminated is terminated


def qcow2(path: Path, backing: str | None = None, backing_format: str | None = None) -> Path:
    return create(path, "qcow2", backing=backing, backing_format=backing_format, compat=COMPAT)


def qcow2_unrecorded(path: Path, backing: str) -> Path:
    """A qcow2 naming ``backing`` without its format (qemu-img >= 6.1 cannot: see chains.py)."""
    return create_without_backing_format(path, backing, compat=COMPAT)


def raw(images: Path) -> Path:
    return create(images / "raw", "raw")


# -- missing, raw-raw, raw-auto ----------------------------------------------------------


@pytest.mark.parametrize("profile", [MODERN, LIBVIRT_1_0, QEMU])
def test_missing_top_fails_not_found(images: Path, profile: str) -> None:
    error = probe_error(profile, images / "bogus", "raw")
    assert error.code is ErrorCode.NOT_FOUND


@pytest.mark.parametrize("profile", [MODERN, LIBVIRT_1_0, QEMU])
@pytest.mark.parametrize("format", ["raw", None], ids=["raw-raw", "raw-auto"])
def test_raw_is_a_single_terminated_layer(images: Path, profile: str, format: str | None) -> None:
    top = raw(images)
    assert_chain(probe(profile, top, format), [layer(top, "raw", 0)], terminated=True)


# -- qcow2_raw-raw-relative --------------------------------------------------------------


def qcow2_raw_raw_relative(images: Path) -> Path:
    raw(images)
    return qcow2(images / "qcow2_raw-raw-relative.qcow2", "raw", "raw")


@pytest.mark.parametrize("profile", [MODERN, LIBVIRT_1_0])
def test_qcow2_qcow2_raw_raw_relative(images: Path, profile: str) -> None:
    top = qcow2_raw_raw_relative(images)
    expected = [
        layer(top, "qcow2", 0, backing="raw", backing_format="raw"),
        layer(images / "raw", "raw", 1, rel="raw"),
    ]
    chain = probe(profile, top, "qcow2")
    assert_chain(chain, expected, terminated=True)
    assert chain.top.virtual_size == 1024


@pytest.mark.parametrize("profile", [MODERN, LIBVIRT_1_0])
def test_qcow2_auto_raw_raw_relative_top_is_never_probed(images: Path, profile: str) -> None:
    # §3.1: an unspecified top format becomes raw (1.0: raw too, probing not allowed).
    top = qcow2_raw_raw_relative(images)
    assert_chain(probe(profile, top, None), [layer(top, "raw", 0)], terminated=True)


def test_qcow2_auto_raw_raw_relative_qemu_probes_the_top(images: Path) -> None:
    top = qcow2_raw_raw_relative(images)
    expected = [
        layer(top, "qcow2", 0, backing="raw", backing_format="raw"),
        layer(images / "raw", "raw", 1),
    ]
    assert_chain(probe(QEMU, top, None), expected, terminated=True)


# -- testPrepImages: wrap -> qcow2 -> raw, absolute names --------------------------------


def prep_images(images: Path) -> Path:
    """testPrepImages, verbatim: raw; qcow2 (compat 0.10) -> raw; wrap (compat 1.1) -> qcow2."""
    create(images / "raw", "raw")
    base = images / "raw"
    create(images / "qcow2", backing=str(base), backing_format="raw", compat="0.10")
    mid = images / "qcow2"
    return create(images / "wrap", backing=str(mid), backing_format="qcow2", compat="1.1")


def test_qcow2_qcow2_qcow2_qcow2_raw_raw(images: Path) -> None:
    top = prep_images(images)
    expected = [
        layer(top, "qcow2", 0, backing=str(images / "qcow2"), backing_format="qcow2"),
        layer(images / "qcow2", "qcow2", 1, backing=str(images / "raw"), backing_format="raw"),
        layer(images / "raw", "raw", 2),
    ]
    assert_chain(probe(MODERN, top, "qcow2"), expected, terminated=True)


def test_qcow2_auto_qcow2_qcow2_raw_raw_top_is_never_probed(images: Path) -> None:
    top = prep_images(images)
    assert_chain(probe(MODERN, top, None), [layer(top, "raw", 0)], terminated=True)


# -- backing formats not recorded (§3.5) -------------------------------------------------


def qcow2_qcow2_auto(images: Path) -> Path:
    """images/qcow2 (no backing) <- qcow2_qcow2-auto.qcow2, format not recorded."""
    qcow2(images / "qcow2")
    return qcow2_unrecorded(images / "qcow2_qcow2-auto.qcow2", "qcow2")


def test_qcow2_qcow2_qcow2_qcow2_qcow2_auto_modern_probes_a_backing_less_qcow2(
    images: Path,
) -> None:
    # §3.5, >= 6.1: the unrecorded backing is probed; it has no backing, so qcow2 is kept.
    qcow2_qcow2_auto(images)
    top = qcow2(images / "qcow2_qcow2-qcow2_qcow2-auto.qcow2", "qcow2_qcow2-auto.qcow2", "qcow2")
    mid = images / "qcow2_qcow2-auto.qcow2"
    expected = [
        layer(top, "qcow2", 0, backing="qcow2_qcow2-auto.qcow2", backing_format="qcow2"),
        layer(mid, "qcow2", 1, rel="qcow2_qcow2-auto.qcow2", backing="qcow2"),
        layer(images / "qcow2", "qcow2", 2, rel="qcow2"),
    ]
    assert_chain(probe(MODERN, top, "qcow2"), expected, terminated=True)


def test_qcow2_qcow2_qcow2_qcow2_qcow2_auto_libvirt_1_0_takes_it_as_raw(images: Path) -> None:
    # §3.5, 0.8.3-4.4: an unrecorded backing format is raw (probing not allowed); the
    # chain ends there since raw has no backing (§4.2 case 8).
    qcow2_qcow2_auto(images)
    top = qcow2(images / "qcow2_qcow2-qcow2_qcow2-auto.qcow2", "qcow2_qcow2-auto.qcow2", "qcow2")
    mid = images / "qcow2_qcow2-auto.qcow2"
    expected = [
        layer(top, "qcow2", 0, backing="qcow2_qcow2-auto.qcow2", backing_format="qcow2"),
        layer(mid, "qcow2", 1, rel="qcow2_qcow2-auto.qcow2", backing="qcow2"),
        layer(images / "qcow2", "raw", 2, rel="qcow2"),
    ]
    assert_chain(probe(LIBVIRT_1_0, top, "qcow2"), expected, terminated=True)


def test_qcow2_qcow2_qcow2_qcow2_qcow2_auto_qemu_probes_silently(images: Path) -> None:
    qcow2_qcow2_auto(images)
    top = qcow2(images / "qcow2_qcow2-qcow2_qcow2-auto.qcow2", "qcow2_qcow2-auto.qcow2", "qcow2")
    mid = images / "qcow2_qcow2-auto.qcow2"
    expected = [
        layer(top, "qcow2", 0, backing="qcow2_qcow2-auto.qcow2", backing_format="qcow2"),
        layer(mid, "qcow2", 1, backing="qcow2"),
        layer(images / "qcow2", "qcow2", 2),
    ]
    assert_chain(probe(QEMU, top, "qcow2"), expected, terminated=True)


@pytest.mark.parametrize("profile", [MODERN, LIBVIRT_1_0])
def test_qcow2_qcow2_qcow2_qcow2_raw_auto(images: Path, profile: str) -> None:
    # Modern probes the unrecorded backing (raw, no backing: accepted); 1.0 takes it as raw.
    raw(images)
    qcow2_unrecorded(images / "qcow2_raw-auto.qcow2", "raw")
    top = qcow2(images / "qcow2_qcow2-qcow2_raw-auto.qcow2", "qcow2_raw-auto.qcow2", "qcow2")
    mid = images / "qcow2_raw-auto.qcow2"
    expected = [
        layer(top, "qcow2", 0, backing="qcow2_raw-auto.qcow2", backing_format="qcow2"),
        layer(mid, "qcow2", 1, rel="qcow2_raw-auto.qcow2", backing="raw"),
        layer(images / "raw", "raw", 2, rel="raw"),
    ]
    assert_chain(probe(profile, top, "qcow2"), expected, terminated=True)


def qcow2_qcow2_auto_qcow2_auto(images: Path) -> Path:
    qcow2_qcow2_auto(images)
    return qcow2_unrecorded(images / "qcow2_qcow2-auto_qcow2-auto.qcow2", "qcow2_qcow2-auto.qcow2")


def test_qcow2_qcow2_auto_qcow2_auto_modern_refuses_a_probed_image_with_a_backing(
    images: Path,
) -> None:
    # §3.2 step 6: the probed backing is qcow2 *with* a backing of its own: -2, the error.
    top = qcow2_qcow2_auto_qcow2_auto(images)
    error = probe_error(MODERN, top, "qcow2")
    assert error.code is ErrorCode.BACKING_FORMAT_UNSPECIFIED
    assert error.message == (
        f"format of backing image 'qcow2_qcow2-auto.qcow2' of image '{top}' was not "
        f"specified in the image metadata {KBASE_HINT}"
    )


def test_qcow2_qcow2_auto_qcow2_auto_libvirt_1_0_ends_at_a_raw_backing(images: Path) -> None:
    top = qcow2_qcow2_auto_qcow2_auto(images)
    expected = [
        layer(top, "qcow2", 0, backing="qcow2_qcow2-auto.qcow2"),
        layer(images / "qcow2_qcow2-auto.qcow2", "raw", 1, rel="qcow2_qcow2-auto.qcow2"),
    ]
    assert_chain(probe(LIBVIRT_1_0, top, "qcow2"), expected, terminated=True)


def test_qcow2_qcow2_auto_qcow2_auto_qemu_probes_every_layer(images: Path) -> None:
    top = qcow2_qcow2_auto_qcow2_auto(images)
    mid = images / "qcow2_qcow2-auto.qcow2"
    expected = [
        layer(top, "qcow2", 0, backing="qcow2_qcow2-auto.qcow2"),
        layer(mid, "qcow2", 1, backing="qcow2"),
        layer(images / "qcow2", "qcow2", 2),
    ]
    assert_chain(probe(QEMU, top, "qcow2"), expected, terminated=True)


def test_qcow2_qcow2_qcow2_auto_modern_probes_the_backing_as_qcow2(images: Path) -> None:
    top = qcow2_qcow2_auto(images)
    expected = [
        layer(top, "qcow2", 0, backing="qcow2"),
        layer(images / "qcow2", "qcow2", 1, rel="qcow2"),
    ]
    chain = probe(MODERN, top, "qcow2")
    assert_chain(chain, expected, terminated=True)
    assert chain.layers[1].virtual_size == 1024


def test_qcow2_qcow2_qcow2_auto_libvirt_1_0_takes_the_backing_as_raw(images: Path) -> None:
    top = qcow2_qcow2_auto(images)
    expected = [
        layer(top, "qcow2", 0, backing="qcow2"),
        layer(images / "qcow2", "raw", 1, rel="qcow2"),
    ]
    assert_chain(probe(LIBVIRT_1_0, top, "qcow2"), expected, terminated=True)


# -- protocol driver names recorded as backing format ------------------------------------
#
# libvirt 9.0 (libvirt-modern) does not know 'file' or 'nbd' as format names:
# virStorageFileFormatTypeFromString fails, the extension parse gives up and the backing
# format stays AUTO, i.e. "not recorded" (image-formats.md §6; the mapping of unknown
# names to raw only came with 9.10, libvirt-rules.md §3.4). AUTO is then handled by the
# >= 6.1 rule (§3.5): the backing is probed. For 'file' the backing is a local raw file
# without a backing, so the probe is accepted and the chain ends in a raw layer, as in
# 10.7. For 'nbd' the backing is a network source libvirt cannot read: probing it is
# impossible, the walk returns -2 and the "format ... was not specified" error is
# reported (§3.2 steps 3 and 7). So qcow2-protocol-backing-nbd FAILS under 9.0, while
# libvirt 10.7 passes it with an nbd element of format raw.
# libvirt 1.0 takes an unknown name as unrecorded too, and an unrecorded format as raw.


@pytest.mark.parametrize("profile", [MODERN, LIBVIRT_1_0])
def test_qcow2_protocol_backing_file_is_raw(images: Path, profile: str) -> None:
    raw(images)
    top = qcow2(images / "qcow2-protocol-backing-file.qcow2", "raw", "file")
    expected = [
        layer(top, "qcow2", 0, backing="raw", backing_format="file"),
        layer(images / "raw", "raw", 1, rel="raw"),
    ]
    assert_chain(probe(profile, top, "qcow2"), expected, terminated=True)


def test_qcow2_protocol_backing_nbd_fails_in_libvirt_9_0(images: Path) -> None:
    top = qcow2(images / "qcow2-protocol-backing-nbd.qcow2", NBD_URI, "nbd")
    error = probe_error(MODERN, top, "qcow2")
    assert error.code is ErrorCode.BACKING_FORMAT_UNSPECIFIED
    assert error.message == (
        f"format of backing image '{NBD_URI}' of image '{top}' was not specified in the "
        f"image metadata {KBASE_HINT}"
    )


# -- missing backing, network backing ----------------------------------------------------


def qcow2_qcow2_missing(images: Path) -> Path:
    return qcow2(images / "qcow2_qcow2-missing.qcow2", "qcow2-missing", "qcow2")


def test_qcow2_qcow2_missing_modern_fails_backing_missing(images: Path) -> None:
    # §3.9: virStorageSourceReportBrokenChain, with the chain top as the parent.
    top = qcow2_qcow2_missing(images)
    error = probe_error(MODERN, top, "qcow2")
    assert error.code is ErrorCode.BACKING_MISSING
    missing = images / "qcow2-missing"
    assert error.message.startswith(
        f"Cannot access backing file '{missing}' of storage file '{top}'"
    )


def test_qcow2_qcow2_missing_qemu_fails_backing_missing(images: Path) -> None:
    # image-formats.md §2.5: the resolved name, twice.
    top = qcow2_qcow2_missing(images)
    error = probe_error(QEMU, top, "qcow2")
    assert error.code is ErrorCode.BACKING_MISSING
    missing = images / "qcow2-missing"
    assert error.message == (
        f"Could not open '{missing}': Could not open '{missing}': No such file or directory"
    )


def test_qcow2_qcow2_missing_libvirt_1_0_fails(images: Path) -> None:
    # libvirt 1.0 resolved a backing name with canonicalize_file_name(), which fails for a
    # missing file, and the whole probe failed with it: scenario S1 of libvirt-rules.md §5
    # (a forced re-probe after the base is deleted returns -1). virstoragetest's 2013 cases
    # 9-10 (libvirt 1.0.3, §4.2) show the later rule, where the chain merely ends there.
    top = qcow2_qcow2_missing(images)
    assert probe_error(LIBVIRT_1_0, top, "qcow2").code is ErrorCode.BACKING_MISSING


def test_qcow2_qcow2_nbd_raw_ends_unterminated_at_a_network_layer(images: Path) -> None:
    top = qcow2(images / "qcow2_nbd-raw.qcow2", NBD_URI, "raw")
    chain = probe(MODERN, top, "qcow2")
    expected = [
        layer(top, "qcow2", 0, backing=NBD_URI, backing_format="raw"),
        layer("blah", "raw", 1, type=LayerType.NETWORK),
    ]
    assert_chain(chain, expected, terminated=False)
    assert chain.layers[1].protocol == "nbd"
    assert chain.layers[1].hosts == (NetworkHost(name="example.org", port=6000),)


# -- QED ---------------------------------------------------------------------------------


def qed_raw_raw_relative(images: Path) -> Path:
    raw(images)
    return create(images / "qed_raw-raw-relative", "qed", backing="raw", backing_format="raw")


@pytest.mark.parametrize("profile", [MODERN, LIBVIRT_1_0])
def test_qed_qed_raw(images: Path, profile: str) -> None:
    # qemu-img records "-F raw" as QED_F_BACKING_FORMAT_NO_PROBE: libvirt reads raw.
    top = qed_raw_raw_relative(images)
    expected = [
        layer(top, "qed", 0, backing="raw", backing_format="raw"),
        layer(images / "raw", "raw", 1, rel="raw"),
    ]
    chain = probe(profile, top, "qed")
    assert_chain(chain, expected, terminated=True)
    assert chain.top.virtual_size == 1024


@pytest.mark.parametrize("profile", [MODERN, LIBVIRT_1_0])
def test_qed_auto_raw_top_is_never_probed(images: Path, profile: str) -> None:
    top = qed_raw_raw_relative(images)
    assert_chain(probe(profile, top, None), [layer(top, "raw", 0)], terminated=True)


# -- directories -------------------------------------------------------------------------
# §3.1: a top format <= NONE (NONE or AUTO) becomes DIR for a directory; an explicit
# format is kept. §3.2 step 3: a directory's backend cannot read headers (only FILE,
# BLOCK and gluster can), so the walk stops there without a terminator.


@pytest.mark.parametrize(
    ("format", "expected_format"),
    [
        ("raw", "raw"),
        ("none", "dir"),
        ("dir", "dir"),
        (None, "dir"),
    ],
    ids=["directory-raw", "directory-none", "directory-dir", "directory-auto"],
)
def test_directory_is_one_unterminated_dir_layer(
    images: Path, format: str | None, expected_format: str
) -> None:
    chain = probe(MODERN, images, format)
    expected = [layer(images, expected_format, 0, type=LayerType.DIR)]
    assert_chain(chain, expected, terminated=False)


@pytest.mark.parametrize("profile", [MODERN, LIBVIRT_1_0])
def test_top_format_none_on_a_file_is_raw(images: Path, profile: str) -> None:
    # Not a virstoragetest case: the same §3.1 rule for a file (1.0: "format <= NONE
    # becomes allow_probe ? AUTO : RAW", probing not allowed).
    top = qcow2_raw_raw_relative(images)
    assert_chain(probe(profile, top, "none"), [layer(top, "raw", 0)], terminated=True)


# -- symlinks ----------------------------------------------------------------------------


def test_qcow2_symlinks_are_resolved_lexically_through_the_link(images: Path) -> None:
    # The link targets live in images/, the links in images/sub/: '../raw' only exists
    # relative to the link's own directory (§3.6: no canonicalisation, no symlink
    # resolution), which is what libvirt >= 1.2.6 uses.
    raw(images)
    qcow2(images / "qcow2-to-raw.qcow2", "../raw", "raw")
    qcow2(images / "wrap-to-link1.qcow2", "../sub/link1", "qcow2")
    symlink(images / "sub" / "link1", "../qcow2-to-raw.qcow2")
    top = symlink(images / "sub" / "link2", "../wrap-to-link1.qcow2")
    sub = images / "sub"
    link1 = f"{sub}/../sub/link1"
    expected = [
        layer(top, "qcow2", 0, backing="../sub/link1", backing_format="qcow2"),
        layer(link1, "qcow2", 1, rel="../sub/link1", backing="../raw", backing_format="raw"),
        layer(f"{sub}/../sub/../raw", "raw", 2, rel="../raw"),
    ]
    assert_chain(probe(MODERN, top, "qcow2"), expected, terminated=True)


# -- loops (§3.8) ------------------------------------------------------------------------


# Made as virstoragetest made them: plain images, then "qemu-img rebase -u" into a loop.


def loop_self(images: Path) -> Path:
    return rebase_unsafe(qcow2(images / "loop-self.qcow2"), "loop-self.qcow2", "qcow2")


def loop_mutual(images: Path) -> Path:
    one, two = qcow2(images / "loop-1.qcow2"), qcow2(images / "loop-2.qcow2")
    rebase_unsafe(one, "loop-2.qcow2", "qcow2")
    return rebase_unsafe(two, "loop-1.qcow2", "qcow2")


@pytest.mark.parametrize("build", [loop_self, loop_mutual], ids=["self", "mutual"])
def test_qcow2_qcow2_infinite_modern_ends_at_the_depth_limit(images: Path, build: Any) -> None:
    # >= 9.10 (and 9.0): a depth counter is the only loop detection.
    error = probe_error(MODERN, build(images), "qcow2")
    assert error.code is ErrorCode.TOO_DEEP
    assert "is self-referential or too deeply nested" in error.message


@pytest.mark.parametrize("build", [loop_self, loop_mutual], ids=["self", "mutual"])
def test_qcow2_qcow2_infinite_libvirt_1_0_detects_a_visited_path(images: Path, build: Any) -> None:
    # 2012 (35c74c173): a hash of the canonical paths already visited.
    error = probe_error(LIBVIRT_1_0, build(images), "qcow2")
    assert error.code is ErrorCode.BACKING_LOOP
    assert error.message.endswith("is self-referential")


@pytest.mark.parametrize(
    ("build", "repeated"),
    [(loop_self, "loop-self.qcow2"), (loop_mutual, "loop-2.qcow2")],
    ids=["self", "mutual"],
)
def test_qcow2_qcow2_infinite_qemu_reports_the_first_repeated_name(
    images: Path, build: Any, repeated: str
) -> None:
    error = probe_error(QEMU, build(images), "qcow2")
    assert error.code is ErrorCode.BACKING_LOOP
    assert error.message == f"Backing file '{images / repeated}' creates an infinite loop."
