"""qemu-img as the oracle of the ``qemu`` profile.

Each test builds a chain with qemu-img in its tmp_path, runs ``qemu-img info
--backing-chain --output=json`` from there (so relative names behave as a user in that
directory sees them) and compares the result with ``Chain.to_json()`` of the ``qemu``
profile on the keys both print: filename, format, virtual-size, backing-filename,
full-backing-filename and backing-filename-format. Where qemu-img fails (loops, missing
files), the profile must fail too, with the matching error code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from simulator.model import Chain, ChainError, ErrorCode
from simulator.prober import Prober
from simulator.profiles import get_profile
from tests.chains import (
    ChainInfo,
    create,
    create_without_backing_format,
    info_chain,
    linear_chain,
    rebase_unsafe,
    shared_keys,
    symlink,
)

pytestmark = pytest.mark.qemu_img

Builder = Callable[[Path], str]
"""Builds a chain under the working directory; returns the top as a user would type it."""


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path.resolve()
    monkeypatch.chdir(directory)
    return directory


def probe_qemu(top: str, fmt: str | None = None) -> Chain:
    return Prober(get_profile("qemu")).probe(top, fmt)


def qemu_chain(top: str, cwd: Path, fmt: str | None = None) -> ChainInfo:
    answer = info_chain(top, cwd, fmt)
    assert answer.returncode == 0, answer.stderr
    return answer


def assert_same_chain(top: str, cwd: Path, fmt: str | None = None) -> None:
    expected = qemu_chain(top, cwd, fmt).layers
    assert expected is not None
    assert shared_keys(probe_qemu(top, fmt).to_json()) == shared_keys(expected)


def assert_both_fail(top: str, cwd: Path, code: ErrorCode, qemu_says: str) -> ChainError:
    answer = info_chain(top, cwd)
    assert (answer.returncode, answer.layers) == (1, None)
    assert qemu_says in answer.stderr
    with pytest.raises(ChainError) as raised:
        probe_qemu(top)
    assert raised.value.code is code
    return raised.value


def base_raw(directory: Path, name: str = "base.raw", size: str = "1M") -> Path:
    return create(directory / name, "raw", size=size)


# -- chains that open: formats -----------------------------------------------------------


def qcow2_v3_over_raw(cwd: Path) -> str:
    base_raw(cwd)
    create(cwd / "top.qcow2", backing="base.raw", backing_format="raw", compat="1.1")
    return "top.qcow2"


def qcow2_v2_over_qcow2_v3_over_raw(cwd: Path) -> str:
    base_raw(cwd)
    create(cwd / "mid.qcow2", size="1M", backing="base.raw", backing_format="raw", compat="1.1")
    top = cwd / "top.qcow2"
    create(top, size="2M", backing="mid.qcow2", backing_format="qcow2", compat="0.10")
    return "top.qcow2"


def qcow_v1_over_raw(cwd: Path) -> str:
    # qcow v1 never records a backing format: the base is probed.
    base_raw(cwd)
    create(cwd / "top.qcow", "qcow", size="1M", backing="base.raw", backing_format="raw")
    return "top.qcow"


def qed_over_raw(cwd: Path) -> str:
    # "-F raw" is recorded as QED_F_BACKING_FORMAT_NO_PROBE.
    base_raw(cwd)
    create(cwd / "top.qed", "qed", size="1M", backing="base.raw", backing_format="raw")
    return "top.qed"


def qed_over_qcow2(cwd: Path) -> str:
    # QED cannot record "qcow2": the base is probed.
    create(cwd / "base.qcow2", size="1M")
    create(cwd / "top.qed", "qed", size="1M", backing="base.qcow2", backing_format="qcow2")
    return "top.qed"


def vmdk_over_vmdk(cwd: Path) -> str:
    create(cwd / "base.vmdk", "vmdk", size="1M")
    create(cwd / "top.vmdk", "vmdk", size="1M", backing="base.vmdk", backing_format="vmdk")
    return "top.vmdk"


def raw_alone(cwd: Path) -> str:
    base_raw(cwd)
    return "base.raw"


def qcow2_over_qed_over_raw(cwd: Path) -> str:
    base_raw(cwd)
    create(cwd / "mid.qed", "qed", size="1M", backing="base.raw", backing_format="raw")
    create(cwd / "top.qcow2", size="1M", backing="mid.qed", backing_format="qed")
    return "top.qcow2"


def backing_format_not_recorded(cwd: Path) -> str:
    # qemu probes a backing whose format is not recorded, silently (§2.6).
    base_raw(cwd)
    create(cwd / "mid.qcow2", size="1M", backing="base.raw", backing_format="raw")
    create_without_backing_format(cwd / "top.qcow2", "mid.qcow2", size="1M")
    return "top.qcow2"


def protocol_driver_as_backing_format(cwd: Path) -> str:
    # "-F file" is accepted; the base opens with the protocol driver as its format.
    base_raw(cwd)
    create(cwd / "top.qcow2", size="1M", backing="base.raw", backing_format="file")
    return "top.qcow2"


# -- chains that open: names -------------------------------------------------------------


def absolute_names_relative_top(cwd: Path) -> str:
    base = base_raw(cwd)
    create(cwd / "mid.qcow2", size="1M", backing=str(base), backing_format="raw")
    create(cwd / "top.qcow2", size="1M", backing=str(cwd / "mid.qcow2"), backing_format="qcow2")
    return "top.qcow2"


def dot_slash_name(cwd: Path) -> str:
    base_raw(cwd)
    create(cwd / "top.qcow2", size="1M", backing="./base.raw", backing_format="raw")
    return "top.qcow2"


def dot_dot_name(cwd: Path) -> str:
    base_raw(cwd / "imgs")
    mid2 = cwd / "imgs" / "sub" / "mid2.qcow2"
    create(mid2, size="1M", backing="../base.raw", backing_format="raw")
    return "imgs/sub/mid2.qcow2"


def dot_dot_name_dotted_top(cwd: Path) -> str:
    dot_dot_name(cwd)
    return "imgs/sub/../sub/./mid2.qcow2"


def dot_dot_name_absolute_top(cwd: Path) -> str:
    return str(cwd / dot_dot_name(cwd))


def bare_relative_top(cwd: Path) -> str:
    return qcow2_v2_over_qcow2_v3_over_raw(cwd)


def absolute_top(cwd: Path) -> str:
    return str(cwd / qcow2_v2_over_qcow2_v3_over_raw(cwd))


def symlinked_top_in_another_directory(cwd: Path) -> str:
    # The backing is resolved against the link's directory, not the target's: qemu
    # finds b/base.raw (2M), not a/base.raw (1M).
    base_raw(cwd / "a")
    base_raw(cwd / "b", size="2M")
    create(cwd / "a" / "top.qcow2", size="1M", backing="base.raw", backing_format="raw")
    symlink(cwd / "b" / "link.qcow2", "../a/top.qcow2")
    return "b/link.qcow2"


def json_backing_name(cwd: Path) -> str:
    base = base_raw(cwd)
    top = create(cwd / "top.qcow2", size="1M", backing="base.raw", backing_format="raw")
    name = f'json:{{"driver":"raw","file":{{"driver":"file","filename":"{base}"}}}}'
    rebase_unsafe(top, name, "raw")
    return "top.qcow2"


def chain_100_deep(cwd: Path) -> str:
    return linear_chain(cwd, 100).name


CHAINS: list[Builder] = [
    qcow2_v3_over_raw,
    qcow2_v2_over_qcow2_v3_over_raw,
    qcow_v1_over_raw,
    qed_over_raw,
    qed_over_qcow2,
    vmdk_over_vmdk,
    raw_alone,
    qcow2_over_qed_over_raw,
    backing_format_not_recorded,
    protocol_driver_as_backing_format,
    absolute_names_relative_top,
    dot_slash_name,
    dot_dot_name,
    dot_dot_name_dotted_top,
    dot_dot_name_absolute_top,
    bare_relative_top,
    absolute_top,
    symlinked_top_in_another_directory,
    json_backing_name,
    chain_100_deep,
]


@pytest.mark.parametrize("build", CHAINS, ids=[build.__name__ for build in CHAINS])
def test_qemu_profile_matches_qemu_img_info(cwd: Path, build: Builder) -> None:
    assert_same_chain(build(cwd), cwd)


def test_100_deep_chain_has_100_layers_in_both(cwd: Path) -> None:
    top = chain_100_deep(cwd)
    layers = qemu_chain(top, cwd).layers
    assert layers is not None
    assert len(layers) == len(probe_qemu(top)) == 100


# -- raw sizes: qemu counts whole 512-byte sectors ----------------------------------------


@pytest.mark.parametrize("case", ["odd-sized-raw-base", "raw-recorded-over-qcow2"])
def test_raw_virtual_size_is_rounded_up_to_sectors(cwd: Path, case: str) -> None:
    if case == "odd-sized-raw-base":
        (cwd / "base.raw").write_bytes(bytes(1000))
        create(cwd / "top.qcow2", size="1M", backing="base.raw", backing_format="raw")
    else:
        create(cwd / "base.qcow2", size="1M")
        create(cwd / "top.qcow2", size="1M", backing="base.qcow2", backing_format="raw")
    assert_same_chain("top.qcow2", cwd)


# -- chains qemu-img refuses -------------------------------------------------------------


@pytest.mark.parametrize("absolute", [False, True], ids=["relative-top", "absolute-top"])
def test_self_loop_fails_as_backing_loop(cwd: Path, absolute: bool) -> None:
    create(cwd / "self.qcow2", size="1M", backing="self.qcow2", backing_format="qcow2")
    top = str(cwd / "self.qcow2") if absolute else "self.qcow2"
    error = assert_both_fail(top, cwd, ErrorCode.BACKING_LOOP, "creates an infinite loop")
    assert f"qemu-img: {error.message}" in info_chain(top, cwd).stderr


@pytest.mark.parametrize("absolute", [False, True], ids=["relative-top", "absolute-top"])
def test_mutual_loop_fails_as_backing_loop_naming_the_first_repeat(
    cwd: Path, absolute: bool
) -> None:
    create(cwd / "a.qcow2", size="1M", backing="b.qcow2", backing_format="qcow2")
    create(cwd / "b.qcow2", size="1M", backing="a.qcow2", backing_format="qcow2")
    top = str(cwd / "a.qcow2") if absolute else "a.qcow2"
    error = assert_both_fail(top, cwd, ErrorCode.BACKING_LOOP, "creates an infinite loop")
    assert error.message == f"Backing file '{top}' creates an infinite loop."
    assert f"qemu-img: {error.message}" in info_chain(top, cwd).stderr


def test_ancestor_loop_names_the_repeated_ancestor(cwd: Path) -> None:
    create(cwd / "base.qcow2", size="1M", backing="mid.qcow2", backing_format="qcow2")
    create(cwd / "mid.qcow2", size="1M", backing="base.qcow2", backing_format="qcow2")
    create(cwd / "top.qcow2", size="1M", backing="mid.qcow2", backing_format="qcow2")
    error = assert_both_fail("top.qcow2", cwd, ErrorCode.BACKING_LOOP, "infinite loop")
    assert error.message == "Backing file 'mid.qcow2' creates an infinite loop."


def test_dot_slash_alias_loop_fails_with_a_name_too_long(cwd: Path) -> None:
    # Each hop prepends './', so no name repeats: qemu fails when the path exceeds PATH_MAX.
    create(cwd / "dots.qcow2", size="1M", backing="./dots.qcow2", backing_format="qcow2")
    assert_both_fail("dots.qcow2", cwd, ErrorCode.READ_FAILED, "File name too long")


def test_missing_backing_fails_as_backing_missing(cwd: Path) -> None:
    create(cwd / "x.qcow2", size="1M", backing="missing.qcow2", backing_format="qcow2")
    error = assert_both_fail("x.qcow2", cwd, ErrorCode.BACKING_MISSING, "No such file")
    assert f"qemu-img: {error.message}" in info_chain("x.qcow2", cwd).stderr


def test_missing_base_below_a_middle_layer_fails_without_a_partial_chain(cwd: Path) -> None:
    create(cwd / "x.qcow2", size="1M", backing="missing.qcow2", backing_format="qcow2")
    create(cwd / "y.qcow2", size="1M", backing="x.qcow2", backing_format="qcow2")
    assert_both_fail("y.qcow2", cwd, ErrorCode.BACKING_MISSING, "'missing.qcow2'")


def test_symlinked_top_whose_relative_backing_is_missing_beside_the_link(cwd: Path) -> None:
    # image-formats.md §2.3: links/l.qcow2 -> ../imgs/sub/mid2.qcow2 (backing ../base.raw)
    # makes qemu look for links/../base.raw.
    dot_dot_name(cwd)
    symlink(cwd / "links" / "l.qcow2", "../imgs/sub/mid2.qcow2")
    error = assert_both_fail("links/l.qcow2", cwd, ErrorCode.BACKING_MISSING, "links/../base.raw")
    assert error.path == "links/../base.raw"


def test_directory_as_backing_fails_in_both(cwd: Path) -> None:
    (cwd / "dir").mkdir()
    create(cwd / "top.qcow2", size="1M", backing="dir", backing_format="raw")
    assert_both_fail("top.qcow2", cwd, ErrorCode.READ_FAILED, "to be a regular file")


def test_network_backing_fails_in_both(cwd: Path) -> None:
    # A unix socket that does not exist: qemu-img tries and fails, the profile does not try.
    name = "nbd+unix:///x?socket=/nonexistent/chainsuite.sock"
    create(cwd / "top.qcow2", size="1M", backing=name, backing_format="raw")
    assert_both_fail("top.qcow2", cwd, ErrorCode.NETWORK_BACKING, "Failed to connect")


def test_colon_in_a_dot_slash_name_is_a_file(cwd: Path) -> None:
    base_raw(cwd, "foo:bar.raw")
    create(cwd / "top.qcow2", size="1M", backing="./foo:bar.raw", backing_format="raw")
    assert_same_chain("top.qcow2", cwd)


def test_colon_before_any_slash_is_an_unknown_protocol(cwd: Path) -> None:
    base_raw(cwd, "foo:bar.raw")
    create(cwd / "top.qcow2", size="1M", backing="foo:bar.raw", backing_format="raw")
    assert_both_fail("top.qcow2", cwd, ErrorCode.BACKING_NAME_INVALID, "Unknown protocol 'foo'")


# -- formats whose images have no backing of their own ------------------------------------


VHDX_SIZE_NOT_DECODED = pytest.mark.xfail(
    strict=True,
    reason="vhdx's virtual size lives in its metadata region, which the prober does not decode",
)


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "probed"])
@pytest.mark.parametrize(
    "fmt", ["vpc", "vdi", pytest.param("vhdx", marks=VHDX_SIZE_NOT_DECODED), "parallels"]
)
def test_base_of_another_format_has_qemus_virtual_size(cwd: Path, fmt: str, recorded: bool) -> None:
    create(cwd / "base.img", fmt, size="1M")
    if recorded:
        create(cwd / "top.qcow2", size="1M", backing="base.img", backing_format=fmt)
    else:
        create_without_backing_format(cwd / "top.qcow2", "base.img", size="1M")
    assert_same_chain("top.qcow2", cwd)


# -- json: backing names: qemu's options, not libvirt's parser ---------------------------
# qemu opens a backing with {"driver": <recorded format>} when a format is recorded, then
# joins the json: options into it without overwriting (the recorded format wins), and
# takes any block driver, format or protocol, as the json "driver".


def json_name(driver: str, path: Path) -> str:
    if driver == "file":
        return f'json:{{"driver":"file","filename":"{path}"}}'
    return f'json:{{"driver":"{driver}","file":{{"driver":"file","filename":"{path}"}}}}'


@pytest.mark.parametrize(
    ("driver", "recorded"),
    [("qcow2", "qcow2"), ("raw", "qcow2"), ("qcow2", None), ("file", None)],
    ids=["qcow2-driver", "recorded-qcow2-over-raw-driver", "qcow2-unrecorded", "file-driver"],
)
def test_json_backing_opens_as_qemu_opens_it(cwd: Path, driver: str, recorded: str | None) -> None:
    base = create(cwd / "base.qcow2", size="1M")
    name = json_name(driver, base)
    if recorded is None:
        create_without_backing_format(cwd / "top.qcow2", name, size="1M")
    else:
        create(cwd / "top.qcow2", size="1M", backing=name, backing_format=recorded)
    assert_same_chain("top.qcow2", cwd)


def test_json_file_driver_under_a_recorded_format_fails_in_both(cwd: Path) -> None:
    # The recorded "raw" wins over the json driver "file": raw without a file child.
    base = base_raw(cwd)
    create(cwd / "top.qcow2", size="1M", backing=json_name("file", base), backing_format="raw")
    answer = info_chain("top.qcow2", cwd)
    assert answer.returncode == 1
    assert 'A block device must be specified for "file"' in answer.stderr
    with pytest.raises(ChainError):
        probe_qemu("top.qcow2")
