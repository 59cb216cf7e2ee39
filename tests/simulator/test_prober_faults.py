"""What a disk will not do on demand: unreadable, vanishing, missing, directory and symlinked
images under the chain walk, on a pyfakefs disk (``fs``) through ``LocalStorage``.

Expected codes are the stable ones of ``simulator.model.ErrorCode`` under every profile;
expected wording is libvirt 10.7's ``virStorageSourceReportBrokenChain`` (libvirt-rules.md
§3.2 step 4, §3.9) for libvirt-modern and what qemu-img 7.2 prints (image-formats.md §2.5,
§2.8; observed where marked) for qemu. The 2012 profiles' wording is not checked: §3.9 gives
only fragments of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from simulator.formats import qcow2
from simulator.model import ChainError, ErrorCode, LayerType
from simulator.prober import Prober
from simulator.profiles import PROFILES, Profile
from simulator.storage import FileKind, ImageFile, LocalStorage, Storage

MIB = 1024 * 1024
ALL_PROFILES = [pytest.param(profile, id=name) for name, profile in PROFILES.items()]
LIBVIRT_PROFILES = [
    pytest.param(profile, id=name) for name, profile in PROFILES.items() if name != "qemu"
]
MODERN_AND_QEMU = [pytest.param(PROFILES[name], id=name) for name in ("libvirt-modern", "qemu")]
NON_ROOT = pytest.mark.parametrize("fs", [[None, None, None, False]], indirect=True)
"""pyfakefs's allow_root_user=False: permissions are enforced even when the tests run as root."""


def qcow2_image(
    backing: str | None = None, backing_format: str | None = None, version: int = 3
) -> bytes:
    name = backing.encode() if backing is not None else None
    return qcow2.encode(qcow2.Qcow2Image(MIB, name, backing_format, version))


def make_pair(
    fs: FakeFilesystem, directory: str = "/images", backing_format: str = "raw"
) -> tuple[str, str]:
    """``top.qcow2`` naming ``base.raw`` relatively, with the base's format recorded."""
    top = f"{directory}/top.qcow2"
    base = f"{directory}/base.raw"
    fs.create_file(base, contents=bytes(MIB))
    fs.create_file(top, contents=qcow2_image("base.raw", backing_format))
    return top, base


def probe_error(
    profile: Profile, path: str, format: str | None = "qcow2", storage: Storage | None = None
) -> ChainError:
    with pytest.raises(ChainError) as raised:
        Prober(profile, storage).probe(path, format)
    return raised.value


def qemu_open_error(path: str, reason: str) -> str:
    """qemu-img's chained open error (image-formats.md §2.5)."""
    return f"Could not open '{path}': Could not open '{path}': {reason}"


# --------------------------------------------------------------------------- permissions


@NON_ROOT
@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_backing_file_without_read_permission_is_permission_denied(fs, profile):
    top, base = make_pair(fs)
    os.chmod(base, 0o000)
    error = probe_error(profile, top)
    assert error.code is ErrorCode.PERMISSION_DENIED
    assert error.path == base
    if profile.name == "qemu":  # observed with qemu-img 7.2 run as an unprivileged user
        assert error.message == qemu_open_error(base, "Permission denied")
    elif profile.name == "libvirt-modern":  # access(F_OK) succeeds, the read fails (§3.9)
        assert error.message.startswith(f"cannot read header '{base}'")


@NON_ROOT
@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_top_image_without_read_permission_is_permission_denied(fs, profile):
    top, _ = make_pair(fs)
    os.chmod(top, 0o000)
    error = probe_error(profile, top)
    assert error.code is ErrorCode.PERMISSION_DENIED
    assert error.path == top
    if profile.name == "qemu":
        assert error.message == qemu_open_error(top, "Permission denied")


@NON_ROOT
@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_backing_in_a_directory_without_search_permission_is_permission_denied(fs, profile):
    fs.create_file("/images/locked/base.raw", contents=bytes(MIB))
    fs.create_file("/images/top.qcow2", contents=qcow2_image("locked/base.raw", "raw"))
    os.chmod("/images/locked", 0o600)
    error = probe_error(profile, "/images/top.qcow2")
    assert error.code is ErrorCode.PERMISSION_DENIED
    if profile.name == "qemu":  # observed: Could not open 'locked/base.raw': ... Permission denied
        assert error.message == qemu_open_error("/images/locked/base.raw", "Permission denied")


def _unsearchable_directory(fs: FakeFilesystem) -> str:
    fs.create_file("/images/locked/base.raw", contents=bytes(MIB))
    os.chmod("/images/locked", 0o600)
    return "locked/base.raw"


def _symlink_loop(fs: FakeFilesystem) -> str:
    fs.create_symlink("/images/loop1", "/images/loop2")
    fs.create_symlink("/images/loop2", "/images/loop1")
    return "loop1"


@NON_ROOT
@pytest.mark.parametrize(
    "make_backing", [_unsearchable_directory, _symlink_loop], ids=["unsearchable-dir", "eloop"]
)
def test_libvirt_reports_a_backing_that_fails_access_as_a_broken_chain(fs, make_backing):
    """§3.2 step 4: access(F_OK) fails → virStorageSourceReportBrokenChain (§3.9 wording)."""
    name = make_backing(fs)
    fs.create_file("/images/top.qcow2", contents=qcow2_image(name, "raw"))
    error = probe_error(PROFILES["libvirt-modern"], "/images/top.qcow2")
    assert error.message.startswith(
        f"Cannot access backing file '/images/{name}' of storage file '/images/top.qcow2'"
    )


def test_permissions_are_enforced_only_for_a_non_root_user(fs):
    """The same unreadable base is read by root: the NON_ROOT emulation is what makes it fail."""
    if os.getuid() != 0:
        pytest.skip("the tests run as a regular user: the fake disk enforces permissions")
    top, base = make_pair(fs)
    os.chmod(base, 0o000)
    chain = Prober(PROFILES["qemu"]).probe(top, "qcow2")
    assert [layer.filename for layer in chain.layers] == [top, base]


# --------------------------------------------------------------------------- vanishing files


class VanishingStorage:
    """LocalStorage that deletes a file right after the first image is opened (a race)."""

    def __init__(self, victim: str) -> None:
        self.inner = LocalStorage()
        self.victim = victim
        self.opened: list[str] = []

    def kind(self, path: str) -> FileKind | None:
        return self.inner.kind(path)

    def canonical(self, path: str) -> str:
        return self.inner.canonical(path)

    def open(self, path: str) -> ImageFile:
        image = self.inner.open(path)
        self.opened.append(path)
        if len(self.opened) == 1:
            os.remove(self.victim)
        return image


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_backing_file_deleted_after_the_top_was_opened_is_backing_missing(fs, profile):
    top, base = make_pair(fs)
    storage = VanishingStorage(base)
    error = probe_error(profile, top, storage=storage)
    assert storage.opened[0] == top
    assert not os.path.exists(base)
    assert error.code is ErrorCode.BACKING_MISSING
    assert error.path == base
    if profile.name == "qemu":
        assert error.message == qemu_open_error(base, "No such file or directory")
    elif profile.name == "libvirt-modern":  # §3.9 wording (10.7)
        assert error.message.startswith(
            f"Cannot access backing file '{base}' of storage file '{top}'"
        )


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_middle_layer_deleted_mid_walk_is_backing_missing_with_the_top_as_parent(fs, profile):
    """libvirt names the chain's top as the parent in the broken-chain message (§3.2, §3.9)."""
    fs.create_file("/images/base.raw", contents=bytes(MIB))
    fs.create_file("/images/mid.qcow2", contents=qcow2_image("base.raw", "raw"))
    fs.create_file("/images/top.qcow2", contents=qcow2_image("mid.qcow2", "qcow2"))
    storage = VanishingStorage("/images/mid.qcow2")
    error = probe_error(profile, "/images/top.qcow2", storage=storage)
    assert error.code is ErrorCode.BACKING_MISSING
    assert error.path == "/images/mid.qcow2"
    if profile.name == "libvirt-modern":  # §3.9 wording (10.7)
        assert error.message.startswith(
            "Cannot access backing file '/images/mid.qcow2' of storage file '/images/top.qcow2'"
        )


# --------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("format", [None, "qcow2", "raw"], ids=["unspecified", "qcow2", "raw"])
@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_missing_top_is_not_found(fs, profile, format):
    fs.create_dir("/images")
    error = probe_error(profile, "/images/gone.qcow2", format)
    assert error.code is ErrorCode.NOT_FOUND
    assert error.path == "/images/gone.qcow2"
    if profile.name == "qemu":
        assert error.message == qemu_open_error("/images/gone.qcow2", "No such file or directory")
    elif profile.name == "libvirt-modern":  # §3.9 wording (10.7)
        assert error.message.startswith("Cannot access storage file '/images/gone.qcow2'")


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_backing_never_created_is_backing_missing(fs, profile):
    fs.create_file("/images/top.qcow2", contents=qcow2_image("missing.qcow2", "qcow2"))
    error = probe_error(profile, "/images/top.qcow2")
    assert error.code is ErrorCode.BACKING_MISSING
    assert error.path == "/images/missing.qcow2"


# --------------------------------------------------------------------------- directories


def test_libvirt_ends_an_unterminated_chain_at_a_directory_backing(fs):
    """§3.6: a FILE child that stat()s as a directory becomes type DIR; §3.2 step 3: a DIR
    source cannot be traversed, so the chain stops there with no terminator. The format is the
    overlay's recorded one: virStorageSourceNewFromBacking sets it after the stat()."""
    fs.create_dir("/images/tree")
    fs.create_file("/images/top.qcow2", contents=qcow2_image("tree", "raw"))
    chain = Prober(PROFILES["libvirt-modern"]).probe("/images/top.qcow2", "qcow2")
    assert [layer.filename for layer in chain.layers] == ["/images/top.qcow2", "/images/tree"]
    below = chain.layers[1]
    assert below.type is LayerType.DIR
    assert below.format == "raw"
    assert chain.terminated is False


def test_libvirt_refuses_a_directory_backing_whose_format_is_not_recorded(fs):
    """§3.2 step 3: an untraversable source whose format was AUTO returns -2, which becomes
    "format of backing image '%s' of image '%s' was not specified in the image metadata"."""
    fs.create_dir("/images/tree")
    fs.create_file("/images/top.qcow2", contents=qcow2_image("tree", None))
    error = probe_error(PROFILES["libvirt-modern"], "/images/top.qcow2")
    assert error.code is ErrorCode.BACKING_FORMAT_UNSPECIFIED
    assert error.message.startswith(
        "format of backing image 'tree' of image '/images/top.qcow2' was not specified "
        "in the image metadata"
    )


def test_libvirt_top_directory_with_unspecified_format_is_a_dir_layer(fs):
    """§3.1: an unspecified top format becomes DIR for directories."""
    fs.create_dir("/images/tree")
    chain = Prober(PROFILES["libvirt-modern"]).probe("/images/tree")
    assert len(chain) == 1
    assert chain.top.type is LayerType.DIR
    assert chain.top.format == "dir"


def test_qemu_refuses_a_directory_as_backing(fs):
    fs.create_dir("/images/tree")
    fs.create_file("/images/top.qcow2", contents=qcow2_image("tree", "raw"))
    error = probe_error(PROFILES["qemu"], "/images/top.qcow2")
    assert error.code is ErrorCode.READ_FAILED
    assert error.path == "/images/tree"


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
@pytest.mark.qemu_img
def test_qemu_directory_backing_message_is_qemu_imgs(tmp_path):
    (tmp_path / "tree").mkdir()
    top = tmp_path / "top.qcow2"
    top.write_bytes(qcow2_image("tree", "raw"))
    result = subprocess.run(
        ["qemu-img", "info", "--backing-chain", str(top)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    expected = result.stderr.strip().removeprefix("qemu-img: ")
    tree = str(tmp_path / "tree")
    assert (
        expected == f"Could not open '{tree}': 'file' driver requires '{tree}' to be a regular file"
    )
    error = probe_error(PROFILES["qemu"], str(top))
    assert error.message == expected


# --------------------------------------------------------------------------- symlinks


@pytest.mark.parametrize("profile", MODERN_AND_QEMU)
def test_backing_symlink_is_followed_and_keeps_the_link_name(fs, profile):
    """§2.3 / §3.6: no realpath, no symlink resolution; the layer is the name as resolved."""
    fs.create_file("/store/base.raw", contents=bytes(MIB))
    fs.create_symlink("/images/base.raw", "/store/base.raw")
    fs.create_file("/images/top.qcow2", contents=qcow2_image("base.raw", "raw"))
    chain = Prober(profile).probe("/images/top.qcow2", "qcow2")
    assert [layer.filename for layer in chain.layers] == ["/images/top.qcow2", "/images/base.raw"]
    assert chain.terminated


@pytest.mark.parametrize("profile", [PROFILES["libvirt-1.0"], PROFILES["seed-v2"]])
def test_libvirt_2012_canonicalizes_a_symlinked_backing(fs, profile):
    """§3.6: 2012's absolutePathFromBaseFile → canonicalize_file_name (82507838e)."""
    fs.create_file("/store/base.raw", contents=bytes(MIB))
    fs.create_symlink("/images/base.raw", "/store/base.raw")
    fs.create_file("/images/top.qcow2", contents=qcow2_image("base.raw", "raw"))
    chain = Prober(profile).probe("/images/top.qcow2", "qcow2")
    assert [layer.filename for layer in chain.layers] == ["/images/top.qcow2", "/store/base.raw"]


@pytest.mark.parametrize("profile", MODERN_AND_QEMU)
def test_symlinked_top_in_another_directory_breaks_a_relative_backing(fs, profile):
    """image-formats.md §2.3: `links/l.qcow2` → `../imgs/sub/mid2.qcow2` looks for the backing
    next to the link: `Could not open 'links/../base.raw'`; libvirt does the same (§3.6)."""
    fs.create_file("/imgs/base.raw", contents=bytes(MIB))
    fs.create_file("/imgs/top.qcow2", contents=qcow2_image("base.raw", "raw"))
    fs.create_symlink("/links/top.qcow2", "/imgs/top.qcow2")
    error = probe_error(profile, "/links/top.qcow2")
    assert error.code is ErrorCode.BACKING_MISSING
    assert error.path == "/links/base.raw"
    if profile.name == "qemu":
        assert error.message == qemu_open_error("/links/base.raw", "No such file or directory")


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_dangling_symlink_backing_is_backing_missing(fs, profile):
    """Observed: qemu-img says `Could not open 'dangling.raw': ... No such file or directory`."""
    fs.create_symlink("/images/base.raw", "/images/gone.raw")
    fs.create_file("/images/top.qcow2", contents=qcow2_image("base.raw", "raw"))
    error = probe_error(profile, "/images/top.qcow2")
    assert error.code is ErrorCode.BACKING_MISSING
    if profile.name == "qemu":
        assert error.message == qemu_open_error("/images/base.raw", "No such file or directory")


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_symlink_loop_as_backing_is_a_chain_error(fs, profile):
    """A backing name that is a loop of symlinks fails as a read, not as a traceback."""
    fs.create_symlink("/images/loop1", "/images/loop2")
    fs.create_symlink("/images/loop2", "/images/loop1")
    fs.create_file("/images/top.qcow2", contents=qcow2_image("loop1", "raw"))
    error = probe_error(profile, "/images/top.qcow2")
    assert error.code is ErrorCode.READ_FAILED
    if profile.name == "qemu":  # observed with qemu-img 7.2
        assert error.message == qemu_open_error(
            "/images/loop1", "Too many levels of symbolic links"
        )


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_symlinked_top_keeps_the_name_it_was_given(fs, profile):
    fs.create_file("/imgs/base.raw", contents=bytes(MIB))
    fs.create_file("/imgs/top.qcow2", contents=qcow2_image("base.raw", "raw"))
    fs.create_symlink("/imgs/link.qcow2", "/imgs/top.qcow2")
    chain = Prober(profile).probe("/imgs/link.qcow2", "qcow2")
    assert chain.top.filename == "/imgs/link.qcow2"
    assert len(chain) == 2


# --------------------------------------------------------------------------- header bytes


def _ten_layer_chain(fs: FakeFilesystem, version: int = 2) -> str:
    """layer0.qcow2 → layer1.qcow2 → … → layer9.qcow2 (no backing), relative names, qcow2.

    Version 2 by default: libvirt 1.0 knew qcow2 v2 only, and read v3 extensions from 72."""
    for index in range(10):
        backing = f"layer{index + 1}.qcow2" if index < 9 else None
        fs.create_file(
            f"/chain/layer{index}.qcow2",
            contents=qcow2_image(backing, "qcow2" if backing else None, version),
        )
    return "/chain/layer0.qcow2"


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_a_ten_layer_chain_reads_at_most_4096_header_bytes_per_layer(fs, profile):
    top = _ten_layer_chain(fs)
    prober = Prober(profile)
    chain = prober.probe(top, "qcow2")
    assert [layer.filename for layer in chain.layers] == [
        f"/chain/layer{index}.qcow2" for index in range(10)
    ]
    assert all(layer.format == "qcow2" for layer in chain.layers)
    assert chain.terminated
    assert prober.stats.images_opened == 10
    assert 0 < prober.stats.header_bytes_read <= 4096 * 10
    assert chain.header_bytes_read == prober.stats.header_bytes_read


def test_header_bytes_read_never_exceed_the_files(fs):
    """A raw base of 100 bytes: what is read of it is at most its size."""
    fs.create_file("/images/base.raw", contents=b"x" * 100)
    fs.create_file("/images/top.qcow2", contents=qcow2_image("base.raw", None))
    prober = Prober(PROFILES["qemu"])
    chain = prober.probe("/images/top.qcow2", "qcow2")
    assert [layer.format for layer in chain.layers] == ["qcow2", "raw"]
    assert prober.stats.header_bytes_read <= 4096 + 100


@pytest.mark.parametrize("profile", [PROFILES["libvirt-1.0"], PROFILES["seed-v2"]])
def test_libvirt_2012_ends_a_v3_chain_at_the_first_backing_as_raw(fs, profile):
    """2012 rules scan v3 extensions from 72, so the recorded qcow2 is not seen; an unrecorded
    format is raw when probing is not allowed (§3.5, 0.8.3-4.4), and raw ends the chain."""
    top = _ten_layer_chain(fs, version=3)
    chain = Prober(profile).probe(top, "qcow2")
    assert [(layer.filename, layer.format) for layer in chain.layers] == [
        ("/chain/layer0.qcow2", "qcow2"),
        ("/chain/layer1.qcow2", "raw"),
    ]
    assert chain.terminated
