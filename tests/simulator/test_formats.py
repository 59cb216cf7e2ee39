"""Format decoders, detection and the qcow2 encoder, checked on real bytes against qemu-img 7.2.

Every image is made (or patched) in ``tmp_path``; what qemu-img says about the
same file is the expected value, and where qemu-img cannot tell (libvirt's
reading), the rules of libvirt-rules.md §3.3-3.4 are.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from simulator.formats import cow, detect, qcow, qcow2, qed, vmdk
from simulator.formats.header import (
    Header,
    HeaderInfo,
    HeaderRejected,
    LibvirtReadRules,
    decode_c_name,
)
from simulator.profiles import (
    LIBVIRT_1_0,
    LIBVIRT_2012_MAX_HEADER,
    LIBVIRT_MAX_HEADER,
    LIBVIRT_MODERN,
)

QEMU_IMG = shutil.which("qemu-img")
_NO_QEMU_IMG = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed")
F = TypeVar("F", bound=Callable[..., object])


def needs_qemu_img(test: F) -> F:
    """Marks a test ``qemu_img`` (the project's marker) and skips it without qemu-img."""
    marked: F = pytest.mark.qemu_img(_NO_QEMU_IMG(test))
    return marked


MODERN = LIBVIRT_MODERN.read_rules
RULES_2012 = LIBVIRT_1_0.read_rules
MIB = 1024 * 1024


# --------------------------------------------------------------------------- helpers


def run_qemu_img(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run(
        [QEMU_IMG, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


def create(cwd: Path, name: str, *args: str, size: str | None = "1M") -> Path:
    """``qemu-img create`` NAME in ``cwd``; backing names stay as typed (relative)."""
    command = ["create", *args, name]
    if size is not None:
        command.append(size)
    result = run_qemu_img(cwd, *command)
    assert result.returncode == 0, result.stderr
    return cwd / name


def info(path: Path) -> dict[str, Any]:
    """``qemu-img info --output=json`` of one image (run from its directory)."""
    result = run_qemu_img(path.parent, "info", "--output=json", path.name)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def info_error(path: Path) -> str:
    """The message after ``Could not open 'NAME': `` of a failing ``qemu-img info``."""
    result = run_qemu_img(path.parent, "info", "--output=json", path.name)
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    prefix = f"qemu-img: Could not open '{path.name}': "
    line = result.stderr.strip()
    assert line.startswith(prefix), line
    return line.removeprefix(prefix)


def patched(source: Path, name: str, patch: Callable[[bytearray], None]) -> Path:
    data = bytearray(source.read_bytes())
    patch(data)
    target = source.parent / name
    target.write_bytes(bytes(data))
    return target


def put(data: bytearray, offset: int, fmt: str, value: int) -> None:
    struct.pack_into(fmt, data, offset, value)


def libvirt_header(data: bytes, bound: int = LIBVIRT_MAX_HEADER) -> Header:
    """What libvirt reads of a file: at most ``bound`` bytes, never past its end."""
    return Header.of(data[:bound])


def qcow2_extension_start(data: bytes) -> int:
    version = struct.unpack_from(">I", data, 4)[0]
    return 72 if version == 2 else struct.unpack_from(">I", data, 100)[0]


def qcow2_backing_format_extension(data: bytes) -> int:
    """Offset of the first backing-format extension (its type field) in a qemu-made image."""
    offset = qcow2_extension_start(data)
    while True:
        kind, length = struct.unpack_from(">II", data, offset)
        if kind == qcow2.EXT_BACKING_FORMAT:
            return offset
        assert kind != qcow2.EXT_END, "no backing-format extension"
        offset += 8 + ((length + 7) & ~7)


@pytest.fixture
def base_raw(tmp_path: Path) -> Path:
    return create(tmp_path, "base.raw", "-f", "raw")


@pytest.fixture
def top_v3(tmp_path: Path, base_raw: Path) -> Path:
    """A qemu-img qcow2 v3 image ``-b base.raw -F raw``: the corruption matrix's good image."""
    return create(tmp_path, "top.qcow2", "-f", "qcow2", "-b", base_raw.name, "-F", "raw")


@pytest.fixture
def top_v2(tmp_path: Path, base_raw: Path) -> Path:
    return create(
        tmp_path, "top-v2.qcow2", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw"
    )


# --------------------------------------------------------------------------- decoders vs qemu-img


def _make_qcow2_base(cwd: Path) -> None:
    create(cwd, "base.qcow2", "-f", "qcow2")


def _make_vmdk_base(cwd: Path) -> None:
    create(cwd, "base.vmdk", "-f", "vmdk")


# id, extra set-up, qemu-img create arguments, format, size, libvirt's records, AUTO_SAFE
DECODER_CASES = [
    (
        "qcow2-compat-0.10-raw",
        None,
        ["-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw"],
        "qcow2",
        "1M",
        ("raw",),
        False,
    ),
    (
        "qcow2-compat-1.1-raw",
        None,
        ["-f", "qcow2", "-o", "compat=1.1", "-b", "base.raw", "-F", "raw"],
        "qcow2",
        "3M",
        ("raw",),
        False,
    ),
    (
        "qcow2-compat-1.1-qcow2",
        _make_qcow2_base,
        ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"],
        "qcow2",
        None,
        ("qcow2",),
        False,
    ),
    (
        "qcow2-compat-0.10-qcow2",
        _make_qcow2_base,
        ["-f", "qcow2", "-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2"],
        "qcow2",
        "5M",
        ("qcow2",),
        False,
    ),
    ("qcow2-no-backing", None, ["-f", "qcow2"], "qcow2", "7M", (), False),
    ("qcow-raw", None, ["-f", "qcow", "-b", "base.raw", "-F", "raw"], "qcow", None, (), False),
    ("qcow-no-backing", None, ["-f", "qcow"], "qcow", "2M", (), False),
    ("qed-raw", None, ["-f", "qed", "-b", "base.raw", "-F", "raw"], "qed", "4M", ("raw",), False),
    (
        "qed-qcow2",
        _make_qcow2_base,
        ["-f", "qed", "-b", "base.qcow2", "-F", "qcow2"],
        "qed",
        None,
        (),
        True,
    ),
    ("qed-no-backing", None, ["-f", "qed"], "qed", "1M", (), False),
    (
        "vmdk-vmdk",
        _make_vmdk_base,
        ["-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk"],
        "vmdk",
        None,
        (),
        False,
    ),
    ("vmdk-no-backing", None, ["-f", "vmdk"], "vmdk", "6M", (), False),
]


def _made(
    tmp_path: Path, setup: Callable[[Path], None] | None, args: list[str], size: str | None
) -> Path:
    create(tmp_path, "base.raw", "-f", "raw")
    if setup is not None:
        setup(tmp_path)
    return create(tmp_path, "image", *args, size=size)


def _decode_qemu(format: str, data: bytes) -> HeaderInfo:
    header = Header.of(data)
    if format == "qcow2":
        return qcow2.decode_qemu(header)
    if format == "qcow":
        return qcow.decode_qemu(header)
    if format == "qed":
        return qed.decode_qemu(header)
    decoded, extents = vmdk.decode_qemu(header)
    assert extents == ()  # a monolithic sparse file has no extent files
    return decoded


def _decode_libvirt(format: str, data: bytes, rules: LibvirtReadRules = MODERN) -> HeaderInfo:
    header = libvirt_header(data)
    if format == "qcow2":
        return qcow2.decode_libvirt(header, rules)
    if format == "qcow":
        return qcow.decode_libvirt(header, rules)
    if format == "qed":
        return qed.decode_libvirt(header)
    return vmdk.decode_libvirt(header, rules)


def _name(raw: bytes | None) -> str | None:
    return None if raw is None else decode_c_name(raw)


@needs_qemu_img
@pytest.mark.parametrize(
    ("setup", "args", "format", "size"),
    [pytest.param(*case[1:5], id=case[0]) for case in DECODER_CASES],
)
def test_qemu_decoder_reports_what_qemu_img_info_reports(tmp_path, setup, args, format, size):
    image = _made(tmp_path, setup, args, size)
    expected = info(image)
    decoded = _decode_qemu(format, image.read_bytes())
    assert expected["format"] == format
    assert decoded.format == format
    assert _name(decoded.backing_name) == expected.get("backing-filename")
    assert decoded.backing_format == expected.get("backing-filename-format")
    assert decoded.virtual_size == expected["virtual-size"]
    if format != "vmdk":  # the VMDK decoders leave the grain size out
        assert decoded.cluster_size == expected.get("cluster-size")


@needs_qemu_img
@pytest.mark.parametrize(
    ("setup", "args", "format", "size", "records", "probe_safe"),
    [pytest.param(*case[1:], id=case[0]) for case in DECODER_CASES],
)
def test_libvirt_decoder_reads_name_size_and_recorded_formats(
    tmp_path, setup, args, format, size, records, probe_safe
):
    """Name and size as qemu-img reports them; formats as libvirt-rules.md §3.4 records them:
    the qcow2 extension, QED's raw flag (else AUTO_SAFE), none for qcow v1 and VMDK."""
    image = _made(tmp_path, setup, args, size)
    expected = info(image)
    decoded = _decode_libvirt(format, image.read_bytes())
    assert decoded.format == format
    assert _name(decoded.backing_name) == expected.get("backing-filename")
    assert decoded.backing_format_records == records
    assert decoded.backing_probe_safe is probe_safe
    assert decoded.virtual_size == expected["virtual-size"]


@needs_qemu_img
@pytest.mark.parametrize(
    ("compat", "version"), [("0.10", 2), ("1.1", 3)], ids=["compat-0.10", "compat-1.1"]
)
def test_qcow2_decoders_give_version_and_compat_of_qemu_img(tmp_path, base_raw, compat, version):
    image = create(
        tmp_path,
        "top.qcow2",
        "-f",
        "qcow2",
        "-o",
        f"compat={compat}",
        "-b",
        "base.raw",
        "-F",
        "raw",
    )
    assert info(image)["format-specific"]["data"]["compat"] == compat
    data = image.read_bytes()
    for decoded in (
        qcow2.decode_qemu(Header.of(data)),
        qcow2.decode_libvirt(Header.of(data), MODERN),
    ):
        assert decoded.version == version
        assert decoded.compat == compat


@needs_qemu_img
def test_qcow_v1_decoders_give_version_1_and_no_format(tmp_path, base_raw):
    image = create(tmp_path, "top.qcow", "-f", "qcow", "-b", "base.raw", "-F", "raw")
    data = image.read_bytes()
    assert "backing-filename-format" not in info(image)  # -F validated, then discarded (§1.4)
    assert data[48:56] == b"base.raw"  # qemu-img writes the name right after the 48-byte header
    for decoded in (
        qcow.decode_qemu(Header.of(data)),
        qcow.decode_libvirt(Header.of(data), MODERN),
    ):
        assert decoded.version == 1
        assert decoded.backing_name == b"base.raw"
        assert decoded.backing_format_records == ()


@needs_qemu_img
def test_vmdk_qemu_decoder_forces_parent_format_vmdk_and_version_1(tmp_path):
    create(tmp_path, "base.vmdk", "-f", "vmdk")
    image = create(tmp_path, "top.vmdk", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk")
    decoded, _ = vmdk.decode_qemu(Header.of(image.read_bytes()))
    assert info(image)["backing-filename-format"] == "vmdk"
    assert decoded.backing_format_records == ("vmdk",)
    assert decoded.version == 1  # qemu-img creates VMDK version 1 (§1.6)


@needs_qemu_img
def test_vmdk_libvirt_decoder_searches_only_its_header_buffer(tmp_path):
    """libvirt searches from 0x200 to the end of what it read; a bound before the hint hides it."""
    create(tmp_path, "base.vmdk", "-f", "vmdk")
    data = create(tmp_path, "top.vmdk", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk").read_bytes()
    hint = data.index(b'parentFileNameHint="')
    assert hint > 0x200
    assert vmdk.decode_libvirt(Header.of(data[:LIBVIRT_MAX_HEADER]), MODERN).backing_name == (
        b"base.vmdk"
    )
    assert vmdk.decode_libvirt(Header.of(data[: hint + 10]), MODERN).backing_name is None


def _vmdk_with_hint(tmp_path: Path, line: bytes) -> Path:
    create(tmp_path, "base.vmdk", "-f", "vmdk")
    made = create(tmp_path, "top.vmdk", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk")
    original = b'parentFileNameHint="base.vmdk"'
    data = bytearray(made.read_bytes())
    at = data.index(original)
    data[at : at + len(original)] = line
    end = data.index(b"\0", at)  # the descriptor's NUL padding absorbs the length change
    grown = len(line) - len(original)
    if grown > 0:
        assert data[end : end + grown] == bytes(grown)
        del data[end : end + grown]
    else:
        data[end:end] = bytes(-grown)
    image = tmp_path / "hint.vmdk"
    image.write_bytes(bytes(data))
    assert image.stat().st_size == made.stat().st_size
    return image


@needs_qemu_img
def test_vmdk_empty_parent_hint_means_no_backing(tmp_path):
    """§1.6/§3.4: an empty value means no backing (libvirt); qemu copies an empty name."""
    image = _vmdk_with_hint(tmp_path, b'parentFileNameHint=""')
    assert "backing-filename" not in info(image)
    data = image.read_bytes()
    assert vmdk.decode_qemu(Header.of(data))[0].backing_name is None
    assert vmdk.decode_libvirt(libvirt_header(data), MODERN).backing_name is None


@needs_qemu_img
def test_vmdk_parent_hint_with_spaces_is_misread_by_qemu_and_unseen_by_libvirt(tmp_path):
    """§1.6: qemu skips exactly 20 characters after the key, so `parentFileNameHint = "x"`
    yields the name " " (observed); libvirt searches for `parentFileNameHint="` and finds none."""
    image = _vmdk_with_hint(tmp_path, b'parentFileNameHint = "base.vmdk"')
    assert info(image)["backing-filename"] == " "
    data = image.read_bytes()
    assert vmdk.decode_qemu(Header.of(data))[0].backing_name == b" "
    assert vmdk.decode_libvirt(libvirt_header(data), MODERN).backing_name is None


@needs_qemu_img
def test_raw_image_is_raw_for_every_detector(tmp_path, base_raw):
    data = base_raw.read_bytes()
    assert info(base_raw)["format"] == "raw"
    assert detect.detect_qemu(data[:512], base_raw.name) == "raw"
    assert detect.detect_libvirt(libvirt_header(data)) == "raw"
    assert detect.detect_libvirt_2012(
        libvirt_header(data, LIBVIRT_2012_MAX_HEADER), "base.raw"
    ) == ("raw")


# --------------------------------------------------------------------------- the encoder


ENCODER_CASES = [
    pytest.param(qcow2.Qcow2Image(MIB, version=2), id="v2-no-backing"),
    pytest.param(qcow2.Qcow2Image(MIB, version=3), id="v3-no-backing"),
    pytest.param(qcow2.Qcow2Image(MIB, b"base.raw", "raw", version=2), id="v2-raw-backing"),
    pytest.param(qcow2.Qcow2Image(2 * MIB, b"base.raw", "raw", version=3), id="v3-raw-backing"),
    pytest.param(qcow2.Qcow2Image(MIB, b"base.qcow2", "qcow2", version=2), id="v2-qcow2-backing"),
    pytest.param(
        qcow2.Qcow2Image(10 * 1024 * MIB, b"base.qcow2", "qcow2", version=3),
        id="v3-qcow2-backing-10G",
    ),
    pytest.param(qcow2.Qcow2Image(MIB, data_file=b"data.raw"), id="v3-data-file"),
    pytest.param(
        qcow2.Qcow2Image(MIB, b"base.raw", "raw", data_file=b"data.raw"),
        id="v3-data-file-and-backing",
    ),
    pytest.param(
        qcow2.Qcow2Image(100 * MIB, b"base.raw", "raw", cluster_bits=9), id="v3-512-byte-clusters"
    ),
    pytest.param(
        qcow2.Qcow2Image(3 * MIB, b"base.raw", "raw", version=2, cluster_bits=12),
        id="v2-4k-clusters",
    ),
]


@needs_qemu_img
@pytest.mark.parametrize("image", ENCODER_CASES)
def test_encoded_qcow2_passes_check_and_reads_back_in_qemu_img(tmp_path, image):
    create(tmp_path, "base.raw", "-f", "raw")
    create(tmp_path, "base.qcow2", "-f", "qcow2")
    create(tmp_path, "data.raw", "-f", "raw")
    path = tmp_path / "encoded.qcow2"
    path.write_bytes(qcow2.encode(image))

    checked = run_qemu_img(tmp_path, "check", path.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No errors were found on the image." in checked.stdout

    got = info(path)
    assert got["format"] == "qcow2"
    assert got["virtual-size"] == image.virtual_size
    assert got["cluster-size"] == 1 << image.cluster_bits
    expected_name = image.backing_name.decode() if image.backing_name else None
    assert got.get("backing-filename") == expected_name
    assert got.get("backing-filename-format") == image.backing_format
    specific = got["format-specific"]["data"]
    assert specific["compat"] == ("0.10" if image.version == 2 else "1.1")
    expected_data_file = image.data_file.decode() if image.data_file else None
    assert specific.get("data-file") == expected_data_file


@needs_qemu_img
@pytest.mark.parametrize("version", [2, 3])
def test_encoded_qcow2_chain_opens_in_qemu_img_backing_chain(tmp_path, version):
    """Three encoded layers naming each other relatively are one chain for qemu-img."""
    create(tmp_path, "base.raw", "-f", "raw")
    layers = [("mid.qcow2", b"base.raw", "raw"), ("top.qcow2", b"mid.qcow2", "qcow2")]
    for name, backing, fmt in layers:
        (tmp_path / name).write_bytes(qcow2.encode(qcow2.Qcow2Image(MIB, backing, fmt, version)))
    result = run_qemu_img(tmp_path, "info", "--backing-chain", "--output=json", "top.qcow2")
    assert result.returncode == 0, result.stderr
    chain = json.loads(result.stdout)
    assert [(layer["filename"], layer["format"]) for layer in chain] == [
        ("top.qcow2", "qcow2"),
        ("mid.qcow2", "qcow2"),
        ("base.raw", "raw"),
    ]


def test_encoder_refuses_versions_it_cannot_write():
    with pytest.raises(ValueError):
        qcow2.encode(qcow2.Qcow2Image(MIB, version=4))


def test_encoder_refuses_a_backing_name_that_does_not_fit_in_cluster_0():
    with pytest.raises(ValueError):
        qcow2.encode(qcow2.Qcow2Image(MIB, b"x" * 600, "raw", cluster_bits=9))


# --------------------------------------------------------------------------- qemu's rejections


def _set_name_size(size: int) -> Callable[[bytearray], None]:
    return lambda data: put(data, 16, ">I", size)


def _set_backing_offset_past_cluster(extra: int) -> Callable[[bytearray], None]:
    def patch(data: bytearray) -> None:
        cluster = 1 << struct.unpack_from(">I", data, 20)[0]
        put(data, 8, ">Q", cluster + extra)

    return patch


def _name_crosses_cluster_end(data: bytearray) -> None:
    cluster = 1 << struct.unpack_from(">I", data, 20)[0]
    put(data, 8, ">Q", cluster - 4)
    put(data, 16, ">I", 8)
    data[cluster - 4 : cluster + 4] = b"base.raw"


def _set_incompatible(bit: int) -> Callable[[bytearray], None]:
    return lambda data: put(data, 72, ">Q", 1 << bit)


def _set_version(version: int) -> Callable[[bytearray], None]:
    return lambda data: put(data, 4, ">I", version)


def _set_header_length(length: int) -> Callable[[bytearray], None]:
    return lambda data: put(data, 100, ">I", length)


def _set_format_extension_length(length: int) -> Callable[[bytearray], None]:
    def patch(data: bytearray) -> None:
        put(data, qcow2_backing_format_extension(bytes(data)) + 4, ">I", length)

    return patch


# The corruption matrix of image-formats.md §1.3, each patch on a good `-b base.raw -F raw` image.
CORRUPTION_MATRIX = [
    pytest.param(_set_name_size(1024), "Backing file name too long", id="name-1024-bytes"),
    pytest.param(
        _set_backing_offset_past_cluster(8), "Invalid backing file offset", id="offset-cluster+8"
    ),
    pytest.param(
        _set_backing_offset_past_cluster(0), "Backing file name too long", id="offset-cluster"
    ),
    pytest.param(
        _name_crosses_cluster_end, "Backing file name too long", id="name-crosses-cluster"
    ),
    pytest.param(
        _set_incompatible(5),
        "Unsupported qcow2 feature(s): Unknown incompatible feature: 20",
        id="incompatible-bit-5",
    ),
    pytest.param(
        _set_incompatible(63),
        "Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000000",
        id="incompatible-bit-63",
    ),
    pytest.param(_set_version(4), "Unsupported qcow2 version 4", id="version-4"),
    pytest.param(_set_header_length(100), "qcow2 header too short", id="header-length-100"),
    pytest.param(
        _set_format_extension_length(0x7FFFFFFF),
        "Header extension too large",
        id="extension-length-0x7fffffff",
    ),
    pytest.param(
        _set_format_extension_length(16),
        "ERROR: ext_backing_format: len=16 too large (>=16)",
        id="format-extension-length-16",
    ),
]


@needs_qemu_img
@pytest.mark.parametrize(("patch", "message"), CORRUPTION_MATRIX)
def test_qemu_decoder_rejects_as_qemu_img_does(top_v3, patch, message):
    image = patched(top_v3, "bad.qcow2", patch)
    assert info_error(image) == message
    with pytest.raises(HeaderRejected) as rejected:
        qcow2.decode_qemu(Header.of(image.read_bytes()))
    assert str(rejected.value) == message


@needs_qemu_img
def test_qcow2_header_with_version_1_is_probed_as_qcow_v1_and_rejected_there(top_v3):
    """§1.3: version 1 → probed as qcow v1, then `Cluster size must be between 512 and 64k`."""
    image = patched(top_v3, "v1.qcow2", _set_version(1))
    message = "Cluster size must be between 512 and 64k"
    assert info_error(image) == message
    data = image.read_bytes()
    assert detect.detect_qemu(data[:512], image.name) == "qcow"
    with pytest.raises(HeaderRejected, match=message):
        qcow.decode_qemu(Header.of(data))


@needs_qemu_img
@pytest.mark.parametrize("version", [2, 3])
def test_1023_byte_backing_name_is_accepted_by_qemu_and_libvirt(tmp_path, base_raw, version):
    image = create(
        tmp_path,
        "top.qcow2",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10" if version == 2 else "compat=1.1",
        "-b",
        "base.raw",
        "-F",
        "raw",
    )
    image = patched(image, "n1023.qcow2", _set_name_size(1023))
    assert info(image)["backing-filename"] == "base.raw"  # NUL-padded name: C string
    data = image.read_bytes()
    assert _name(qcow2.decode_qemu(Header.of(data)).backing_name) == "base.raw"
    libvirt_name = qcow2.decode_libvirt(libvirt_header(data), MODERN).backing_name
    assert libvirt_name is not None
    assert len(libvirt_name) == 1023
    assert decode_c_name(libvirt_name) == "base.raw"


@needs_qemu_img
@pytest.mark.parametrize(
    ("source", "cut", "message"),
    [
        pytest.param("qcow2", 48, "qcow2 header too short", id="qcow2-v3-48"),
        pytest.param("qcow2", 73, "qcow2 header too short", id="qcow2-v3-73"),
        pytest.param("qcow2", 100, "qcow2 header too short", id="qcow2-v3-100"),
        pytest.param(
            "qcow",
            30,
            "Cluster size must be between 512 and 64k",
            id="qcow-30",
        ),
        pytest.param(
            "qcow",
            8,
            "Image size is too small (must be at least 2 bytes)",
            id="qcow-8",
        ),
    ],
)
def test_qemu_reads_a_truncated_header_as_zero_padded(tmp_path, base_raw, source, cut, message):
    """qemu-img reads past the end of a short file as zeros, so a cut header fails on the first
    check its zeros break (observed with qemu-img 7.2: a v3 header cut at 48 bytes has
    header_length 0, `qcow2 header too short`)."""
    made = create(tmp_path, f"top.{source}", "-f", source, "-b", "base.raw", "-F", "raw")
    image = tmp_path / "short.img"
    image.write_bytes(made.read_bytes()[:cut])
    assert info_error(image) == message
    decoder = qcow2.decode_qemu if source == "qcow2" else qcow.decode_qemu
    with pytest.raises(HeaderRejected) as rejected:
        decoder(Header.of(image.read_bytes()))
    assert str(rejected.value) == message


@needs_qemu_img
@pytest.mark.parametrize(
    ("compat", "cut"),
    [("1.1", 104), ("1.1", 114), ("1.1", 116), ("1.1", 124), ("1.1", 200), ("0.10", 80)],
)
def test_qemu_opens_a_qcow2_cut_inside_its_extensions_without_backing(
    tmp_path, base_raw, compat, cut
):
    """Observed: a qemu-img image cut between its header and its backing name opens, as
    qcow2, with no backing (the zeros past EOF end the extensions and make the name empty)."""
    made = create(
        tmp_path,
        "top.qcow2",
        "-f",
        "qcow2",
        "-o",
        f"compat={compat}",
        "-b",
        "base.raw",
        "-F",
        "raw",
    )
    image = tmp_path / "cut.qcow2"
    image.write_bytes(made.read_bytes()[:cut])
    got = info(image)
    assert got["format"] == "qcow2"
    assert "backing-filename" not in got
    decoded = qcow2.decode_qemu(Header.of(image.read_bytes()))
    assert decoded.backing_name is None
    assert decoded.virtual_size == got["virtual-size"]


@needs_qemu_img
def test_qcow_v1_header_cut_before_its_name_opens_without_backing(tmp_path, base_raw):
    made = create(tmp_path, "top.qcow", "-f", "qcow", "-b", "base.raw", "-F", "raw")
    image = tmp_path / "short.qcow"
    image.write_bytes(made.read_bytes()[:47])
    got = info(image)
    assert got["format"] == "qcow"
    assert "backing-filename" not in got
    decoded = qcow.decode_qemu(Header.of(image.read_bytes()))
    assert decoded.backing_name is None
    assert decoded.virtual_size == got["virtual-size"]


@needs_qemu_img
@pytest.mark.parametrize("cut", [4, 12])
def test_vmdk_sparse_header_cut_short_is_rejected_not_crashed_on(tmp_path, cut):
    source = create(tmp_path, "base.vmdk", "-f", "vmdk")
    image = tmp_path / "short.vmdk"
    image.write_bytes(source.read_bytes()[:cut])
    assert info_error(image) == "L1 entry size is invalid"
    with pytest.raises(HeaderRejected):
        vmdk.decode_qemu(Header.of(image.read_bytes()))


@needs_qemu_img
def test_vmdk3_magic_only_file_is_rejected_not_crashed_on(tmp_path):
    image = tmp_path / "magic.vmdk"
    image.write_bytes(b"COWD")
    result = run_qemu_img(tmp_path, "info", image.name)
    assert result.returncode == 1
    with pytest.raises(HeaderRejected):
        vmdk.decode_qemu(Header.of(image.read_bytes()))


@needs_qemu_img
def test_qemu_reads_a_name_cut_by_end_of_file_as_its_first_bytes(tmp_path, top_v3):
    data = top_v3.read_bytes()
    offset = struct.unpack_from(">Q", data, 8)[0]
    image = tmp_path / "cut.qcow2"
    image.write_bytes(data[: offset + 2])
    assert info(image)["backing-filename"] == "ba"
    assert qcow2.decode_qemu(Header.of(image.read_bytes())).backing_name == b"ba"


@needs_qemu_img
@pytest.mark.parametrize(
    ("args", "size"),
    [
        (["-f", "qcow2"], 65535),
        (["-f", "qcow2", "-o", "compat=0.10"], 1000),
        (["-f", "qcow"], 1000),
    ],
    ids=["qcow2-v3-65535", "qcow2-v2-1000", "qcow-1000"],
)
def test_qemu_decoder_reports_virtual_size_in_whole_sectors(tmp_path, base_raw, args, size):
    made = create(tmp_path, "top.img", *args, "-b", "base.raw", "-F", "raw")
    image = patched(made, "odd.img", lambda data: put(data, 24, ">Q", size))
    expected = info(image)["virtual-size"]
    assert expected == size // 512 * 512
    data = image.read_bytes()
    decoder = qcow.decode_qemu if "qcow" in args else qcow2.decode_qemu
    assert decoder(Header.of(data)).virtual_size == expected


def _empty_format_length(data: bytearray) -> None:
    put(data, qcow2_backing_format_extension(bytes(data)) + 4, ">I", 0)


def _format_starting_with_nul(data: bytearray) -> None:
    data[qcow2_backing_format_extension(bytes(data)) + 8] = 0


@needs_qemu_img
@pytest.mark.parametrize(
    "patch", [_empty_format_length, _format_starting_with_nul], ids=["length-0", "leading-nul"]
)
def test_qemu_decoder_reports_no_format_for_an_empty_format_extension(top_v3, patch):
    image = patched(top_v3, "empty-format.qcow2", patch)
    got = info(image)
    assert got["backing-filename"] == "base.raw"
    assert "backing-filename-format" not in got
    assert qcow2.decode_qemu(Header.of(image.read_bytes())).backing_format is None


def _set_crypt(method: int) -> Callable[[bytearray], None]:
    return lambda data: put(data, 32, ">I", method)


def _set_compression(type_: int, bit: bool) -> Callable[[bytearray], None]:
    def patch(data: bytearray) -> None:
        data[104] = type_
        if bit:
            put(data, 72, ">Q", qcow2.INCOMPAT_COMPRESSION)

    return patch


# Further qcow2_do_open checks on header fields, with qemu-img 7.2's messages (observed).
FURTHER_REJECTIONS = [
    pytest.param(_set_crypt(3), "Unsupported encryption method 3", id="crypt-method-3"),
    pytest.param(
        _set_compression(255, True),
        "qcow2: unknown compression type: 255",
        id="compression-type-255",
    ),
    pytest.param(
        _set_compression(0, True),
        "qcow2: Compression type incompatible feature bit must not be set",
        id="compression-bit-with-zlib",
    ),
    pytest.param(
        _set_compression(1, False),
        "qcow2: Compression type incompatible feature bit must be set",
        id="zstd-without-compression-bit",
    ),
    pytest.param(
        lambda data: put(data, 40, ">Q", 65537),
        "Active L1 table offset invalid",
        id="l1-offset-unaligned",
    ),
    pytest.param(
        lambda data: put(data, 48, ">Q", 65537),
        "Reference count table offset invalid",
        id="refcount-table-offset-unaligned",
    ),
]


@needs_qemu_img
@pytest.mark.parametrize(("patch", "message"), FURTHER_REJECTIONS)
def test_qemu_decoder_rejects_further_header_fields_as_qemu_img_does(top_v3, patch, message):
    image = patched(top_v3, "bad.qcow2", patch)
    assert info_error(image) == message
    with pytest.raises(HeaderRejected) as rejected:
        qcow2.decode_qemu(Header.of(image.read_bytes()))
    assert str(rejected.value) == message


@needs_qemu_img
def test_qemu_accepts_zstd_with_its_compression_bit(top_v3):
    image = patched(top_v3, "zstd.qcow2", _set_compression(1, True))
    assert info(image)["backing-filename"] == "base.raw"
    decoded = qcow2.decode_qemu(Header.of(image.read_bytes()))
    assert decoded.backing_name == b"base.raw"
    assert "compression-type" in decoded.features


@pytest.fixture
def qed_raw(tmp_path: Path, base_raw: Path) -> Path:
    return create(tmp_path, "top.qed", "-f", "qed", "-b", "base.raw", "-F", "raw")


@pytest.fixture
def qcow_v1(tmp_path: Path, base_raw: Path) -> Path:
    return create(tmp_path, "top.qcow", "-f", "qcow", "-b", "base.raw", "-F", "raw")


@needs_qemu_img
@pytest.mark.parametrize(
    ("patch", "message"),
    [
        pytest.param(
            lambda data: put(data, 4, "<I", 1000),
            "QED cluster size is invalid",
            id="cluster-size-1000",
        ),
        pytest.param(
            lambda data: put(data, 8, "<I", 3),
            "QED table size is invalid",
            id="table-size-3",
        ),
        pytest.param(
            lambda data: put(data, 48, "<Q", 1000),
            "QED image size is invalid",
            id="image-size-1000",
        ),
        pytest.param(
            lambda data: put(data, 16, "<Q", 0x15),
            "Unsupported QED features: 10",
            id="unknown-feature-0x10",
        ),
        pytest.param(
            lambda data: put(data, 56, "<I", 1 << 20),
            "QED backing filename offset is invalid",
            id="name-offset-past-header",
        ),
    ],
)
def test_qed_qemu_decoder_rejects_as_qemu_img_does(qed_raw, patch, message):
    image = patched(qed_raw, "bad.qed", patch)
    assert info_error(image) == message
    with pytest.raises(HeaderRejected) as rejected:
        qed.decode_qemu(Header.of(image.read_bytes()))
    assert str(rejected.value) == message


@needs_qemu_img
@pytest.mark.parametrize(
    ("patch", "message"),
    [
        pytest.param(
            lambda data: put(data, 36, ">I", 2),
            "invalid encryption method in qcow header",
            id="crypt-method-2",
        ),
        pytest.param(
            lambda data: put(data, 33, ">B", 5),
            "L2 table size must be between 512 and 64k",
            id="l2-bits-5",
        ),
        pytest.param(_set_name_size(1024), "Backing file name too long", id="name-1024-bytes"),
    ],
)
def test_qcow_v1_qemu_decoder_rejects_as_qemu_img_does(qcow_v1, patch, message):
    image = patched(qcow_v1, "bad.qcow", patch)
    assert info_error(image) == message
    with pytest.raises(HeaderRejected) as rejected:
        qcow.decode_qemu(Header.of(image.read_bytes()))
    assert str(rejected.value) == message


def _vmdk_with_capacity_0(tmp_path: Path, flat_extent: bool) -> Path:
    """A sparse VMDK whose capacity is 0: qemu parses its embedded descriptor as a descriptor
    file (image-formats.md §1.6), optionally rewritten to name a FLAT extent ``ext.raw``."""
    create(tmp_path, "base.vmdk", "-f", "vmdk")
    made = create(tmp_path, "top.vmdk", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk")
    data = bytearray(made.read_bytes())
    put(data, 12, "<Q", 0)
    if flat_extent:
        start = struct.unpack_from("<Q", data, 28)[0] * 512
        size = struct.unpack_from("<Q", data, 36)[0] * 512
        text = bytes(data[start : start + size]).split(b"\0", 1)[0]
        assert b'createType="monolithicSparse"' in text
        text = text.replace(b'createType="monolithicSparse"', b'createType="monolithicFlat"')
        lines = [
            b'RW 2048 FLAT "ext.raw" 0' if line.startswith(b"RW ") else line
            for line in text.split(b"\n")
        ]
        data[start : start + size] = b"\n".join(lines).ljust(size, b"\0")
        (tmp_path / "ext.raw").write_bytes(b"secret.on.host".ljust(MIB, b"\0"))
    image = tmp_path / "capacity0.vmdk"
    image.write_bytes(bytes(data))
    return image


@needs_qemu_img
def test_vmdk_capacity_0_makes_qemu_parse_the_embedded_descriptor(tmp_path):
    image = _vmdk_with_capacity_0(tmp_path, flat_extent=False)
    message = "Unsupported image type 'monolithicSparse'"
    assert info_error(image) == message
    with pytest.raises(HeaderRejected) as rejected:
        vmdk.decode_qemu(Header.of(image.read_bytes()))
    assert str(rejected.value) == message


@needs_qemu_img
def test_vmdk_capacity_0_reveals_the_embedded_descriptors_extents(tmp_path):
    image = _vmdk_with_capacity_0(tmp_path, flat_extent=True)
    got = info(image)
    assert got["format-specific"]["data"]["create-type"] == "monolithicFlat"
    assert [extent["filename"] for extent in got["format-specific"]["data"]["extents"]] == [
        "ext.raw"
    ]
    decoded, extents = vmdk.decode_qemu(Header.of(image.read_bytes()))
    assert extents == (b"ext.raw",)
    assert decoded.virtual_size == got["virtual-size"]
    assert _name(decoded.backing_name) == got["backing-filename"]


# --------------------------------------------------------------------------- libvirt's quirks


@needs_qemu_img
def test_libvirt_reads_a_1024_byte_name_as_no_backing(top_v3):
    """§3.4: size > 1023 → silently no backing (since 2014); qemu refuses the image instead."""
    data = bytearray(top_v3.read_bytes())
    _set_name_size(1024)(data)
    decoded = qcow2.decode_libvirt(libvirt_header(bytes(data)), MODERN)
    assert decoded.backing_name is None
    assert decoded.backing_format_records == ()
    assert decoded.virtual_size == 1 * MIB


@needs_qemu_img
def test_libvirt_2012_had_no_name_length_limit(top_v3):
    """The 1023-byte limit came with 34e317cfd (2014); libvirt 1.0 read the 1024 bytes."""
    data = bytearray(top_v3.read_bytes())
    _set_name_size(1024)(data)
    name = qcow2.decode_libvirt(libvirt_header(bytes(data), LIBVIRT_2012_MAX_HEADER), RULES_2012)
    assert name.backing_name is not None
    assert decode_c_name(name.backing_name) == "base.raw"


def _move_name(to: int) -> Callable[[bytearray], None]:
    def patch(data: bytearray) -> None:
        offset = struct.unpack_from(">Q", data, 8)[0]
        size = struct.unpack_from(">I", data, 16)[0]
        name = bytes(data[offset : offset + size])
        data[offset : offset + size] = bytes(size)
        data[to : to + size] = name
        put(data, 8, ">Q", to)

    return patch


@needs_qemu_img
def test_name_beyond_libvirt_header_bound_reads_as_no_backing_but_qemu_follows_it(top_v3):
    """§6 differential: name at 40000 (< 64 KiB cluster, > 0x8200): qemu follows, libvirt not."""
    image = patched(top_v3, "far.qcow2", _move_name(40000))
    assert info(image)["backing-filename"] == "base.raw"
    data = image.read_bytes()
    assert qcow2.decode_qemu(Header.of(data)).backing_name == b"base.raw"
    assert qcow2.decode_libvirt(libvirt_header(data), MODERN).backing_name is None


@needs_qemu_img
def test_name_straddling_libvirt_header_bound_reads_as_no_backing(top_v3):
    """§3.4: offset + size > buflen → no backing, even though offset itself is inside."""
    image = patched(top_v3, "straddle.qcow2", _move_name(LIBVIRT_MAX_HEADER - 4))
    assert info(image)["backing-filename"] == "base.raw"
    data = image.read_bytes()
    assert qcow2.decode_libvirt(libvirt_header(data), MODERN).backing_name is None
    # The same image read with a bound past the name does have a backing.
    assert qcow2.decode_libvirt(Header.of(data), MODERN).backing_name == b"base.raw"


@needs_qemu_img
def test_name_beyond_the_2012_header_bound_is_seen_only_by_modern_libvirt(top_v3):
    """libvirt 1.0 read STORAGE_MAX_HEAD = 10240 bytes; later ones read 0x8200."""
    data = bytearray(top_v3.read_bytes())
    _move_name(12000)(data)
    modern = qcow2.decode_libvirt(libvirt_header(bytes(data)), MODERN)
    old = qcow2.decode_libvirt(libvirt_header(bytes(data), LIBVIRT_2012_MAX_HEADER), RULES_2012)
    assert modern.backing_name == b"base.raw"
    assert old.backing_name is None


@needs_qemu_img
def test_libvirt_2012_rules_miss_the_v3_backing_format_extension(top_v3):
    """2012 scans extensions from 72 even in v3 (where 72 holds feature bits, here 0 = end)."""
    data = top_v3.read_bytes()
    assert struct.unpack_from(">I", data, 100)[0] == 112  # qemu-img's v3 header_length
    old = qcow2.decode_libvirt(libvirt_header(data, LIBVIRT_2012_MAX_HEADER), RULES_2012)
    assert old.backing_name == b"base.raw"
    assert old.backing_format_records == ()
    modern = qcow2.decode_libvirt(libvirt_header(data), MODERN)
    assert modern.backing_format_records == ("raw",)


@needs_qemu_img
def test_libvirt_2012_rules_find_the_v2_backing_format_extension(top_v2):
    data = top_v2.read_bytes()
    old = qcow2.decode_libvirt(libvirt_header(data, LIBVIRT_2012_MAX_HEADER), RULES_2012)
    assert old.backing_name == b"base.raw"
    assert old.backing_format_records == ("raw",)


def _unaligned_extension_first(data: bytearray) -> None:
    """Rewrite the extension area: an unknown 5-byte extension, then backing format, then end."""
    start = qcow2_extension_start(bytes(data))
    end = struct.unpack_from(">Q", data, 8)[0]
    area = struct.pack(">II", 0x12345678, 5) + b"abcde\0\0\0"
    area += struct.pack(">II", qcow2.EXT_BACKING_FORMAT, 3) + b"raw\0\0\0\0\0"
    area += struct.pack(">II", qcow2.EXT_END, 0)
    data[start:end] = area.ljust(end - start, b"\0")


@needs_qemu_img
def test_libvirt_does_not_pad_extension_lengths_so_misses_a_later_format(top_v3):
    """§3.4: libvirt advances by len, not len rounded to 8; qemu pads (and finds 'raw')."""
    image = patched(top_v3, "unaligned.qcow2", _unaligned_extension_first)
    assert info(image)["backing-filename-format"] == "raw"
    data = image.read_bytes()
    assert qcow2.decode_qemu(Header.of(data)).backing_format == "raw"
    decoded = qcow2.decode_libvirt(libvirt_header(data), MODERN)
    assert decoded.backing_name == b"base.raw"
    assert decoded.backing_format_records == ()


@needs_qemu_img
def test_qemu_takes_the_last_of_two_backing_format_extensions(top_v3):
    """§1.3: QEMU does not enforce "at most once"; with two 0xE2792ACA extensions the last wins."""

    def two_formats(data: bytearray) -> None:
        start = qcow2_extension_start(bytes(data))
        end = struct.unpack_from(">Q", data, 8)[0]
        area = struct.pack(">II", qcow2.EXT_BACKING_FORMAT, 3) + b"raw\0\0\0\0\0"
        area += struct.pack(">II", qcow2.EXT_BACKING_FORMAT, 5) + b"qcow2\0\0\0"
        area += struct.pack(">II", qcow2.EXT_END, 0)
        data[start:end] = area.ljust(end - start, b"\0")

    image = patched(top_v3, "twice.qcow2", two_formats)
    assert info(image)["backing-filename-format"] == "qcow2"
    assert qcow2.decode_qemu(Header.of(image.read_bytes())).backing_format == "qcow2"


@needs_qemu_img
def test_zero_name_size_or_offset_means_no_backing_for_libvirt(top_v3):
    data = bytearray(top_v3.read_bytes())
    put(data, 16, ">I", 0)
    assert qcow2.decode_libvirt(libvirt_header(bytes(data)), MODERN).backing_name is None
    data = bytearray(top_v3.read_bytes())
    put(data, 8, ">Q", 0)
    assert qcow2.decode_libvirt(libvirt_header(bytes(data)), MODERN).backing_name is None


# --------------------------------------------------------------------------- detection


def _luks(cwd: Path) -> Path:
    """A LUKS1 image; qemu-img times its key derivation, which can fail on a busy host."""
    args = ["--object", "secret,id=sec0,data=abc", "-f", "luks"]
    args += ["-o", "key-secret=sec0,iter-time=50", "x.luks", "1M"]
    for _ in range(5):
        result = run_qemu_img(cwd, "create", *args)
        if result.returncode == 0:
            return cwd / "x.luks"
    pytest.skip(f"qemu-img could not create a LUKS image: {result.stderr.strip()}")


# id, qemu-img create arguments, what libvirt's table (§1.2 / §3.3) detects
DETECTION_CASES = [
    ("qcow2-v2", ["-f", "qcow2", "-o", "compat=0.10"], "qcow2"),
    ("qcow2-v3", ["-f", "qcow2", "-o", "compat=1.1"], "qcow2"),
    ("qcow", ["-f", "qcow"], "qcow"),
    ("qed", ["-f", "qed"], "qed"),
    ("vmdk", ["-f", "vmdk"], "vmdk"),
    ("vpc", ["-f", "vpc"], "vpc"),
    ("vdi", ["-f", "vdi"], "vdi"),
    ("vhdx", ["-f", "vhdx"], "raw"),
    ("parallels", ["-f", "parallels"], "ploop"),
    ("raw", ["-f", "raw"], "raw"),
]


@needs_qemu_img
@pytest.mark.parametrize(
    ("args", "libvirt_format"), [pytest.param(*case[1:], id=case[0]) for case in DETECTION_CASES]
)
def test_detection_of_each_qemu_img_format(tmp_path, args, libvirt_format):
    image = create(tmp_path, "image", *args)
    data = image.read_bytes()
    assert detect.detect_qemu(data[:512], image.name) == info(image)["format"]
    assert detect.detect_libvirt(libvirt_header(data)) == libvirt_format


@needs_qemu_img
def test_luks_is_luks_for_qemu_and_raw_for_libvirt(tmp_path):
    """libvirt sees LUKS as an encryption of raw, not a format of its own (§1.2)."""
    image = _luks(tmp_path)
    data = image.read_bytes()
    assert info(image)["format"] == "luks"
    assert detect.detect_qemu(data[:512], image.name) == "luks"
    assert detect.detect_libvirt(libvirt_header(data)) == "raw"


@needs_qemu_img
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-f", "qcow2", "-o", "compat=0.10"], "qcow2"),
        (["-f", "qcow"], "qcow"),
        (["-f", "qed"], "qed"),
        (["-f", "vmdk"], "vmdk"),
    ],
    ids=["qcow2-v2", "qcow", "qed", "vmdk-v1"],
)
def test_libvirt_2012_detects_the_formats_it_knew(tmp_path, args, expected):
    data = create(tmp_path, "image", *args).read_bytes()
    assert (
        detect.detect_libvirt_2012(libvirt_header(data, LIBVIRT_2012_MAX_HEADER), "x") == expected
    )


@needs_qemu_img
def test_qcow2_version_4_is_qcow2_for_qemu_and_raw_for_libvirt(top_v3):
    """§1.2/§6: libvirt's qcow2 row accepts versions 2 and 3 only; qemu's probe any >= 2."""
    image = patched(top_v3, "v4.qcow2", _set_version(4))
    assert info_error(image) == "Unsupported qcow2 version 4"  # probed as qcow2, then refused
    data = image.read_bytes()
    assert detect.detect_qemu(data[:512], image.name) == "qcow2"
    assert detect.detect_libvirt(libvirt_header(data)) == "raw"
    assert detect.detect_libvirt_2012(libvirt_header(data, LIBVIRT_2012_MAX_HEADER), "x") == "raw"


@needs_qemu_img
def test_qcow2_version_0_is_raw_for_everyone(top_v3):
    image = patched(top_v3, "v0.qcow2", _set_version(0))
    assert info(image)["format"] == "raw"
    data = image.read_bytes()
    assert detect.detect_qemu(data[:512], image.name) == "raw"
    assert detect.detect_libvirt(libvirt_header(data)) == "raw"


@needs_qemu_img
def test_vmdk_version_4_is_vmdk_for_qemu_and_raw_for_libvirt(tmp_path):
    base = create(tmp_path, "base.vmdk", "-f", "vmdk")
    image = patched(base, "v4.vmdk", lambda data: put(data, 4, "<I", 4))
    assert info_error(image) == "Unsupported VMDK version 4"
    data = image.read_bytes()
    assert detect.detect_qemu(data[:512], image.name) == "vmdk"
    assert detect.detect_libvirt(libvirt_header(data)) == "raw"
    with pytest.raises(HeaderRejected, match="Unsupported VMDK version 4"):
        vmdk.decode_qemu(Header.of(data))


@needs_qemu_img
def test_magic_only_file_is_probed_zero_padded_and_not_raw(tmp_path):
    """§1.1: a short file is zero-padded and still probed; its open then fails."""
    image = tmp_path / "short.qcow2"
    image.write_bytes(b"QFI\xfb\0\0\0\x03")
    assert info_error(image) == "Unsupported cluster size: 2^0"
    assert detect.detect_qemu(image.read_bytes(), image.name) == "qcow2"


@needs_qemu_img
def test_empty_file_is_raw(tmp_path):
    image = tmp_path / "empty.img"
    image.write_bytes(b"")
    assert info(image)["format"] == "raw"
    assert detect.detect_qemu(b"", image.name) == "raw"
    assert detect.detect_libvirt(Header.of(b"")) == "raw"


@needs_qemu_img
def test_cow_is_detected_by_libvirt_only(tmp_path):
    """QEMU deleted the cow driver; libvirt still probes OOOM version 2 (§1.7)."""
    data = b"OOOM" + struct.pack(">I", 2) + b"base.img".ljust(1024, b"\0")
    data += struct.pack(">iQI", 0, 4 * MIB, 512)
    image = tmp_path / "uml.cow"
    image.write_bytes(data)
    assert info(image)["format"] == "raw"
    assert detect.detect_qemu(data[:512], image.name) == "raw"
    assert detect.detect_libvirt(libvirt_header(data)) == "cow"
    decoded = cow.decode_libvirt(libvirt_header(data))
    assert decoded.backing_name == b"base.img"
    assert decoded.virtual_size == 4 * MIB
    assert decoded.backing_format_records == ()


def test_cow_with_an_empty_name_has_no_backing():
    data = b"OOOM" + struct.pack(">I", 2) + bytes(1024) + struct.pack(">iQI", 0, MIB, 512)
    assert cow.decode_libvirt(Header.of(data)).backing_name is None


@needs_qemu_img
def test_iso_is_detected_by_libvirt_only(tmp_path):
    """§1.1: `\\x01CD001` at 32768 is raw for qemu; libvirt's iso row matches CD001 @32769."""
    data = bytearray(40000)
    data[32768:32774] = b"\x01CD001"
    image = tmp_path / "disc.img"
    image.write_bytes(bytes(data))
    assert info(image)["format"] == "raw"
    assert detect.detect_qemu(bytes(data[:512]), image.name) == "raw"
    assert detect.detect_libvirt(libvirt_header(bytes(data))) == "iso"


def _descriptor_with(tmp_path: Path, after_comment: bytes) -> Path:
    descriptor = create(tmp_path, "desc.vmdk", "-f", "vmdk", "-o", "subformat=monolithicFlat")
    text = descriptor.read_bytes()
    assert text.startswith(b"# Disk DescriptorFile\n")
    first = text.index(b"\n") + 1
    descriptor.write_bytes(text[:first] + after_comment + text[first:])
    return descriptor


@needs_qemu_img
@pytest.mark.parametrize(
    ("after_comment", "qemu_format"),
    [(b"", "vmdk"), (b"\n", "raw"), (b" \n", "vmdk"), (b"   \r\n", "vmdk")],
    ids=["as-made", "blank-line", "one-space-line", "spaces-crlf-line"],
)
def test_vmdk_descriptor_blank_line_quirk(tmp_path, after_comment, qemu_format):
    """§1.1: a bare blank line before `version=` defeats qemu's text probe; spaces do not.
    libvirt has no text probe: raw either way."""
    descriptor = _descriptor_with(tmp_path, after_comment)
    data = descriptor.read_bytes()
    assert info(descriptor)["format"] == qemu_format
    assert detect.detect_qemu(data[:512], descriptor.name) == qemu_format
    assert detect.detect_libvirt(libvirt_header(data)) == "raw"


@needs_qemu_img
def test_vmdk_descriptor_file_decodes_its_extent_and_size(tmp_path):
    descriptor = _descriptor_with(tmp_path, b"")
    expected = info(descriptor)
    decoded, extents = vmdk.decode_qemu(Header.of(descriptor.read_bytes()))
    assert decoded.virtual_size == expected["virtual-size"]
    assert decoded.backing_name is None
    assert [extent.decode() for extent in extents] == [
        extent["filename"].rsplit("/", 1)[-1]
        for extent in expected["format-specific"]["data"]["extents"]
    ]


def test_qemu_probe_ignores_bytes_past_512():
    """bdrv_probe_all sees 512 bytes only; vdi's magic at 64 is inside, a magic at 512 is not."""
    header = bytes(512) + b"QFI\xfb" + struct.pack(">I", 3)
    assert detect.detect_qemu(header, "x") == "raw"


def test_qemu_dmg_probe_goes_by_file_name():
    assert detect.detect_qemu(bytes(512), "disk.dmg") == "dmg"
    assert detect.detect_qemu(bytes(512), "disk.img") == "raw"
