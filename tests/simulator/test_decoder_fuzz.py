"""Hypothesis: no bytes make a decoder or the prober fail with anything but its own errors.

A decoder answers with a ``HeaderInfo`` or refuses with ``HeaderRejected``; detection
answers with a format name; ``Prober.probe`` answers with a ``Chain`` or a
``ChainError`` (DESIGN.md: "nothing in the suite ends in a traceback on bad input").
Inputs are random bytes and valid headers with bytes flipped, fields overwritten
with edge values, or the tail cut off, from the qcow2 encoder and from qemu-img.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simulator.formats import cow, detect, qcow, qcow2, qed, vmdk
from simulator.formats.header import Header, HeaderInfo, HeaderRejected
from simulator.model import Chain, ChainError, ErrorCode
from simulator.prober import Prober
from simulator.profiles import LIBVIRT_2012_MAX_HEADER, LIBVIRT_MAX_HEADER, PROFILES, Profile

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEED_LENGTH = 4096
"""Seeds are cut to their first 4 KiB: every header field and name of these images lies there."""
MIB = 1024 * 1024

READ_RULES = {profile.read_rules for profile in PROFILES.values()}
GIVEN_FORMATS = (None, "qcow2", "qcow", "qed", "vmdk", "cow", "raw", "vpc", "vdi", "ploop", "iso")
"""None: the format left unspecified (each profile's own rule, probing where it probes)."""


# --------------------------------------------------------------------------- seeds


def _encoder_seeds() -> list[bytes]:
    images = [
        qcow2.Qcow2Image(MIB, version=2, cluster_bits=9),
        qcow2.Qcow2Image(MIB, b"base.raw", "raw", version=2, cluster_bits=9),
        qcow2.Qcow2Image(MIB, b"base.raw", "raw", version=3, cluster_bits=9),
        qcow2.Qcow2Image(MIB, b"mid.qcow2", "qcow2", version=3, cluster_bits=12),
        qcow2.Qcow2Image(MIB, b"base.raw", "raw", data_file=b"data.raw", cluster_bits=10),
        qcow2.Qcow2Image(MIB, b"top.qcow2", "qcow2", version=3, cluster_bits=9),
    ]
    return [qcow2.encode(image)[:SEED_LENGTH] for image in images]


def _qemu_img_seeds() -> list[bytes]:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        return []
    recipes = [
        ("base.raw", ["-f", "raw"]),
        ("v2.qcow2", ["-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw"]),
        ("v3.qcow2", ["-f", "qcow2", "-b", "base.raw", "-F", "raw"]),
        ("top.qcow", ["-f", "qcow", "-b", "base.raw", "-F", "raw"]),
        ("raw.qed", ["-f", "qed", "-b", "base.raw", "-F", "raw"]),
        ("probed.qed", ["-f", "qed", "-b", "v3.qcow2", "-F", "qcow2"]),
        ("base.vmdk", ["-f", "vmdk"]),
        ("top.vmdk", ["-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk"]),
        ("flat.vmdk", ["-f", "vmdk", "-o", "subformat=monolithicFlat"]),
    ]
    seeds = []
    with tempfile.TemporaryDirectory() as directory:
        for name, args in recipes:
            result = subprocess.run(
                [qemu_img, "create", *args, name, "1M"],
                cwd=directory,
                capture_output=True,
                check=False,
                timeout=60,
            )
            if result.returncode == 0 and name != "base.raw":
                seeds.append(Path(directory, name).read_bytes()[:SEED_LENGTH])
    return seeds


SEEDS = _encoder_seeds() + _qemu_img_seeds()

# Values that sit on the edges of the checks decoders make.
EDGE_32: tuple[int, ...] = (0, 1, 2, 3, 4, 8, 9, 16, 21, 22, 63, 64, 72, 100, 104, 112, 511)
EDGE_32 += (512, 1023, 1024, 4096, 0x8200, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
EDGE_64 = (*EDGE_32, 1 << 32, 1 << 62, 1 << 63, (1 << 64) - 1)


@st.composite
def mutation(draw: st.DrawFn, length: int) -> Callable[[bytearray], None]:
    """One change to a buffer of ``length`` bytes."""
    kind = draw(st.sampled_from(["flip", "byte", "u32", "u64", "cut", "grow"]))
    position = draw(st.integers(0, max(length - 1, 0)))
    if kind == "flip":
        bit = draw(st.integers(0, 7))

        def flip(data: bytearray) -> None:
            if position < len(data):
                data[position] ^= 1 << bit

        return flip
    if kind == "byte":
        value = draw(st.integers(0, 255))

        def overwrite(data: bytearray) -> None:
            if position < len(data):
                data[position] = value

        return overwrite
    if kind in ("u32", "u64"):
        size = 4 if kind == "u32" else 8
        # Header fields sit on aligned offsets near the start; names and extensions anywhere.
        field = draw(st.one_of(st.integers(0, 128).map(lambda n: n - n % 4), st.just(position)))
        edges = EDGE_32 if size == 4 else EDGE_64
        value = draw(st.one_of(st.sampled_from(edges), st.integers(0, (1 << (8 * size)) - 1)))
        order = draw(st.sampled_from(["<", ">"]))
        code = "I" if size == 4 else "Q"

        def put(data: bytearray) -> None:
            if field + size <= len(data):
                struct.pack_into(order + code, data, field, value)

        return put
    if kind == "cut":

        def cut(data: bytearray) -> None:
            del data[position:]

        return cut
    tail = draw(st.binary(min_size=1, max_size=64))

    def grow(data: bytearray) -> None:
        data.extend(tail)

    return grow


@st.composite
def mutated_header(draw: st.DrawFn) -> bytes:
    seed = draw(st.sampled_from(SEEDS))
    data = bytearray(seed)
    for change in draw(st.lists(mutation(len(seed)), min_size=1, max_size=6)):
        change(data)
    return bytes(data)


MAGICS = (b"QFI\xfb", b"QED\0", b"KDMV", b"COWD", b"OOOM", b"conectix", b"version=1\n")
random_bytes = st.one_of(
    st.binary(max_size=2048),
    # random bytes behind a magic, so the decoders get past their first check
    st.tuples(st.sampled_from(MAGICS), st.binary(max_size=1200)).map(lambda pair: b"".join(pair)),
)
any_header = st.one_of(random_bytes, mutated_header())


# --------------------------------------------------------------------------- the decoders


def _libvirt_decoders() -> Iterator[tuple[str, Callable[[Header], Any]]]:
    for rules in READ_RULES:
        yield "qcow2.decode_libvirt", functools.partial(qcow2.decode_libvirt, rules=rules)
        yield "qcow.decode_libvirt", functools.partial(qcow.decode_libvirt, rules=rules)
        yield "vmdk.decode_libvirt", functools.partial(vmdk.decode_libvirt, rules=rules)
    yield "qed.decode_libvirt", qed.decode_libvirt
    yield "cow.decode_libvirt", cow.decode_libvirt


LIBVIRT_DECODERS = list(_libvirt_decoders())
QEMU_DECODERS: list[tuple[str, Callable[[Header], Any]]] = [
    ("qcow2.decode_qemu", qcow2.decode_qemu),
    ("qcow.decode_qemu", qcow.decode_qemu),
    ("qed.decode_qemu", qed.decode_qemu),
    ("vmdk.decode_qemu", vmdk.decode_qemu),
]
LIBVIRT_PROFILES = [profile for profile in PROFILES.values() if profile.name != "qemu"]
QEMU_PROFILES = [PROFILES["qemu"]]

# Inputs that once made qemu's decoders raise struct.error (a short header read with
# Header.u32be/u32le/u64le); kept as explicit examples, as regressions.
SHORT_KDMV = b"KDMV"
SHORT_COWD = b"COWD"
SHORT_V3 = _encoder_seeds()[2][:80]
"""A qcow2 v3 header cut at 80 bytes: header_length (@100) lies past the end."""


def _show(data: bytes) -> str:
    return f"{len(data)} bytes: {data[:96]!r}{'...' if len(data) > 96 else ''}"


def _headers_as_read(data: bytes) -> Iterator[Header]:
    """The header as each reader sees it: all of it, and cut at libvirt's two bounds."""
    yield Header.of(data)
    for bound in (LIBVIRT_2012_MAX_HEADER, LIBVIRT_MAX_HEADER, 512):
        if len(data) > bound:
            yield Header.of(data[:bound])


def _check_decoders(
    data: bytes, decoders: list[tuple[str, Callable[[Header], Any]]], may_reject: bool = True
) -> None:
    for header in _headers_as_read(data):
        for name, decoder in decoders:
            try:
                result = decoder(header)
            except HeaderRejected as rejected:
                assert may_reject, f"{name} rejected {_show(data)}: {rejected}"
                assert str(rejected), f"{name} rejected without a message"
                continue
            except Exception as error:  # the property: nothing else escapes
                pytest.fail(f"{name} raised {type(error).__name__}: {error} on {_show(data)}")
            decoded = result[0] if isinstance(result, tuple) else result
            assert isinstance(decoded, HeaderInfo), name
            if decoded.backing_name is not None:
                assert isinstance(decoded.backing_name, bytes), name


def _check_detection(data: bytes) -> None:
    header = Header.of(data)
    try:
        found = {
            detect.detect_libvirt(header),
            detect.detect_libvirt_2012(header, "image.img"),
            detect.detect_qemu(data[:512], "image.img"),
        }
        for format in ("vpc", "vdi", "ploop"):
            capacity = detect.libvirt_capacity(format, header)
            assert capacity is None or capacity >= 0
    except Exception as error:
        pytest.fail(f"detection raised {type(error).__name__}: {error} on {_show(data)}")
    assert all(isinstance(name, str) and name for name in found)


# libvirt's readers never refuse a header: a value they cannot use reads as "no backing"
# (libvirt-rules.md §3.4), so their decoders must always answer with a HeaderInfo.


@FUZZ
@given(random_bytes)
def test_libvirt_decoders_and_detection_answer_for_random_bytes(data):
    _check_decoders(data, LIBVIRT_DECODERS, may_reject=False)
    _check_detection(data)


@FUZZ
@given(mutated_header())
def test_libvirt_decoders_and_detection_answer_for_mutated_valid_headers(data):
    _check_decoders(data, LIBVIRT_DECODERS, may_reject=False)
    _check_detection(data)


@FUZZ
@given(random_bytes)
@example(SHORT_KDMV)
@example(SHORT_COWD)
@example(SHORT_V3)
def test_qemu_decoders_accept_or_reject_random_bytes(data):
    _check_decoders(data, QEMU_DECODERS)


@FUZZ
@given(mutated_header())
@example(SHORT_V3)
def test_qemu_decoders_accept_or_reject_mutated_valid_headers(data):
    _check_decoders(data, QEMU_DECODERS)


def test_seeds_include_qemu_img_images_when_qemu_img_is_installed():
    """The mutated headers start from real qemu-img bytes, not only from our encoder."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    assert len(SEEDS) == len(_encoder_seeds()) + 8


# --------------------------------------------------------------------------- the prober


@pytest.fixture(scope="module")
def image_dir() -> Iterator[Path]:
    """A directory with the files the seeds name as backings, so walks can go on."""
    with tempfile.TemporaryDirectory(prefix="chainsuite-fuzz-") as directory:
        root = Path(directory)
        (root / "base.raw").write_bytes(bytes(4096))
        (root / "data.raw").write_bytes(bytes(4096))
        (root / "mid.qcow2").write_bytes(
            qcow2.encode(qcow2.Qcow2Image(MIB, b"base.raw", "raw", cluster_bits=9))
        )
        (root / "v3.qcow2").write_bytes(qcow2.encode(qcow2.Qcow2Image(MIB, cluster_bits=9)))
        (root / "base.vmdk").write_bytes(bytes(4096))
        yield root


def _check_prober(path: Path, profiles: list[Profile]) -> None:
    for profile in profiles:
        for format in GIVEN_FORMATS:
            prober = Prober(profile)
            try:
                chain = prober.probe(str(path), format)
            except ChainError as error:
                assert isinstance(error.code, ErrorCode)
                assert error.message
                continue
            except Exception as error:  # the property: nothing else escapes
                pytest.fail(
                    f"{profile.name} with format {format!r} raised "
                    f"{type(error).__name__}: {error} on {_show(path.read_bytes())}"
                )
            assert isinstance(chain, Chain)
            assert len(chain) >= 1
            assert chain.top.filename == str(path)
            chain.to_json()


def _check_prober_below(image_dir: Path, data: bytes, profiles: list[Profile]) -> None:
    """The fuzzed bytes as the backing of a good qcow2 top, recorded as qcow2 and unrecorded."""
    backing = image_dir / "fuzzed.img"
    backing.write_bytes(data)
    tops = {
        "top-recorded.qcow2": qcow2.Qcow2Image(MIB, b"fuzzed.img", "qcow2", cluster_bits=9),
        "top-unrecorded.qcow2": qcow2.Qcow2Image(MIB, b"fuzzed.img", None, cluster_bits=9),
    }
    try:
        for name, image in tops.items():
            top = image_dir / name
            top.write_bytes(qcow2.encode(image))
            for profile in profiles:
                try:
                    chain = Prober(profile).probe(str(top), "qcow2")
                except ChainError:
                    continue
                except Exception as error:
                    pytest.fail(
                        f"{profile.name}: {type(error).__name__}: {error} on backing {_show(data)}"
                    )
                assert chain.top.filename == str(top)
    finally:
        backing.unlink()
        for name in tops:
            (image_dir / name).unlink(missing_ok=True)


def _check_prober_on_top(image_dir: Path, data: bytes, profiles: list[Profile]) -> None:
    path = image_dir / "top.img"
    path.write_bytes(data)
    try:
        _check_prober(path, profiles)
    finally:
        path.unlink()


@FUZZ
@given(data=any_header)
def test_libvirt_profiles_give_a_chain_or_a_chain_error_for_any_top_image(image_dir, data):
    _check_prober_on_top(image_dir, data, LIBVIRT_PROFILES)


@FUZZ
@given(data=any_header)
def test_libvirt_profiles_give_a_chain_or_a_chain_error_for_any_backing_image(image_dir, data):
    _check_prober_below(image_dir, data, LIBVIRT_PROFILES)


@FUZZ
@given(data=any_header)
@example(data=SHORT_KDMV)
def test_qemu_profile_gives_a_chain_or_a_chain_error_for_any_top_image(image_dir, data):
    _check_prober_on_top(image_dir, data, QEMU_PROFILES)


@FUZZ
@given(data=any_header)
@example(data=SHORT_V3)
def test_qemu_profile_gives_a_chain_or_a_chain_error_for_any_backing_image(image_dir, data):
    _check_prober_below(image_dir, data, QEMU_PROFILES)


def test_prober_fuzz_files_stay_inside_their_directory(image_dir):
    """The property tests write only in their own temporary directory."""
    assert sorted(os.listdir(image_dir)) == [
        "base.raw",
        "base.vmdk",
        "data.raw",
        "mid.qcow2",
        "v3.qcow2",
    ]
